"""Nearest-neighbour mixing (NNM) before a robust rule [Allouah et al., 2023].

Paper: Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe for
Optimal Byzantine ML under Heterogeneity", AISTATS 2023, https://arxiv.org/abs/2302.01772

NNM replaces every update ``x_i`` by ``y_i``, the uniform mean of the ``n - f`` updates nearest
to ``x_i`` in L2 (``x_i`` itself included), and then runs the robust rule on ``y_1 .. y_n``.
``median``, ``trimmed_mean``, ``geometric_median``, ``krum`` and ``multikrum`` take it as the
parameter ``nnm_f`` (the ``f``; ``None``, the default, turns it off)::

    aggregator = "median"
    aggregator_params = { nnm_f = 1 }

Why. On heterogeneous (non-IID) data honest updates differ, and a Byzantine update placed at
one edge of the honest cloud biases every rule that works coordinate by coordinate or on
distances: the coordinate-wise median of 4 honest values and one value below all of them is the
second-lowest honest value, in every coordinate, every round. Allouah et al. measure a rule by
its (f, kappa)-robustness: ``||F(x) - mean(H)||^2 <= kappa * mean_{i in H} ||x_i - mean(H)||^2``
for every choice of ``f`` Byzantine inputs, where ``H`` are the honest inputs. No rule does
better than ``kappa >= f / (n - 2f)``; the median, trimmed mean, geometric median and Krum alone
have a ``kappa`` that does not shrink with ``f / n``. Their main result: if ``F`` is
(f, kappa)-robust, ``F`` after NNM is (f, kappa')-robust with ``kappa' = O(f / n) (kappa + 1)``,
which is optimal up to a constant for these rules.

Breakdown point: ``f < n / 2``. NNM needs ``n >= 2 nnm_f + 1`` updates and raises
AggregationError below (with ``n <= 2f`` the Byzantine updates may be a majority and nothing
can be guaranteed); the rule after it keeps its own condition (Krum: ``n >= 2f + 3``). The
guarantee holds for up to ``nnm_f`` Byzantine updates: set it to the number expected *per
aggregation*, e.g. 1 for a fog of 5 edges with one untrusted device.

A case worth knowing exactly. If every Byzantine update is farther from each honest update than
the honest updates are from each other (the sign flip, scale and Gaussian attacks of
:mod:`hierfl.sim.attacks` on digits-20), the ``n - f`` nearest neighbours of an honest update
are exactly the ``n - f`` honest updates, so every honest ``y_i`` *is* the honest mean. More
than half of the mixed updates are then equal, and the median, the trimmed mean with at least
``f`` trimmed per tail, the geometric median, Krum and Multi-Krum all return the honest mean:
the attack costs nothing but the attacker's own data. Attacks inside the honest spread (ALIE,
label flipping) stay bounded by the theorem.

Price. With no attacker, the ``f`` most outlying honest updates are underweighted (they are
nobody's near neighbour), much as Multi-Krum drops them; on non-IID data that slows learning
a little. Cost: one float64 Gram matrix (``O(n^2 d)``, as Krum) to find the neighbours, one
``(n, n) x (n, d)`` product, and a mixed ``(n, d)`` float32 stack as large as the input.

Weighting: mixing is uniform; claimed sample counts are not used (the rule after it decides).
Ties in distance are broken by update content, not arrival order
(:func:`~hierfl.aggregation._common.select_lowest`).

Non-finite inputs: an update holding NaN/Inf is infinitely far from every other, so no finite
update mixes it in while ``n - f`` finite updates exist; its own mixed row is NaN, which the rule
after it then out-votes or refuses, as without mixing.

Alternatives measured and not adopted (an offline replica of ``benchmarks/robust.py``:
digits-20, 4 fogs of 5 edges, one sign-flipping edge per fog, 30 rounds). Bucketing
[Karimireddy, He and Jaggi, ICLR 2022] with buckets of 2 leaves 3 bucket means of which one is
still Byzantine, and the median / geometric median of them lost as much as without it (73.6 /
77.6 % against 91.6 % for FedAvg without attack; with NNM both reach 91.6 %); it also makes the
fog's aggregate random. Centered clipping [Karimireddy, He and Jaggi, ICML 2021] needs the
previous round's aggregate, i.e. state in the rule, and a clipping radius to choose.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hierfl.aggregation._common import check_inputs, gram64, mix_rows, require_int, select_lowest
from hierfl.errors import AggregationError
from hierfl.types import Float32Matrix, Float64Vector

__all__ = [
    "check_nnm_f",
    "nearest_neighbour_mixing",
    "nnm_coefficients",
    "nnm_min_updates",
    "nnm_premix",
]


def check_nnm_f(nnm_f: int | None) -> None:
    """Raise ConfigError unless ``nnm_f`` is ``None`` (no mixing) or an int >= 1.

    Raises:
        ConfigError: if ``nnm_f`` is out of range.
    """
    if nnm_f is not None:
        require_int("nnm_f", nnm_f, minimum=1)


def nnm_min_updates(nnm_f: int | None) -> int:
    """The fewest updates mixing against ``nnm_f`` Byzantine ones accepts: ``2 nnm_f + 1``
    (1 without mixing)."""
    return 1 if nnm_f is None else 2 * nnm_f + 1


def nnm_coefficients(updates: Float32Matrix, f: int) -> npt.NDArray[np.float64]:
    """Return the (n, n) mixing matrix: row ``i`` has ``1 / (n - f)`` at the neighbours of ``i``.

    Args:
        updates: (n, d) stacked flat deltas; not modified.
        f: Byzantine updates assumed, ``1 <= f`` and ``n >= 2f + 1``.

    Returns:
        (n, n) float64 matrix whose rows sum to 1.

    Raises:
        AggregationError: if ``n < 2f + 1``.
        ConfigError: if ``f`` is not an int >= 1.
    """
    return _nnm(updates, f)[0]


def _nnm(updates: Float32Matrix, f: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """The mixing matrix and which rows hold NaN/Inf (from the Gram diagonal)."""
    check_nnm_f(f)
    n = updates.shape[0]
    if n < 2 * f + 1:
        raise AggregationError(
            f"nearest-neighbour mixing needs n >= 2f + 1 updates (an honest majority): got "
            f"n={n} with nnm_f={f}; lower nnm_f or wait for more updates"
        )
    gram = gram64(updates)
    sq = np.diag(gram)
    with np.errstate(invalid="ignore", over="ignore"):
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    d2[~np.isfinite(d2)] = np.inf
    np.fill_diagonal(d2, 0.0)  # an update is its own nearest neighbour (a NaN one too)
    keep = n - f
    coeffs = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        coeffs[i, select_lowest(d2[i], updates, keep)] = 1.0 / keep
    return coeffs, ~np.isfinite(sq)


def nearest_neighbour_mixing(updates: Float32Matrix, f: int) -> Float32Matrix:
    """Replace every update by the mean of its ``n - f`` nearest updates (itself included).

    Args:
        updates: (n, d) stacked flat deltas; not modified.
        f: Byzantine updates assumed, ``1 <= f`` and ``n >= 2f + 1``.

    Returns:
        (n, d) float32 mixed updates (a new array), row ``i`` for update ``i``; NaN rows for
        updates that hold NaN/Inf or had to mix one in.

    Raises:
        AggregationError: if ``n < 2f + 1``.
        ConfigError: if ``f`` is not an int >= 1.

    Example:
        >>> x = np.array([[0.0], [1.0], [10.0]], dtype=np.float32)
        >>> nearest_neighbour_mixing(x, 1).ravel().tolist()
        [0.5, 0.5, 5.5]
    """
    coeffs, non_finite = _nnm(updates, f)
    return mix_rows(coeffs, updates, non_finite)


def nnm_premix(updates: Float32Matrix, weights: Float64Vector, nnm_f: int | None) -> Float32Matrix:
    """Mix the updates if ``nnm_f`` is set, after checking them; else return them unchanged.

    The rules' dataclasses call this before their aggregation function (which checks its own
    inputs again: the weights must match the mixed stack's rows too).

    Args:
        updates: (n, d) stacked flat deltas; not modified.
        weights: (n,) claimed sample counts; only checked here.
        nnm_f: Byzantine updates assumed by NNM, or ``None`` for no mixing.

    Returns:
        The updates to hand to the rule.

    Raises:
        AggregationError: on malformed inputs or ``n < 2 nnm_f + 1``.
        ConfigError: if ``nnm_f`` is out of range.
    """
    if nnm_f is None:
        return updates
    check_inputs(updates, weights)
    return nearest_neighbour_mixing(updates, nnm_f)
