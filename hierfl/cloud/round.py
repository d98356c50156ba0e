"""The cloud's round logic as a pure state machine: fog aggregates in, global models out.

A cloud round builds global version ``v + 1`` from the aggregates that fogs computed
against version ``v``. It closes when every expected fog reported, or at the deadline
(``round_timeout_s`` after the first aggregate) when at least ``min_fogs`` did. The new
model is ``w_v + combine(deltas, fog sample counts)``; with sample-weighted FedAvg and
k2 = 1 this equals flat FedAvg over every edge's update.

An aggregate is applied at most once: one per fog per version, and only against the
current version (a replay after a restart names an older version and is refused).

Like :class:`~hierfl.fog.round.FogRound` it returns *actions* for the service to carry out:
:class:`NewGlobal` (save the version, then publish it) and :class:`Commit` (the log may be
committed up to a record). The commit decision is the machine's: a record is committed once
everything up to it is folded into a saved version or refused for good, never while an
aggregate before it is only held in memory (a crash then replays the log from the last
commit, and what was held comes back).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hierfl.aggregation import validation as checks
from hierfl.errors import DuplicateUpdateError, StaleUpdateError, WrongRecipientError
from hierfl.fog.buffered import BufferPolicy, staleness_weights
from hierfl.optim.scaffold import cloud_control
from hierfl.optim.server import ServerOptimizer
from hierfl.types import Float32Matrix, Float32Vector, Float64Vector
from hierfl.wire.frames import AggregateFrame, LayoutEntry

__all__ = ["CloudAction", "CloudRound", "CloudRoundConfig", "Commit", "NewGlobal"]

log = logging.getLogger(__name__)

AggregateFn = Callable[[Float32Matrix, Float64Vector], Float32Vector]


@dataclass(frozen=True, slots=True)
class CloudRoundConfig:
    """Parameters of the cloud's round logic."""

    federation: str
    fogs: frozenset[str] = frozenset()
    min_fogs: int = 1
    round_timeout_s: float = 60.0
    max_samples: int = 10**12
    #: a fog may claim at most this many samples per contributing edge (None: no bound)
    max_samples_per_edge: int | None = None
    #: buffered (FedBuff) aggregation (hierfl.fog.buffered); None: synchronous rounds
    buffer: BufferPolicy | None = None


@dataclass(frozen=True, slots=True)
class NewGlobal:
    """A round closed: the new global model and what went into it."""

    version: int
    parent: int
    weights: Float32Vector
    fogs: dict[str, dict[str, Any]]
    metrics: dict[str, float]
    timed_out: bool
    #: SCAFFOLD: the cloud's control variate c after this round (None: not SCAFFOLD)
    control: Float32Vector | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    """Everything up to and including the record at ``position`` (the service's opaque
    handle) is saved or refused: commit the log there."""

    position: Any


CloudAction = NewGlobal | Commit


@dataclass(slots=True)
class _Pending:
    frames: dict[str, AggregateFrame] = field(default_factory=dict)
    last_position: Any = None  # of the newest aggregate held
    staleness: dict[str, int] = field(default_factory=dict)  # buffered: versions behind
    first_at: float | None = None
    expired: bool = False  # deadline passed below min_fogs: close on the quorum-making aggregate


