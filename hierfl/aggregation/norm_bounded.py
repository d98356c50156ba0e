"""Norm bounding: clip every update's L2 norm, then average [Sun et al., 2019].

Paper: "Can You Really Backdoor Federated Learning?", https://arxiv.org/abs/1911.07963

Each update ``x_i`` is scaled by ``min(1, tau / ||x_i||)``. The bound ``tau`` is either the
fixed ``max_norm`` or ``multiplier`` times the median of the update norms (adaptive), then the
clipped updates are averaged.

Breakdown point: 1/2 in the bounded-influence sense, not as a location estimator. With fewer
than half of the updates Byzantine, the median norm is at most the largest honest norm, so the
result has norm at most ``tau``, and replacing an honest update by a Byzantine one moves it by at
most ``2 tau / n`` for a given ``tau`` (uniform weights). It cannot be dragged arbitrarily far,
but unlike the median it is biased by up to ``2 q tau / n`` with ``q`` attackers.

Weighting: by default (``weighted=False``) claimed sample counts are IGNORED (uniform average).
With ``weighted=True`` the clipped updates are averaged by their claimed counts after the caps
of :func:`~hierfl.aggregation.fedavg.capped_weights` (``max_samples``, ``max_weight_fraction``);
set a cap, or one sender claiming 1e9 samples takes the whole (clipped) average.

Non-finite inputs: an update holding NaN/Inf is clipped to zero (it still counts in the
denominator); the adaptive median is taken over the finite norms only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from hierfl.aggregation._common import (
    check_inputs,
    finalize,
    require_bool,
    require_float,
    row_sq_norms64,
    weighted_sum64,
)
from hierfl.aggregation.fedavg import capped_weights, check_weight_caps
from hierfl.types import Float32Matrix, Float32Vector, Float64Vector

__all__ = ["NormBounded", "clip_factors", "norm_bounded"]


def _check_params(multiplier: float, max_norm: float | None) -> None:
    require_float("multiplier", multiplier, low=0.0)
    if max_norm is not None:
        require_float("max_norm", max_norm, low=0.0)


def clip_factors(
    norms: Float64Vector, *, multiplier: float = 1.0, max_norm: float | None = None
) -> tuple[Float64Vector, float]:
    """Return the per-update scale factors ``min(1, tau / norm)`` and the bound ``tau``.

    Args:
        norms: (n,) L2 norms of the updates; NaN/Inf mark non-finite updates.
        multiplier: adaptive bound ``tau = multiplier * median(finite norms)``.
        max_norm: fixed bound; overrides ``multiplier`` when set.

    Returns:
        ``(factors, tau)``: (n,) float64 factors in [0, 1] (0 for non-finite norms) and the bound.

    Raises:
        ConfigError: if ``multiplier`` or ``max_norm`` is not a positive finite number.
    """
    _check_params(multiplier, max_norm)
    finite = np.isfinite(norms)
    if max_norm is not None:
        tau = float(max_norm)
    elif finite.any():
        tau = multiplier * float(np.median(norms[finite]))
    else:
        tau = 0.0
    factors = np.zeros(norms.shape, dtype=np.float64)
    big = finite & (norms > tau)
    small = finite & ~big
    factors[small] = 1.0
    factors[big] = tau / norms[big]
    return factors, tau


def norm_bounded(
    updates: Float32Matrix,
    weights: Float64Vector,
    *,
    multiplier: float = 1.0,
    max_norm: float | None = None,
    weighted: bool = False,
    max_samples: int | None = None,
    max_weight_fraction: float | None = None,
) -> Float32Vector:
    """Return the average of the updates after clipping each to norm ``tau``.

    Args:
        updates: (n_updates, n_params) stacked flat deltas; not modified.
        weights: (n_updates,) claimed sample counts; used only if ``weighted``.
        multiplier: adaptive bound, ``tau = multiplier * median norm`` (> 0).
        max_norm: fixed bound ``tau`` (> 0); overrides ``multiplier`` when set.
        weighted: average by capped claimed counts instead of uniformly.
        max_samples: with ``weighted``, cap each claimed count at this value.
        max_weight_fraction: with ``weighted``, cap any single update's share of the weight.

    Returns:
        (n_params,) float32 average of the clipped updates, accumulated in float64.

    Raises:
        AggregationError: on malformed inputs, a zero total weight (``weighted`` only), or a
            non-finite result.
        ConfigError: if a parameter is out of range.
    """
    _check_params(multiplier, max_norm)
    check_weight_caps(max_samples, max_weight_fraction)
    w = check_inputs(updates, weights)
    n = updates.shape[0]
    norms = np.sqrt(row_sq_norms64(updates))
    factors, _ = clip_factors(norms, multiplier=multiplier, max_norm=max_norm)
    if weighted:
        shares = capped_weights(w, max_samples=max_samples, max_weight_fraction=max_weight_fraction)
    else:
        shares = np.full(n, 1.0 / n)
    return finalize(weighted_sum64(shares * factors, updates), "norm_bounded")


@dataclass(frozen=True, slots=True, kw_only=True)
class NormBounded:
    """Clip each update to a norm bound, then average.

    Args:
        multiplier: adaptive bound as a multiple of the median update norm (default 1.0).
        max_norm: fixed bound; overrides ``multiplier`` when set (default ``None``).
        weighted: average by capped claimed counts instead of uniformly (default ``False``).
        max_samples: with ``weighted``, cap on each claimed count.
        max_weight_fraction: with ``weighted``, cap on one update's share, in (0, 1].

    Raises:
        ConfigError: if a parameter is out of range.

    Example:
        >>> result = NormBounded(multiplier=2.0)(stack, sample_counts)  # doctest: +SKIP
    """

    name: ClassVar[str] = "norm_bounded"
    robust: ClassVar[bool] = True

    multiplier: float = 1.0
    max_norm: float | None = None
    weighted: bool = False
    max_samples: int | None = None
    max_weight_fraction: float | None = None

    def __post_init__(self) -> None:
        _check_params(self.multiplier, self.max_norm)
        require_bool("weighted", self.weighted)
        check_weight_caps(self.max_samples, self.max_weight_fraction)

    @property
    def min_updates(self) -> int:
        """The fewest updates this rule aggregates (any ``n >= 1``)."""
        return 1

    def __call__(self, updates: Float32Matrix, weights: Float64Vector) -> Float32Vector:
        """Aggregate with :func:`norm_bounded` and this object's parameters."""
        return norm_bounded(
            updates,
            weights,
            multiplier=self.multiplier,
            max_norm=self.max_norm,
            weighted=self.weighted,
            max_samples=self.max_samples,
            max_weight_fraction=self.max_weight_fraction,
        )
