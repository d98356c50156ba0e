"""Coordinate-wise median and trimmed mean: hand-computed cases and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hierfl.aggregation.median import median
from hierfl.aggregation.trimmed_mean import TrimmedMean, trimmed_count, trimmed_mean
from hierfl.errors import AggregationError, ConfigError

FINITE = st.floats(-1e6, 1e6, allow_nan=False, width=32)


def _matrix(max_n: int = 9, max_d: int = 6) -> st.SearchStrategy[np.ndarray]:
    shapes = st.tuples(st.integers(1, max_n), st.integers(1, max_d))
    return hnp.arrays(np.float32, shapes, elements=FINITE)


def test_median_odd_hand_computed() -> None:
    updates = np.array([[1, 10], [2, -5], [100, 0]], dtype=np.float32)
    np.testing.assert_array_equal(median(updates, np.ones(3)), [2.0, 0.0])


def test_median_even_is_mean_of_middle_pair() -> None:
    updates = np.array([[1, -1], [2, 4], [3, 5], [10, 100]], dtype=np.float32)
    np.testing.assert_array_equal(median(updates, np.ones(4)), [2.5, 4.5])


def test_median_single_update_is_itself() -> None:
    row = np.array([[1.5, -2.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(median(row, np.ones(1)), row[0])


def test_median_matches_numpy_on_many_blocks() -> None:
    # d spans several work blocks (block size depends on n), including a ragged last block.
    rng = np.random.default_rng(0)
    updates = rng.standard_normal((6, 300_001)).astype(np.float32)
    np.testing.assert_array_equal(median(updates, np.ones(6)), np.median(updates, axis=0))


def test_median_outvotes_nan_minority() -> None:
    updates = np.array([[1.0], [2.0], [np.nan], [3.0], [4.0]], dtype=np.float32)
    np.testing.assert_array_equal(median(updates, np.ones(5)), [3.0])


def test_median_nan_majority_raises() -> None:
    updates = np.array([[1.0], [np.nan], [np.nan]], dtype=np.float32)
    with pytest.raises(AggregationError, match="non-finite"):
        median(updates, np.ones(3))


@settings(max_examples=60, deadline=None)
@given(row=hnp.arrays(np.float32, st.integers(1, 8), elements=FINITE), n=st.integers(1, 9))
def test_median_of_identical_rows_is_the_row(row: np.ndarray, n: int) -> None:
    updates = np.tile(row, (n, 1))
    np.testing.assert_array_equal(median(updates, np.ones(n)), row)


@settings(max_examples=60, deadline=None)
@given(updates=_matrix(), seed=st.integers(0, 2**32 - 1))
def test_median_and_trimmed_mean_are_order_invariant(updates: np.ndarray, seed: int) -> None:
    n = updates.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = updates[perm]
    np.testing.assert_array_equal(median(shuffled, np.ones(n)), median(updates, np.ones(n)))
    # the kept values are the same; only float32 summation order may differ (an ulp or so)
    np.testing.assert_allclose(
        trimmed_mean(shuffled, np.ones(n), trim_ratio=0.2),
        trimmed_mean(updates, np.ones(n), trim_ratio=0.2),
        rtol=1e-6, atol=1e-6 * float(np.abs(updates).max(initial=0.0)),
    )


@settings(max_examples=60, deadline=None)
@given(updates=_matrix(), ratio=st.floats(0.0, 0.49))
def test_trimmed_mean_lies_between_min_and_max(updates: np.ndarray, ratio: float) -> None:
    result = trimmed_mean(updates, np.ones(updates.shape[0]), trim_ratio=ratio)
    assert (result >= updates.min(axis=0)).all()
    assert (result <= updates.max(axis=0)).all()


def test_trimmed_mean_hand_computed() -> None:
    updates = np.array([[1, 5], [2, 4], [3, 3], [4, 2], [100, -100]], dtype=np.float32)
    # k = floor(0.2 * 5) = 1 per tail: mean(2, 3, 4) = 3; mean(2, 3, 4) = 3.
    np.testing.assert_array_equal(trimmed_mean(updates, np.ones(5), trim_ratio=0.2), [3.0, 3.0])


def test_trimmed_mean_zero_ratio_is_mean() -> None:
    updates = np.array([[1.0, 2.0], [2.0, 4.0], [6.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(trimmed_mean(updates, np.ones(3), trim_ratio=0.0), [3.0, 2.0])


def test_trimmed_mean_ignores_weights() -> None:
    updates = np.array([[1.0], [2.0], [3.0], [4.0], [100.0]], dtype=np.float32)
    light = trimmed_mean(updates, np.ones(5), trim_ratio=0.2)
    heavy = trimmed_mean(updates, np.array([1, 1, 1, 1, 1e9]), trim_ratio=0.2)
    np.testing.assert_array_equal(light, heavy)


@pytest.mark.parametrize(
    ("n", "ratio", "k"), [(10, 0.1, 1), (10, 0.29, 2), (100, 0.29, 29), (3, 0.49, 1), (1, 0.4, 0)]
)
def test_trimmed_count_is_floor(n: int, ratio: float, k: int) -> None:
    assert trimmed_count(n, ratio) == k


@pytest.mark.parametrize("ratio", [-0.01, 0.5, 0.7, float("nan")])
def test_trimmed_mean_bad_ratio(ratio: float) -> None:
    with pytest.raises(ConfigError, match="trim_ratio"):
        TrimmedMean(trim_ratio=ratio)
    with pytest.raises(ConfigError, match="trim_ratio"):
        trimmed_mean(np.ones((3, 2), np.float32), np.ones(3), trim_ratio=ratio)


def test_trimmed_mean_trims_nan_rows() -> None:
    updates = np.array([[np.nan], [1.0], [2.0], [3.0], [-np.inf]], dtype=np.float32)
    np.testing.assert_array_equal(trimmed_mean(updates, np.ones(5), trim_ratio=0.2), [2.0])
    with pytest.raises(AggregationError, match="non-finite"):
        trimmed_mean(updates, np.ones(5), trim_ratio=0.0)