class CloudRound:
    """The cloud's state machine.

    Args:
        config: round parameters.
        aggregate: the rule combining fog deltas, ``(deltas, sample counts) -> delta``.
        version: the current global version.
        weights: its weights.
        layout: its layout.
        server_opt: a server optimiser (FedOpt, :mod:`hierfl.optim.server`) turning the
            combined delta into the step applied; None applies the delta as it is.
    """

    def __init__(
        self,
        config: CloudRoundConfig,
        aggregate: AggregateFn,
        *,
        version: int,
        weights: Float32Vector,
        layout: tuple[LayoutEntry, ...],
        server_opt: ServerOptimizer | None = None,
        control: Float32Vector | None = None,
    ) -> None:
        self.config = config
        self.server_opt = server_opt
        #: SCAFFOLD's c (hierfl/optim/scaffold.py), published with the model; None: off
        self.control = control
        self._aggregate = aggregate
        self.version = version
        self.weights = weights.astype(np.float32, copy=True)
        self.layout = layout
        self._pending = _Pending()
        # buffered: the aggregates applied lately (a fog's re-send of one must not apply twice)
        self._applied: dict[str, None] = {}

    @property
    def deadline(self) -> float | None:
        """When the open round times out (None before its first aggregate)."""
        if self._pending.first_at is None or self._pending.expired:
            return None
        return self._pending.first_at + self.config.round_timeout_s

    @property
    def reported(self) -> tuple[str, ...]:
        """Fogs whose aggregate is held for the open round."""
        return tuple(sorted(self._pending.frames))

    def on_aggregate(self, frame: AggregateFrame, now: float,
                     position: Any = None) -> list[CloudAction]:
        """A fog aggregate arrived (from the record at ``position``, an opaque handle).

        Returns:
            ``[NewGlobal, Commit]`` when this aggregate completes the round (the commit
            covers it), else ``[]`` (it is held).

        Raises:
            ValidationError: (subclass naming the reason) when the aggregate is refused;
                call :meth:`on_refused` then.
        """
        cfg = self.config
        if frame.federation != cfg.federation:
            raise WrongRecipientError(f"aggregate for federation {frame.federation}")
        checks.check_sender(frame.fog_id, cfg.fogs)
        buffer = cfg.buffer if cfg.buffer is not None and cfg.buffer.buffered else None
        stale = self.version - frame.base_version
        if buffer is not None and frame.aggregate_id in self._applied:
            raise DuplicateUpdateError(f"aggregate {frame.aggregate_id} was already applied")
        if buffer is not None and 0 < stale <= buffer.max_staleness:
            pass  # FedBuff: used, weighted down at the close
        elif frame.base_version != self.version:
            raise StaleUpdateError(
                f"aggregate {frame.aggregate_id} is against v{frame.base_version}; "
                f"current is v{self.version}"
            )
        if frame.fog_id in self._pending.frames:
            raise DuplicateUpdateError(f"aggregate {frame.aggregate_id} was already received")
        cap = cfg.max_samples
        if cfg.max_samples_per_edge is not None:
            cap = min(cap, cfg.max_samples_per_edge * len(frame.contributors))
        checks.check_samples(frame.num_samples, 1, cap)
        checks.check_shape(frame.delta, self.weights.size)
        checks.check_finite(frame.delta)
        if frame.control is not None:  # SCAFFOLD's Delta c_f (its size: the frame checked it)
            checks.check_finite(frame.control)
        self._pending.frames[frame.fog_id] = frame
        self._pending.staleness[frame.fog_id] = stale
        if position is not None:
            self._pending.last_position = position
        if self._pending.first_at is None:
            self._pending.first_at = now
        if buffer is not None and len(self._pending.frames) >= buffer.buffer_size:
            return self._close(timed_out=False)
        if cfg.fogs and set(self._pending.frames) >= cfg.fogs:
            return self._close(timed_out=False)
        if self._pending.expired and len(self._pending.frames) >= cfg.min_fogs:
            return self._close(timed_out=True)
        return []

    def on_refused(self, position: Any) -> list[CloudAction]:
        """The record at ``position`` was refused (unreadable, forged, stale, duplicate).

        Returns:
            ``[Commit(position)]`` when nothing is held (skip it for good), else ``[]``
            (a held aggregate before it must be replayed after a crash; the round's own
            commit will cover it).
        """
        return [] if self._pending.frames else [Commit(position)]

    def on_tick(self, now: float) -> list[CloudAction]:
        """Close the round at its deadline if a quorum of fogs reported."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        if len(self._pending.frames) >= self.config.min_fogs:
            return self._close(timed_out=True)
        # Logged once: the round now has no deadline and closes on the aggregate that
        # makes the quorum (a tight loop of warnings here once filled a disk).
        self._pending.expired = True
        log.warning("cloud: v%d deadline passed with %d of the %d fogs needed; waiting for "
                    "a quorum", self.version, len(self._pending.frames), self.config.min_fogs)
        return []

    def _close(self, *, timed_out: bool) -> list[CloudAction]:
        position = self._pending.last_position
        fogs = sorted(self._pending.frames)
        frames = [self._pending.frames[f] for f in fogs]
        stack = np.stack([f.delta for f in frames])
        weights = np.array([f.num_samples for f in frames], dtype=np.float64)
        buffer = self.config.buffer
        if buffer is not None and buffer.buffered:
            # FedBuff: an aggregate s versions behind counts (1 + s) ** -exponent of its samples
            delta = self._aggregate(stack, staleness_weights(
                weights, [self._pending.staleness.get(f, 0) for f in fogs],
                buffer.staleness_exponent))
            for f in frames:
                self._applied[f.aggregate_id] = None
            while len(self._applied) > 4096:
                del self._applied[next(iter(self._applied))]
        else:
            delta = self._aggregate(stack, weights)
        if self.server_opt is not None:
            delta = self.server_opt.step(delta)
        controls = [(f.control, len(f.contributors)) for f in frames if f.control is not None]
        if self.control is not None and controls:
            self.control = cloud_control(self.control, [c for c, _ in controls],
                                         [n for _, n in controls])
        parent = self.version
        self.weights = (self.weights + delta).astype(np.float32)
        self.version += 1
        self._pending = _Pending()
        total = float(weights.sum())
        metrics: dict[str, float] = {}
        for f in frames:
            for k, v in f.metrics.items():
                if k.startswith("dp."):
                    continue  # the privacy account is per region: the service combines it
                metrics[k] = metrics.get(k, 0.0) + v * f.num_samples / total
        new = NewGlobal(
            version=self.version,
            parent=parent,
            weights=self.weights.copy(),
            fogs={
                f.fog_id: {
                    "num_samples": f.num_samples,
                    "num_edges": len(f.contributors),
                    "contributors": list(f.contributors),
                    "fog_rounds": f.fog_rounds,
                    "metrics": dict(f.metrics),
                }
                for f in frames
            },
            metrics=metrics,
            timed_out=timed_out,
            control=None if self.control is None else self.control.copy(),
        )
        return [new] if position is None else [new, Commit(position)]
