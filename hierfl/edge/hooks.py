"""The embedded edge's hooks: ``on_model(version, weights)`` and ``evaluate(model)``.

A program that embeds :class:`~hierfl.edge.client.EdgeClient` may pass

- ``on_model(version, weights)``: called on the event loop each time a new model from the
  fog is decoded (a global version, or a newer fog model ``seq`` of it), with the global
  version and the model's parameters as one flat float32 vector (read-only; copy what you
  keep). It may be a coroutine function (awaited). Keep it short: the edge's receive loop
  waits for it.
- ``evaluate(model) -> dict[str, float]``: called in the training thread with the task's model
  loaded with the received weights, before local training changes them (the federation's
  model, evaluated on the device's own data). Its results become the edge's
  ``hierfl_evaluation{metric=...}`` gauges and close its INFO line for the round.

A hook that raises, or an ``evaluate`` that returns something other than a mapping of names to
finite numbers, is logged (at most once per 10 s) and counted (``hierfl_hook_errors_total``);
the edge goes on training.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hierfl.metrics import ServiceMetrics
from hierfl.ratelimit import LogThrottle
from hierfl.types import Float32Vector

__all__ = ["EvaluateHook", "ModelHook", "ModelHooks"]

log = logging.getLogger(__name__)

#: ``on_model(version, weights)``; may return an awaitable
ModelHook = Callable[[int, Float32Vector], Awaitable[None] | None]
#: ``evaluate(model) -> {"accuracy": 0.91, ...}``
EvaluateHook = Callable[[Any], Mapping[str, float]]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")


class ModelHooks:
    """The hooks of one edge, called safely.

    Args:
        who: the edge, for log lines (``edge press-7``).
        metrics: where hook errors and evaluation results are recorded.
        on_model: called when a new model arrives (or None).
        evaluate: evaluates the received model (or None).
    """

    def __init__(self, who: str, metrics: ServiceMetrics, *, on_model: ModelHook | None = None,
                 evaluate: EvaluateHook | None = None) -> None:
        self.who = who
        self.metrics = metrics
        self.on_model = on_model
        self.evaluate = evaluate
        self._throttle = LogThrottle(10.0)
        #: the last evaluation: (version, results)
        self.last: tuple[int, dict[str, float]] | None = None

    def _failed(self, hook: str, exc: BaseException) -> None:
        self.metrics.inc("hook_errors")
        if self._throttle.admit(hook) is not None:
            log.warning("%s: %s hook failed: %s: %s", self.who, hook, type(exc).__name__, exc)

    async def model_arrived(self, version: int, weights: Float32Vector) -> None:
        """Call ``on_model`` (awaiting it if it returns an awaitable)."""
        if self.on_model is None:
            return
        try:
            result = self.on_model(version, weights)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # noqa: BLE001 - the embedding program's code
            self._failed("on_model", exc)

    def run_evaluate(self, version: int, model: Any) -> dict[str, float] | None:
        """Call ``evaluate`` on ``model`` (the received version's weights) and record its
        results as gauges. Runs in the training thread.

        Returns:
            The results, or None without a hook or when it failed.
        """
        if self.evaluate is None:
            return None
        try:
            raw = self.evaluate(model)
            if not isinstance(raw, Mapping):
                raise TypeError(f"evaluate returned {type(raw).__name__}, not a mapping")
            results = {}
            for key, value in raw.items():
                if not isinstance(key, str) or not _NAME.match(key):
                    raise ValueError(f"metric name {key!r}: 1-64 of A-Z a-z 0-9 _ . : -")
                v = float(value)
                if not math.isfinite(v):
                    raise ValueError(f"metric {key!r} is {v}")
                results[key] = v
        except Exception as exc:  # noqa: BLE001 - the embedding program's code
            self._failed("evaluate", exc)
            return None
        self.metrics.evaluated(version, results)
        self.last = (version, results)
        return results
