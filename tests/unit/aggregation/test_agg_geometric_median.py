"""Geometric median (RFA) and norm-bounded averaging: hand-computed cases and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hierfl.aggregation.geometric_median import GeometricMedian, geometric_median
from hierfl.aggregation.norm_bounded import NormBounded, clip_factors, norm_bounded
from hierfl.errors import AggregationError, ConfigError


def test_geometric_median_square_is_centre() -> None:
    updates = np.array([[0, 0], [2, 0], [0, 2], [2, 2]], dtype=np.float32)
    np.testing.assert_allclose(geometric_median(updates, np.ones(4)), [1.0, 1.0], atol=1e-6)


def test_geometric_median_on_a_line_is_the_median() -> None:
    # In 1-D the geometric median is the ordinary median: 1, not the mean 11/3.
    updates = np.array([[0.0], [1.0], [10.0]], dtype=np.float32)
    np.testing.assert_allclose(geometric_median(updates, np.ones(3), tol=0.0), [1.0], atol=1e-4)


def test_geometric_median_fermat_point() -> None:
    # Triangle with all angles < 120 degrees: the Fermat point of an equilateral triangle is
    # its centroid.
    h = np.sqrt(3.0)
    updates = np.array([[0, 0], [2, 0], [1, h]], dtype=np.float32)
    expected = [1.0, h / 3]
    np.testing.assert_allclose(geometric_median(updates, np.ones(3)), expected, atol=1e-5)


def test_geometric_median_ignores_weights_and_non_finite_rows() -> None:
    updates = np.array([[0, 0], [2, 0], [0, 2], [2, 2], [np.nan, 1]], dtype=np.float32)
    result = geometric_median(updates, np.array([1, 1, 1, 1e9, 1]))
    np.testing.assert_allclose(result, [1.0, 1.0], atol=1e-6)


def test_geometric_median_all_non_finite_raises() -> None:
    with pytest.raises(AggregationError, match="every update holds NaN/Inf"):
        geometric_median(np.full((3, 2), np.nan, np.float32), np.ones(3))


@settings(max_examples=40, deadline=None)
@given(
    row=hnp.arrays(np.float32, st.integers(1, 6), elements=st.floats(-1e3, 1e3, width=32)),
    n=st.integers(1, 7),
)
def test_geometric_median_of_identical_rows_is_the_row(row: np.ndarray, n: int) -> None:
    result = geometric_median(np.tile(row, (n, 1)), np.ones(n))
    np.testing.assert_allclose(result, row, rtol=1e-6, atol=1e-4)


def test_geometric_median_one_iteration_moves_from_mean_towards_median() -> None:
    updates = np.array([[0.0], [1.0], [10.0]], dtype=np.float32)
    one = geometric_median(updates, np.ones(3), max_iter=1)
    assert 1.0 < one[0] < 11.0 / 3.0


@pytest.mark.parametrize("kwargs", [{"max_iter": 0}, {"eps": -1.0}, {"tol": -1e-3}])
def test_geometric_median_bad_params(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        GeometricMedian(**kwargs)  # type: ignore[arg-type]


def test_norm_bounded_adaptive_hand_computed() -> None:
    updates = np.array([[3, 4], [0, 1], [0, 2]], dtype=np.float32)
    # Norms 5, 1, 2 -> median 2 -> [3, 4] is scaled to [1.2, 1.6]; mean of the clipped rows.
    result = norm_bounded(updates, np.ones(3))
    np.testing.assert_allclose(result, [1.2 / 3, (1.6 + 1 + 2) / 3], rtol=1e-6)


def test_norm_bounded_fixed_hand_computed() -> None:
    updates = np.array([[3, 4], [0, 1], [0, 2]], dtype=np.float32)
    result = norm_bounded(updates, np.ones(3), max_norm=1.0)
    np.testing.assert_allclose(result, [0.6 / 3, (0.8 + 1 + 1) / 3], rtol=1e-6)


def test_norm_bounded_weighted() -> None:
    updates = np.array([[3, 4], [0, 1], [0, 2]], dtype=np.float32)
    weights = np.array([2.0, 1.0, 1.0])
    result = norm_bounded(updates, weights, max_norm=1.0, weighted=True)
    np.testing.assert_allclose(result, [0.6 / 2, 0.8 / 2 + 1 / 4 + 1 / 4], rtol=1e-6)


def test_norm_bounded_clips_non_finite_to_zero() -> None:
    updates = np.array([[3, 4], [0, 1], [np.nan, 2], [0, 2]], dtype=np.float32)
    # Finite norms 5, 1, 2 -> tau 2; the NaN row counts as a zero update.
    result = norm_bounded(updates, np.ones(4))
    np.testing.assert_allclose(result, [1.2 / 4, (1.6 + 1 + 2) / 4], rtol=1e-6)


def test_clip_factors() -> None:
    factors, tau = clip_factors(np.array([5.0, 1.0, 2.0, np.inf, 0.0]), multiplier=2.0)
    # Median of the finite norms (5, 1, 2, 0) is 1.5, so tau = 3; the Inf row gets factor 0.
    assert tau == pytest.approx(3.0)
    np.testing.assert_allclose(factors, [3.0 / 5.0, 1.0, 1.0, 0.0, 1.0])


@pytest.mark.parametrize(
    "kwargs", [{"multiplier": -1.0}, {"max_norm": 0.0}, {"weighted": "yes"}, {"max_samples": -3}]
)
def test_norm_bounded_bad_params(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        NormBounded(**kwargs)  # type: ignore[arg-type]
