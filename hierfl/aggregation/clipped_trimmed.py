"""The fog's default rule: norm clipping, then a trimmed mean after nearest-neighbour mixing,
degrading to the clipped mean in regions too small for it.

Built from [Sun et al., 2019] (norm bounding, arxiv.org/abs/1911.07963), [Yin et al., 2018]
(trimmed mean, arxiv.org/abs/1803.01498) and [Allouah et al., 2023] (nearest-neighbour mixing,
arxiv.org/abs/2302.01772).

1. Every update is clipped to ``clip_multiplier`` x the median update norm: a scaled update
   (x100, a "model replacement") keeps at most that norm.
2. With ``n >= 2 f + 1`` updates, nearest-neighbour mixing against ``f`` Byzantine updates,
   then the coordinate-wise trimmed mean cutting ``max(trim_ratio, f / n)`` per tail (at least
   ``f`` values): a sign-flipped or Gaussian update among honest ones is out-voted.
3. With fewer updates (a region of 1-2 edges; no rule can tell an honest update from a
   Byzantine one among two) the mean after clipping to ``clip_multiplier`` x the *smallest*
   norm: the round still closes, and one attacker moves the result by at most
   ``clip_multiplier x smallest norm / n``.

Claimed sample counts are ignored (every update counts once): a claim of a million samples
buys nothing. Breakdown point ``f < n / 2`` for ``n >= 2 f + 1``; bounded influence below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from hierfl.aggregation._common import check_inputs, finalize, row_sq_norms64, weighted_sum64
from hierfl.aggregation.mixing import check_nnm_f, nearest_neighbour_mixing
from hierfl.aggregation.norm_bounded import clip_factors
from hierfl.aggregation.trimmed_mean import _check_trim_ratio, trimmed_mean
from hierfl.errors import ConfigError
from hierfl.types import Float32Matrix, Float32Vector, Float64Vector

__all__ = ["ClippedTrimmedMean", "clipped_trimmed_mean"]


def clipped_trimmed_mean(
    updates: Float32Matrix,
    weights: Float64Vector,
    *,
    f: int = 1,
    trim_ratio: float = 0.2,
    clip_multiplier: float = 3.0,
) -> Float32Vector:
    """Clip, then mix and trim when there are enough updates, else average (see module doc).

    Args:
        updates: (n_updates, n_params) stacked flat deltas; not modified.
        weights: (n_updates,) claimed sample counts; ignored.
        f: Byzantine updates to tolerate per round (>= 1).
        trim_ratio: least fraction trimmed from each tail (0 <= trim_ratio < 0.5).
        clip_multiplier: clip bound as a multiple of the median norm (> 0).

    Raises:
        AggregationError: on malformed inputs or a non-finite result.
        ConfigError: if a parameter is out of range.
    """
    check_nnm_f(f)
    _check_trim_ratio(trim_ratio)
    if not clip_multiplier > 0:
        raise ConfigError(f"clip_multiplier must be > 0, got {clip_multiplier}")
    check_inputs(updates, weights)
    n = updates.shape[0]
    norms = np.sqrt(row_sq_norms64(updates))
    small = n < 2 * f + 1
    finite = norms[np.isfinite(norms)]
    # Few updates: the median norm is no longer robust (of two, it is their mean), so the
    # bound is taken from the smallest norm: an attacker can only shrink the round's step.
    max_norm = clip_multiplier * float(finite.min()) if small and finite.size else None
    factors, _ = clip_factors(norms, multiplier=clip_multiplier, max_norm=max_norm or None)
    clipped = (updates * factors[:, None]).astype(updates.dtype, copy=False)
    if small:
        return finalize(weighted_sum64(np.full(n, 1.0 / n), clipped), "clipped_trimmed_mean")
    mixed = nearest_neighbour_mixing(clipped, f)
    ratio = max(trim_ratio, f / n)
    if ratio >= 0.5:  # n = 2f + 1 with a large f: keep the middle value (the median)
        ratio = (n - 1) / (2 * n)
    return trimmed_mean(mixed, weights, trim_ratio=ratio)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClippedTrimmedMean:
    """The fog's default rule (:func:`clipped_trimmed_mean`).

    Args:
        f: Byzantine updates to tolerate per fog round (default 1).
        trim_ratio: least fraction trimmed per tail (default 0.2).
        clip_multiplier: clip to this multiple of the median norm (default 3.0).

    Raises:
        ConfigError: if a parameter is out of range.
    """

    name: ClassVar[str] = "clipped_trimmed_mean"
    robust: ClassVar[bool] = True

    f: int = 1
    trim_ratio: float = 0.2
    clip_multiplier: float = 3.0

    def __post_init__(self) -> None:
        check_nnm_f(self.f)
        _check_trim_ratio(self.trim_ratio)
        if not (isinstance(self.clip_multiplier, int | float) and self.clip_multiplier > 0):
            raise ConfigError(f"clip_multiplier must be > 0, got {self.clip_multiplier!r}")

    @property
    def min_updates(self) -> int:
        """The fewest updates this rule aggregates: any ``n >= 1`` (below ``2 f + 1`` it averages
        the clipped updates)."""
        return 1

    def __call__(self, updates: Float32Matrix, weights: Float64Vector) -> Float32Vector:
        """Aggregate with :func:`clipped_trimmed_mean`."""
        return clipped_trimmed_mean(updates, weights, f=self.f, trim_ratio=self.trim_ratio,
                                    clip_multiplier=self.clip_multiplier)
