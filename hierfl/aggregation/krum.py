"""Krum [Blanchard et al., 2017] and Multi-Krum [El Mhamdi et al., 2018].

Papers: https://arxiv.org/abs/1703.02757 (Krum, Multi-Krum),
https://arxiv.org/abs/1802.07927 (Multi-Krum analysed, Bulyan).

Each update is scored by the sum of its squared L2 distances to its ``n - f - 2`` nearest
neighbours; Krum returns the update with the lowest score, Multi-Krum averages the ``m``
lowest-scoring updates (default ``m = n - f``).

Breakdown point: ``f`` Byzantine updates out of ``n`` are tolerated when ``n >= 2f + 3``, i.e.
just under 1/2 for large ``n``; fewer updates raise AggregationError. Squared distances come
from one float64 Gram matrix, ``sq[:, None] + sq[None, :] - 2 X Xᵀ`` clipped at 0 (3-10x faster
than pairwise differences), accumulated in float64 over column blocks.

Weighting: claimed sample counts are IGNORED by Krum and, by default, by Multi-Krum (the ``m``
selected updates are averaged uniformly). ``MultiKrum(weighted=True)`` averages the selected
updates by their claimed counts instead, after the caps of :func:`~hierfl.aggregation.fedavg.
capped_weights`; the selection itself never looks at the counts.

Non-finite inputs: an update holding NaN/Inf is treated as infinitely far from every other, so it
is never selected while enough finite updates exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from hierfl.aggregation._common import (
    check_inputs,
    finalize,
    gram64,
    require_bool,
    require_int,
    select_lowest,
    weighted_sum64,
)
from hierfl.aggregation.fedavg import capped_weights, check_weight_caps
from hierfl.aggregation.mixing import check_nnm_f, nnm_min_updates, nnm_premix
from hierfl.errors import AggregationError
from hierfl.types import Float32Matrix, Float32Vector, Float64Vector

__all__ = ["Krum", "MultiKrum", "krum", "krum_scores", "multikrum"]


def _check_f(f: int) -> None:
    require_int("f", f, minimum=0)


def krum_scores(updates: Float32Matrix, *, f: int) -> Float64Vector:
    """Return the Krum score of every update (lower is more central).

    Args:
        updates: (n_updates, n_params) stacked flat deltas; not modified.
        f: number of Byzantine updates assumed.

    Returns:
        (n_updates,) float64 scores: the sum of squared distances to the ``n - f - 2`` nearest
        other updates; ``inf`` for updates holding NaN/Inf.

    Raises:
        AggregationError: if ``n < 2f + 3``.
        ConfigError: if ``f`` is not an int >= 0.
    """
    _check_f(f)
    n = updates.shape[0]
    if n < 2 * f + 3:
        raise AggregationError(
            f"krum needs n >= 2f + 3 updates: got n={n} with f={f} (needs {2 * f + 3}); "
            "lower f or wait for more updates"
        )
    gram = gram64(updates)
    sq = np.diag(gram)
    with np.errstate(invalid="ignore", over="ignore"):
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    d2[~np.isfinite(d2)] = np.inf
    np.fill_diagonal(d2, np.inf)
    neighbours = n - f - 2
    # Sorting each row (n is small) fixes the summation order, so a score does not depend on
    # where its update sits in the stack.
    scores: Float64Vector = np.sort(d2, axis=1)[:, :neighbours].sum(axis=1)
    return scores


def krum(updates: Float32Matrix, weights: Float64Vector, *, f: int) -> Float32Vector:
    """Return the update with the lowest Krum score.

    Args:
        updates: (n_updates, n_params) stacked flat deltas; not modified.
        weights: (n_updates,) claimed sample counts; ignored by this rule.
        f: number of Byzantine updates assumed; needs ``n >= 2f + 3``.

    Returns:
        (n_params,) float32 copy of the selected update (ties broken by content, not order).

    Raises:
        AggregationError: on malformed inputs, ``n < 2f + 3``, or no finite update.
        ConfigError: if ``f`` is not an int >= 0.
    """
    check_inputs(updates, weights)
    scores = krum_scores(updates, f=f)
    best = int(select_lowest(scores, updates, 1)[0])
    return finalize(np.asarray(updates[best]), "krum")


def multikrum(
    updates: Float32Matrix,
    weights: Float64Vector,
    *,
    f: int,
    m: int | None = None,
    weighted: bool = False,
    max_samples: int | None = None,
    max_weight_fraction: float | None = None,
) -> Float32Vector:
    """Return the average of the ``m`` updates with the lowest Krum scores.

    Args:
        updates: (n_updates, n_params) stacked flat deltas; not modified.
        weights: (n_updates,) claimed sample counts; used only if ``weighted``.
        f: number of Byzantine updates assumed; needs ``n >= 2f + 3``.
        m: how many updates to select, 1 <= m <= n - f; ``None`` means ``n - f``.
        weighted: average the selected updates by their capped claimed counts instead of
            uniformly.
        max_samples: with ``weighted``, cap each claimed count at this value.
        max_weight_fraction: with ``weighted``, cap any selected update's share of the weight.

    Returns:
        (n_params,) float32 average of the selected updates, accumulated in float64.

    Raises:
        AggregationError: on malformed inputs, ``n < 2f + 3``, ``m > n - f``, a zero total
            weight of the selection (``weighted`` only), or a non-finite result.
        ConfigError: if ``f``, ``m`` or a cap is out of range.
    """
    _check_m(m)
    check_weight_caps(max_samples, max_weight_fraction)
    w = check_inputs(updates, weights)
    scores = krum_scores(updates, f=f)
    n = updates.shape[0]
    count = n - f if m is None else m
    if count > n - f:
        raise AggregationError(f"multikrum: m={m} exceeds n - f = {n - f} (n={n}, f={f})")
    selected = select_lowest(scores, updates, count)
    coeffs = np.zeros(n, dtype=np.float64)
    if weighted:
        coeffs[selected] = capped_weights(
            w[selected], max_samples=max_samples, max_weight_fraction=max_weight_fraction
        )
    else:
        coeffs[selected] = 1.0 / count
    return finalize(weighted_sum64(coeffs, updates), "multikrum")


def _check_m(m: int | None) -> None:
    if m is not None:
        require_int("m", m, minimum=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Krum:
    """Krum: select the single most central update.

    Args:
        f: number of Byzantine updates assumed (default 1); calls need ``n >= 2f + 3``.
        nnm_f: nearest-neighbour mixing before the rule, assuming this many Byzantine
            updates (:mod:`hierfl.aggregation.mixing`); ``None`` (default): no mixing.

    Raises:
        ConfigError: if ``f`` is not an int >= 0 or ``nnm_f`` is out of range.

    Example:
        >>> result = Krum(f=2)(stack, sample_counts)  # doctest: +SKIP
    """

    name: ClassVar[str] = "krum"
    robust: ClassVar[bool] = True

    f: int = 1
    nnm_f: int | None = None

    def __post_init__(self) -> None:
        _check_f(self.f)
        check_nnm_f(self.nnm_f)

    @property
    def min_updates(self) -> int:
        """The fewest updates this rule aggregates: ``2f + 3`` (and ``2 nnm_f + 1`` with mixing)."""
        return max(2 * self.f + 3, nnm_min_updates(self.nnm_f))

    def __call__(self, updates: Float32Matrix, weights: Float64Vector) -> Float32Vector:
        """Aggregate with :func:`krum`, after mixing if ``nnm_f`` is set."""
        return krum(nnm_premix(updates, weights, self.nnm_f), weights, f=self.f)


@dataclass(frozen=True, slots=True, kw_only=True)
class MultiKrum:
    """Multi-Krum: average the ``m`` most central updates.

    Args:
        f: number of Byzantine updates assumed (default 1); calls need ``n >= 2f + 3``.
        m: updates selected, ``None`` for ``n - f``; must be <= n - f at call time.
        weighted: average the selection by capped claimed counts (default: uniformly).
        max_samples: with ``weighted``, cap on each claimed count.
        max_weight_fraction: with ``weighted``, cap on one update's share, in (0, 1].
        nnm_f: nearest-neighbour mixing before the rule, assuming this many Byzantine
            updates (:mod:`hierfl.aggregation.mixing`); ``None`` (default): no mixing.
            With ``weighted``, mixed update ``i`` carries update ``i``'s claimed count.

    Raises:
        ConfigError: if a parameter is out of range.

    Example:
        >>> result = MultiKrum(f=2, m=5)(stack, sample_counts)  # doctest: +SKIP
    """

    name: ClassVar[str] = "multikrum"
    robust: ClassVar[bool] = True

    f: int = 1
    m: int | None = None
    weighted: bool = False
    max_samples: int | None = None
    max_weight_fraction: float | None = None
    nnm_f: int | None = None

    def __post_init__(self) -> None:
        _check_f(self.f)
        _check_m(self.m)
        check_nnm_f(self.nnm_f)
        require_bool("weighted", self.weighted)
        check_weight_caps(self.max_samples, self.max_weight_fraction)

    @property
    def min_updates(self) -> int:
        """The fewest updates this rule aggregates: ``2f + 3``, ``m + f`` with ``m`` set,
        ``2 nnm_f + 1`` with mixing."""
        return max(2 * self.f + 3, (self.m or 0) + self.f, nnm_min_updates(self.nnm_f))

    def __call__(self, updates: Float32Matrix, weights: Float64Vector) -> Float32Vector:
        """Aggregate with :func:`multikrum`, after mixing if ``nnm_f`` is set."""
        return multikrum(
            nnm_premix(updates, weights, self.nnm_f),
            weights,
            f=self.f,
            m=self.m,
            weighted=self.weighted,
            max_samples=self.max_samples,
            max_weight_fraction=self.max_weight_fraction,
        )
