"""Geometric median by smoothed Weiszfeld iterations: RFA [Pillutla et al., 2019].

Paper: https://arxiv.org/abs/1912.13445

The geometric median minimises ``sum_i ||z - x_i||``. Each smoothed Weiszfeld step sets
``z = sum_i b_i x_i / sum_i b_i`` with ``b_i = 1 / max(eps, ||z - x_i||)``; iterations stop when
a step moves ``z`` by at most ``tol * max(||z||, eps)`` or after ``max_iter`` steps. (RFA stops on
the relative decrease of the objective instead; far outliers dominate that objective, so it
stopped while ``z`` was still hundreds of units off the honest updates in our tests.)

Every iterate is a convex combination ``z = X^T c`` of the updates, so the distances are
``||x_i - z||^2 = G_ii - 2 (G c)_i + c^T G c`` with the float64 Gram matrix ``G = X X^T``,
computed once in one pass. The iterations then cost O(n^2) each, and the stack is read one more
time to form the result: 2 passes in all, whatever ``max_iter`` is. The expansion loses
precision only when distances are below ~1e-8 of the update norms, where the smoothing ``eps``
dominates anyway.

Breakdown point: 1/2. With a fraction ``a < 1/2`` of arbitrary updates, the distance of the
result from the honest mean is at most ``(2 (1 - a) / (1 - 2a)) * max_i ||h_i - mean(h)||`` over
the honest updates ``h_i``: compare the objective at the median with that at ``mean(h)`` and use
the triangle inequality on each term (cf. Minsker 2015, Lemma 2.1).

Weighting: claimed sample counts are IGNORED (every update has weight 1, where RFA itself uses
the counts), so a sender cannot buy influence by claiming more samples.

Non-finite inputs: updates holding NaN/Inf are left out; AggregationError if none is left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from hierfl.aggregation._common import (
    check_inputs,
    finalize,
    gram64,
    require_float,
    require_int,
    weighted_sum64,
)
from hierfl.aggregation.mixing import check_nnm_f, nnm_min_updates, nnm_premix
from hierfl.errors import AggregationError
from hierfl.types import Float32Matrix, Float32Vector, Float64Vector

__all__ = ["GeometricMedian", "geometric_median"]


def _check_params(max_iter: int, eps: float, tol: float) -> None:
    require_int("max_iter", max_iter, minimum=1)
    require_float("eps", eps, low=0.0)
    require_float("tol", tol, low=0.0, low_inclusive=True)


def _distances(gram: npt.NDArray[np.float64], sq: Float64Vector, c: Float64Vector) -> Float64Vector:
    gc = gram @ c
    d2 = sq - 2.0 * gc + float(c @ gc)
    dist: Float64Vector = np.sqrt(np.maximum(d2, 0.0))
    return dist


def geometric_median(
    updates: Float32Matrix,
    weights: Float64Vector,
    *,
    max_iter: int = 100,
    eps: float = 1e-6,
    tol: float = 1e-6,
) -> Float32Vector:
    """Return the (smoothed) geometric median of the updates.

    Args:
        updates: (n_updates, n_params) stacked flat deltas; not modified.
        weights: (n_updates,) claimed sample counts; ignored by this rule.
        max_iter: maximum number of Weiszfeld steps, >= 1.
        eps: smoothing; distances below it count as ``eps`` (> 0, in the units of the updates).
        tol: stop once a step moves the estimate by at most ``tol`` times its norm (>= 0).

    Returns:
        (n_params,) float32 geometric median, accumulated in float64.

    Raises:
        AggregationError: on malformed inputs, if no update is finite, or on a non-finite result.
        ConfigError: if a parameter is out of range.
    """
    _check_params(max_iter, eps, tol)
    check_inputs(updates, weights)
    n = updates.shape[0]
    gram = gram64(updates)
    sq_all = np.diag(gram)
    finite = np.isfinite(sq_all)
    if not finite.any():
        raise AggregationError("geometric_median: every update holds NaN/Inf")
    idx = np.flatnonzero(finite)
    g = gram[np.ix_(idx, idx)]
    sq = sq_all[idx]
    c = np.full(idx.size, 1.0 / idx.size)
    dist = _distances(g, sq, c)
    for _ in range(max_iter):
        beta = 1.0 / np.maximum(dist, eps)
        c_new = beta / beta.sum()
        step = c_new - c
        moved = math.sqrt(max(float(step @ g @ step), 0.0))  # ||z_new - z||
        size = math.sqrt(max(float(c_new @ g @ c_new), 0.0))  # ||z_new||
        c = c_new
        if moved <= tol * max(size, eps):
            break
        dist = _distances(g, sq, c)
    coeffs = np.zeros(n, dtype=np.float64)
    coeffs[idx] = c
    return finalize(weighted_sum64(coeffs, updates), "geometric_median")


@dataclass(frozen=True, slots=True, kw_only=True)
class GeometricMedian:
    """Geometric median (RFA, smoothed Weiszfeld).

    Args:
        max_iter: maximum number of Weiszfeld steps (default 100).
        eps: smoothing distance, > 0 (default 1e-6).
        tol: relative step size below which iterations stop, >= 0 (default 1e-6).
        nnm_f: nearest-neighbour mixing before the rule, assuming this many Byzantine
            updates (:mod:`hierfl.aggregation.mixing`); ``None`` (default): no mixing.

    Raises:
        ConfigError: if a parameter is out of range.

    Example:
        >>> result = GeometricMedian(max_iter=20)(stack, sample_counts)  # doctest: +SKIP
    """

    name: ClassVar[str] = "geometric_median"
    robust: ClassVar[bool] = True

    max_iter: int = 100
    eps: float = 1e-6
    tol: float = 1e-6
    nnm_f: int | None = None

    def __post_init__(self) -> None:
        _check_params(self.max_iter, self.eps, self.tol)
        check_nnm_f(self.nnm_f)

    @property
    def min_updates(self) -> int:
        """The fewest updates this rule aggregates (``2 nnm_f + 1`` with mixing)."""
        return nnm_min_updates(self.nnm_f)

    def __call__(self, updates: Float32Matrix, weights: Float64Vector) -> Float32Vector:
        """Aggregate with :func:`geometric_median`, after mixing if ``nnm_f`` is set."""
        return geometric_median(
            nnm_premix(updates, weights, self.nnm_f),
            weights,
            max_iter=self.max_iter,
            eps=self.eps,
            tol=self.tol,
        )
