"""Sample-weighted federated averaging [McMahan et al., 2017], with caps on claimed weight.

Paper: https://arxiv.org/abs/1602.05629

Breakdown point: 0. A single update can move the average arbitrarily far, so FedAvg is not a
Byzantine-robust rule (``robust = False``); use it where the senders are trusted or behind a
norm bound (``validation.check_norm`` or :mod:`hierfl.aggregation.norm_bounded`).

Weighting: FedAvg is the one rule that always uses the claimed sample counts. Claimed counts
are not verified, so two optional caps limit a weighting attack (one sender claiming 1e9
samples to take the whole average):

* ``max_samples`` clips every claimed count to at most that many samples.
* ``max_weight_fraction`` limits any single update's share of the total weight to ``c``.
  The excess is redistributed to the other updates in proportion to their own weight
  ("water-filling"): the shares are ``p_i = min(c, s * w_i)`` with the scale ``s`` chosen so
  that they sum to 1. Updates whose claimed count is 0 keep a share of 0. If the cap cannot be
  met because fewer than ``1 / c`` updates carry weight, every weighted update gets the same
  share ``1 / k`` (the smallest achievable maximum share) instead of failing the round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from hierfl.aggregation._common import (
    check_inputs,
    finalize,
    require_float,
    require_int,
    weighted_sum64,
)
from hierfl.errors import AggregationError
from hierfl.types import Float32Matrix, Float32Vector, Float64Vector

__all__ = ["FedAvg", "capped_weights", "check_weight_caps", "fedavg"]


def check_weight_caps(max_samples: int | None, max_weight_fraction: float | None) -> None:
    """Validate the two weight caps shared by every rule that uses claimed sample counts.

    Args:
        max_samples: cap on each claimed count; ``None`` or an int >= 1.
        max_weight_fraction: cap on one update's share; ``None`` or a float in (0, 1].

    Raises:
        ConfigError: if a cap is out of range or of the wrong type.
    """
    if max_samples is not None:
        require_int("max_samples", max_samples, minimum=1)
    if max_weight_fraction is not None:
        require_float(
            "max_weight_fraction", max_weight_fraction, low=0.0, high=1.0, high_inclusive=True
        )


def capped_weights(
    weights: Float64Vector,
    *,
    max_samples: int | None = None,
    max_weight_fraction: float | None = None,
) -> Float64Vector:
    """Turn claimed sample counts into normalised shares, applying the caps.

    Args:
        weights: (n,) non-negative finite claimed sample counts; not modified.
        max_samples: if set, each count is clipped to at most this value first.
        max_weight_fraction: if set, no share exceeds this value; the excess is redistributed
            proportionally (see the module docstring).

    Returns:
        (n,) float64 shares, each >= 0, summing to 1.

    Raises:
        AggregationError: if the total (capped) weight is zero.
    """
    w = np.asarray(weights, dtype=np.float64)
    if max_samples is not None:
        w = np.minimum(w, float(max_samples))
    total = float(w.sum())
    if not total > 0.0:
        raise AggregationError(f"total claimed weight is {total}; nothing to average")
    shares = w / total
    if max_weight_fraction is None or shares.max() <= max_weight_fraction:
        return shares
    cap = float(max_weight_fraction)
    positive = w > 0.0
    k = int(np.count_nonzero(positive))
    if k * cap <= 1.0:
        uniform: Float64Vector = np.where(positive, 1.0 / k, 0.0)
        return uniform
    # Water-filling: cap the t heaviest updates at `cap`, scale the rest to fill 1 - t * cap.
    # The smallest t whose heaviest uncapped update stays under the cap is the solution; t = k-1
    # always qualifies because k * cap > 1.
    order = np.argsort(-w, kind="stable")
    ws = w[order][:k]
    rest = np.cumsum(ws[::-1])[::-1]  # rest[t] = sum of ws[t:]
    t_all = np.arange(k)
    ok = ws * (1.0 - t_all * cap) <= cap * rest
    t = int(np.argmax(ok))
    out = np.zeros_like(w)
    out[order[:t]] = cap
    uncapped = order[t:k]
    # w_i / rest[t] <= 1, so this cannot overflow even when rest[t] is subnormal.
    out[uncapped] = (w[uncapped] / rest[t]) * (1.0 - t * cap)
    return out


def fedavg(
    updates: Float32Matrix,
    weights: Float64Vector,
    *,
    max_samples: int | None = None,
    max_weight_fraction: float | None = None,
) -> Float32Vector:
    """Return the sample-weighted average of the updates.

    Computed as BLAS ``shares @ block`` over float64 column blocks, so the accumulation is
    float64 without a float64 copy of the whole stack. Updates whose (capped) weight is 0 are
    not read at all.

    Args:
        updates: (n_updates, n_params) stacked flat deltas; not modified.
        weights: (n_updates,) claimed sample counts.
        max_samples: if set, cap each claimed count at this value.
        max_weight_fraction: if set, cap any single update's share of the total weight.

    Returns:
        (n_params,) float32 weighted average.

    Raises:
        AggregationError: on malformed inputs, a zero total weight, or a non-finite result
            (FedAvg does not tolerate NaN/Inf in a weighted update).
        ConfigError: if a cap is out of range.
    """
    check_weight_caps(max_samples, max_weight_fraction)
    w = check_inputs(updates, weights)
    shares = capped_weights(w, max_samples=max_samples, max_weight_fraction=max_weight_fraction)
    return finalize(weighted_sum64(shares, updates), "fedavg")


@dataclass(frozen=True, slots=True, kw_only=True)
class FedAvg:
    """Sample-weighted FedAvg with optional weight caps.

    Args:
        max_samples: cap on each claimed sample count (``None``: no cap).
        max_weight_fraction: cap on any single update's share of the weight, in (0, 1]
            (``None``: no cap).

    Raises:
        ConfigError: if a parameter is out of range.

    Example:
        >>> agg = FedAvg(max_samples=10_000, max_weight_fraction=0.25)
        >>> result = agg(stack, sample_counts)  # doctest: +SKIP
    """

    name: ClassVar[str] = "fedavg"
    robust: ClassVar[bool] = False

    max_samples: int | None = None
    max_weight_fraction: float | None = None

    def __post_init__(self) -> None:
        check_weight_caps(self.max_samples, self.max_weight_fraction)

    @property
    def min_updates(self) -> int:
        """The fewest updates this rule aggregates (any ``n >= 1``)."""
        return 1

    def __call__(self, updates: Float32Matrix, weights: Float64Vector) -> Float32Vector:
        """Aggregate with :func:`fedavg` and this object's caps."""
        return fedavg(
            updates,
            weights,
            max_samples=self.max_samples,
            max_weight_fraction=self.max_weight_fraction,
        )
