"""Buffered asynchronous aggregation (FedBuff) for fogs and the cloud: the pure parts.

FedBuff [Nguyen et al., 2022, arxiv.org/abs/2106.06639] lets an aggregator combine a
*buffer* of ``K`` updates as they arrive, instead of waiting for a synchronous round; an
update computed from an older model is still used, weighted down by its *staleness* ``s``
(how many models the aggregator published since the one the update was trained from):
``w(s) = (1 + s) ** -exponent``, the paper's ``1 / sqrt(1 + s)`` at ``exponent = 0.5``.
Updates staler than ``max_staleness`` are refused (:class:`~hierfl.errors.StaleUpdateError`,
counted by the tier like every refusal).

This module holds what the fog's and the cloud's state machines share
(:mod:`hierfl.fog.round`, :mod:`hierfl.cloud.round`): the validated policy
(:class:`BufferPolicy`), the weighting (:func:`staleness_weight`) and the fog's model clock
across global versions (:class:`ModelClock`). Everything is pure: no I/O, no time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from hierfl.errors import ConfigError
from hierfl.types import Float64Vector

__all__ = ["AGGREGATION_MODES", "BufferPolicy", "ModelClock", "buffer_policy", "staleness_weight",
           "staleness_weights"]

#: ``sync``: a round waits for ``min_updates`` (fog) or every fog (cloud), as before;
#: ``buffered``: combine every ``buffer_size`` arrivals, stale ones weighted down
AGGREGATION_MODES = ("sync", "buffered")


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """FedBuff's staleness discount ``(1 + s) ** -exponent``.

    Args:
        staleness: models published since the one the update was trained from (>= 0).
        exponent: 0.5 is the paper's ``1 / sqrt(1 + s)``; 0 weighs every update alike.

    Returns:
        The factor in ``(0, 1]`` the update's sample weight is multiplied by.

    Raises:
        ConfigError: a negative staleness or exponent.
    """
    if staleness < 0 or exponent < 0:
        raise ConfigError(f"staleness ({staleness}) and exponent ({exponent}) must be >= 0")
    return float((1.0 + staleness) ** -exponent)


def staleness_weights(samples: Float64Vector, staleness: list[int],
                      exponent: float = 0.5) -> Float64Vector:
    """Sample weights times their staleness discounts (one per update, same order).

    Raises:
        ConfigError: lengths differ, or as :func:`staleness_weight`.
    """
    if len(staleness) != samples.shape[0]:
        raise ConfigError(f"{samples.shape[0]} weights but {len(staleness)} staleness values")
    factors = np.array([staleness_weight(s, exponent) for s in staleness], dtype=np.float64)
    return (samples.astype(np.float64) * factors).astype(np.float64)


@dataclass(frozen=True, slots=True)
class BufferPolicy:
    """How an aggregator combines what arrives (validated by the tier's settings).

    Attributes:
        mode: ``"sync"`` or ``"buffered"``.
        buffer_size: K, the arrivals combined at once (buffered mode).
        staleness_exponent: ``w(s) = (1 + s) ** -staleness_exponent``.
        max_staleness: the stalest update accepted, in published models (fog) or global
            versions (cloud); staler ones are refused.

    Raises:
        ConfigError: an unknown mode or a value out of range.
    """

    mode: str = "sync"
    buffer_size: int = 1
    staleness_exponent: float = 0.5
    max_staleness: int = 0

    def __post_init__(self) -> None:
        if self.mode not in AGGREGATION_MODES:
            raise ConfigError(f"aggregation must be one of {AGGREGATION_MODES}, not {self.mode!r}")
        if self.buffer_size < 1:
            raise ConfigError(f"buffer_size must be >= 1, not {self.buffer_size}")
        if self.staleness_exponent < 0:
            raise ConfigError(f"staleness_exponent must be >= 0, not {self.staleness_exponent}")
        if self.max_staleness < 0:
            raise ConfigError(f"max_staleness must be >= 0, not {self.max_staleness}")

    @property
    def buffered(self) -> bool:
        """True in buffered (asynchronous) mode."""
        return self.mode == "buffered"

    def weight(self, staleness: int) -> float:
        """The discount of an update ``staleness`` models behind."""
        return staleness_weight(staleness, self.staleness_exponent)


class ModelClock:
    """The fog's published models across global versions, for staleness in buffered mode.

    Every fog model has a ``seq`` (increasing over the fog's life, across global versions);
    a skipped round re-publishes the same weights under a new seq, which is not a new model.
    The staleness of an update trained from ``base_seq`` is the number of *changed* models
    published after it, up to the current seq.

    Args:
        keep: changes remembered; an update from before the oldest kept one counts as
            ``keep`` models behind (staler than any sane ``max_staleness``).
    """

    def __init__(self, keep: int = 256) -> None:
        self._starts: deque[int] = deque(maxlen=keep)

    def changed(self, seq: int) -> None:
        """A changed model was published under ``seq`` (ascending)."""
        if self._starts and seq <= self._starts[-1]:
            return
        self._starts.append(seq)

    def staleness(self, base_seq: int, current_seq: int) -> int:
        """Changed models published after ``base_seq`` up to ``current_seq``.

        Returns:
            0 for an update from the current model (or a seq newer than every change).
        """
        if self._starts and base_seq < self._starts[0]:
            return len(self._starts) if self._starts.maxlen is None else self._starts.maxlen
        return sum(1 for s in self._starts if base_seq < s <= current_seq)


def buffer_policy(mode: str, buffer_size: int, staleness_exponent: float,
                  max_staleness: int) -> BufferPolicy | None:
    """The policy a tier's settings name, or None in ``sync`` mode (rounds, as before).

    Raises:
        ConfigError: as :class:`BufferPolicy`.
    """
    policy = BufferPolicy(mode, buffer_size, staleness_exponent, max_staleness)
    return policy if policy.buffered else None
