"""Coordinate-wise trimmed mean [Yin et al., 2018].

Paper: https://arxiv.org/abs/1803.01498

For each coordinate, the ``k = floor(trim_ratio * n)`` smallest and ``k`` largest values are
dropped and the remaining ``n - 2k`` are averaged (the scipy ``trim_mean`` convention).

Breakdown point: ``trim_ratio`` (beta). Up to ``floor(beta * n)`` arbitrary updates are
tolerated: every coordinate of the result then lies between the smallest and the largest honest
value of that coordinate. Choose beta at least the fraction of Byzantine senders expected.

Weighting: claimed sample counts are IGNORED (every update counts once), so a sender cannot buy
influence by claiming more samples. ``weights`` is still checked for shape and sign.

Non-finite inputs: NaN sorts above +Inf; up to ``k`` NaN/Inf rows per tail are trimmed away,
more make the result non-finite and AggregationError is raised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from hierfl.aggregation._common import (
    check_inputs,
    finalize,
    require_float,
    sorted_columns_reduce,
    weighted_sum64,
)
from hierfl.aggregation.mixing import check_nnm_f, nnm_min_updates, nnm_premix
from hierfl.errors import AggregationError
from hierfl.types import Float32Matrix, Float32Vector, Float64Vector

__all__ = ["TrimmedMean", "trimmed_count", "trimmed_mean"]

# Absorbs float error in trim_ratio * n (0.29 * 100 == 28.999999999999996).
_FLOOR_SLACK = 1e-9


def _check_trim_ratio(trim_ratio: float) -> None:
    require_float("trim_ratio", trim_ratio, low=0.0, high=0.5, low_inclusive=True)


def trimmed_count(n: int, trim_ratio: float) -> int:
    """Return how many values are cut from EACH tail of ``n``: ``floor(trim_ratio * n)``.

    Args:
        n: number of updates.
        trim_ratio: fraction cut from each tail, 0 <= trim_ratio < 0.5.

    Returns:
        The per-tail trim count ``k``.

    Raises:
        ConfigError: if ``trim_ratio`` is out of range.
    """
    _check_trim_ratio(trim_ratio)
    return math.floor(trim_ratio * n + _FLOOR_SLACK)


def trimmed_mean(
    updates: Float32Matrix, weights: Float64Vector, *, trim_ratio: float
) -> Float32Vector:
    """Return the coordinate-wise mean after dropping ``trim_ratio`` of each tail.

    Args:
        updates: (n_updates, n_params) stacked flat deltas; not modified.
        weights: (n_updates,) claimed sample counts; ignored by this rule.
        trim_ratio: fraction cut from each tail, 0 <= trim_ratio < 0.5.

    Returns:
        (n_params,) float32 trimmed mean, accumulated in float64.

    Raises:
        AggregationError: on malformed inputs, if no update survives trimming (cannot happen
            for trim_ratio < 0.5, kept as a guard), or on a non-finite result.
        ConfigError: if ``trim_ratio`` is out of range.
    """
    w = check_inputs(updates, weights)
    n = updates.shape[0]
    k = trimmed_count(n, trim_ratio)
    kept = n - 2 * k
    if kept < 1:
        raise AggregationError(
            f"trimmed_mean: trim_ratio={trim_ratio} cuts {k} of {n} updates from each tail; "
            "nothing survives"
        )
    if k == 0:
        # Nothing to trim: a plain float64 mean, no sort needed.
        return finalize(weighted_sum64(np.full_like(w, 1.0 / n), updates), "trimmed_mean")
    ones = np.full(kept, 1.0 / kept)

    def middle_mean(block: npt.NDArray[np.floating[Any]]) -> Float64Vector:
        mid: Float64Vector = block[:, k : n - k].astype(np.float64) @ ones
        return mid

    return finalize(sorted_columns_reduce(updates, middle_mean), "trimmed_mean")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrimmedMean:
    """Coordinate-wise trimmed mean.

    Args:
        trim_ratio: fraction cut from each tail, 0 <= trim_ratio < 0.5 (default 0.1).
        nnm_f: nearest-neighbour mixing before the rule, assuming this many Byzantine
            updates (:mod:`hierfl.aggregation.mixing`); ``None`` (default): no mixing.

    Raises:
        ConfigError: if ``trim_ratio`` or ``nnm_f`` is out of range.

    Example:
        >>> result = TrimmedMean(trim_ratio=0.2)(stack, sample_counts)  # doctest: +SKIP
    """

    name: ClassVar[str] = "trimmed_mean"
    robust: ClassVar[bool] = True

    trim_ratio: float = 0.1
    nnm_f: int | None = None

    def __post_init__(self) -> None:
        _check_trim_ratio(self.trim_ratio)
        check_nnm_f(self.nnm_f)

    @property
    def min_updates(self) -> int:
        """The fewest updates this rule aggregates (trim_ratio < 0.5 always keeps one;
        ``2 nnm_f + 1`` with mixing)."""
        return nnm_min_updates(self.nnm_f)

    def __call__(self, updates: Float32Matrix, weights: Float64Vector) -> Float32Vector:
        """Aggregate with :func:`trimmed_mean`, after mixing if ``nnm_f`` is set."""
        mixed = nnm_premix(updates, weights, self.nnm_f)
        return trimmed_mean(mixed, weights, trim_ratio=self.trim_ratio)
