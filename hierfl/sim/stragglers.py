"""Slow and intermittent edges for ``hierfl sim`` (``--stragglers``, ``--intermittent``).

Real IoT fleets are uneven: some devices are several times slower than the rest, and some
drop out for a while. This module wraps a scenario's :class:`~hierfl.edge.trainer.EdgeTask`
so that its local training *takes* a modelled device time:

- every edge's pass takes at least ``base_s`` seconds (the modelled compute time of a
  normal device; the sim's digits MLP trains in milliseconds, which would hide any
  difference behind messaging);
- a straggler's pass takes ``(slowdown - 1) x base_s`` longer, ``slowdown`` times as long
  when training itself is quick (``--stragglers 0.25:5``: a quarter of the edges, spread
  over the fogs, 5x slower);
- an intermittent edge is, with probability ``skip_p`` per fog model, offline for
  ``offline_s`` before it trains on the model it received (its update then arrives late,
  trained from an older model, as a device that missed rounds would send it).

The wait is a sleep in the training thread: it costs no CPU, so the brokers, fogs and
other edges run at their normal speed meanwhile.
"""

from __future__ import annotations

import importlib
import random
import time
from dataclasses import dataclass
from typing import Any

from hierfl.edge.result import TrainResult
from hierfl.errors import ConfigError

__all__ = ["SlowTask", "StragglerProfile", "preload", "slow_task"]

TASK = "hierfl.sim.stragglers:slow_task"


@dataclass(frozen=True, slots=True)
class StragglerProfile:
    """Which edges are slow or intermittent, and how much.

    Attributes:
        fraction: share of the edges that are stragglers (0 to 1).
        slowdown: how many times longer a straggler's local pass takes (>= 1).
        base_s: the modelled local pass of a normal edge, seconds (>= 0).
        skip_p: probability that an edge is offline for a fog model (0 to 1).
        offline_s: how long such an edge stays offline, seconds.

    Raises:
        ConfigError: a value out of range.
    """

    fraction: float = 0.0
    slowdown: float = 1.0
    base_s: float = 0.5
    skip_p: float = 0.0
    offline_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0 or not 0.0 <= self.skip_p <= 1.0:
            raise ConfigError("straggler fraction and skip probability must be in [0, 1]")
        if self.slowdown < 1.0 or self.base_s < 0 or self.offline_s < 0:
            raise ConfigError("slowdown must be >= 1, base_s and offline_s >= 0")

    @classmethod
    def parse(cls, stragglers: str | None, intermittent: str | None = None) -> StragglerProfile:
        """Parse ``FRACTION:SLOWDOWN[:BASE_S]`` and ``P[:OFFLINE_S]`` (the sim's options).

        Raises:
            ConfigError: a malformed spec or a value out of range.
        """
        kw: dict[str, float] = {}
        try:
            if stragglers:
                parts = [float(p) for p in stragglers.split(":")]
                if len(parts) not in (2, 3):
                    raise ValueError("expected FRACTION:SLOWDOWN[:BASE_S]")
                kw.update(fraction=parts[0], slowdown=parts[1])
                if len(parts) == 3:
                    kw["base_s"] = parts[2]
            if intermittent:
                parts = [float(p) for p in intermittent.split(":")]
                if len(parts) not in (1, 2):
                    raise ValueError("expected P[:OFFLINE_S]")
                kw["skip_p"] = parts[0]
                if len(parts) == 2:
                    kw["offline_s"] = parts[1]
        except ValueError as exc:
            raise ConfigError(f"bad straggler profile {stragglers!r} / {intermittent!r}: "
                              f"{exc}") from exc
        return cls(**kw)

    @property
    def active(self) -> bool:
        """True when the profile changes anything."""
        return (self.fraction > 0 and self.slowdown > 1) or self.skip_p > 0

    def stragglers(self, topology: list[list[int]]) -> set[int]:
        """Indices of the slow edges: ``round(fraction x edges)``, spread round-robin over
        the fogs (the first edges of each fog), so that every fog has its share."""
        n = sum(len(t) for t in topology)
        k = round(self.fraction * n)
        order: list[int] = []
        depth = max((len(t) for t in topology), default=0)
        for d in range(depth):
            order.extend(t[d] for t in topology if d < len(t))
        return set(order[:k])

    def options(self, index: int, slow: bool, seed: int) -> dict[str, Any]:
        """The task options that make edge ``index`` behave as this profile says."""
        return {"slowdown": self.slowdown if slow else 1.0, "base_s": self.base_s,
                "skip_p": self.skip_p, "offline_s": self.offline_s,
                "straggler_seed": seed * 100_003 + index}


class SlowTask:
    """An :class:`~hierfl.edge.trainer.EdgeTask` whose training takes a modelled time.

    Args:
        inner: the task that really trains.
        slowdown: the pass takes ``max(measured, base_s) + (slowdown - 1) x base_s``.
        base_s: the modelled pass of a normal device.
        skip_p: probability of being offline for ``offline_s`` before a pass.
        offline_s: see above.
        seed: seeds the offline draws.
        sleep: the wait (tests pass a fake).
    """

    def __init__(self, inner: Any, *, slowdown: float = 1.0, base_s: float = 0.0,
                 skip_p: float = 0.0, offline_s: float = 0.0, seed: int = 0,
                 sleep: Any = time.sleep) -> None:
        self.inner = inner
        self.slowdown, self.base_s = slowdown, base_s
        self.skip_p, self.offline_s = skip_p, offline_s
        self._rng = random.Random(seed)
        self._sleep = sleep
        self.passes = 0
        self.offline = 0

    def build_model(self) -> Any:
        """The inner task's model."""
        return self.inner.build_model()

    def train(self, model: Any, epochs: int) -> TrainResult:
        """Train with the inner task, then wait out the modelled device time."""
        if self.skip_p > 0 and self._rng.random() < self.skip_p:
            self.offline += 1
            self._sleep(self.offline_s)
        t0 = time.monotonic()
        result: TrainResult = self.inner.train(model, epochs)
        took = time.monotonic() - t0
        self.passes += 1
        # a normal pass lasts max(took, base_s); a straggler's (slowdown - 1) x base_s more
        wait = max(self.base_s - took, 0.0) + (self.slowdown - 1.0) * self.base_s
        if wait > 0:
            self._sleep(wait)
        return result

    def __getattr__(self, name: str) -> Any:  # e.g. a privacy hook of the inner task
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _inner_callable(spec: str) -> Any:
    mod_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"straggler inner task {spec!r} cannot be imported: {exc}") from exc


def slow_task(*, inner: str, slowdown: float = 1.0, base_s: float = 0.0, skip_p: float = 0.0,
              offline_s: float = 0.0, straggler_seed: int = 0, **options: Any) -> SlowTask:
    """Task factory for ``EdgeSettings.task``: ``inner`` (``module:callable``) builds the real
    task from the remaining options (``edge_id``, ``fog_id`` included)."""
    return SlowTask(_inner_callable(inner)(**options), slowdown=slowdown, base_s=base_s,
                    skip_p=skip_p, offline_s=offline_s, seed=straggler_seed)


def preload(options: dict[str, Any]) -> None:
    """The sim's zygote hook: preload the inner task's module and data."""
    spec = options.get("inner")
    if not spec:
        return
    mod = importlib.import_module(str(spec).partition(":")[0])
    hook = getattr(mod, "preload", None)
    if callable(hook):
        hook(options)
