"""Krum and Multi-Krum: hand-computed scores, selection, requirements, properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hierfl.aggregation.krum import Krum, MultiKrum, krum, krum_scores, multikrum
from hierfl.errors import AggregationError, ConfigError

# Points on a line at 0, 1, 2, 100, 101 (second coordinate 0), f = 1: each score sums the
# n - f - 2 = 2 smallest squared distances to the others.
LINE = np.array([[0, 0], [1, 0], [2, 0], [100, 0], [101, 0]], dtype=np.float32)
LINE_SCORES = [1 + 4, 1 + 1, 1 + 4, 1 + 98**2, 1 + 99**2]


def test_krum_scores_hand_computed() -> None:
    np.testing.assert_allclose(krum_scores(LINE, f=1), LINE_SCORES)


def test_krum_selects_lowest_score() -> None:
    result = krum(LINE, np.ones(5), f=1)
    np.testing.assert_array_equal(result, [1.0, 0.0])
    assert result.dtype == np.float32


def test_multikrum_hand_computed() -> None:
    # m = 3 selects 1, then 0 and 2 (tied at 5): mean 1.
    np.testing.assert_allclose(multikrum(LINE, np.ones(5), f=1, m=3), [1.0, 0.0])
    # Default m = n - f = 4 adds 100: (0 + 1 + 2 + 100) / 4.
    np.testing.assert_allclose(multikrum(LINE, np.ones(5), f=1), [25.75, 0.0])


def test_multikrum_weighted_uses_capped_counts_of_selection() -> None:
    weights = np.array([1.0, 1.0, 2.0, 1e9, 1e9])  # the far points claim a lot; not selected
    result = multikrum(LINE, weights, f=1, m=3, weighted=True)
    np.testing.assert_allclose(result, [(0 + 1 + 2 * 2) / 4, 0.0])
    capped = multikrum(LINE, weights, f=1, m=3, weighted=True, max_weight_fraction=0.4)
    # Shares 0.25, 0.25, 0.5 -> cap 0.4: 0.3, 0.3, 0.4.
    np.testing.assert_allclose(capped, [0.3 * 0 + 0.3 * 1 + 0.4 * 2, 0.0], rtol=1e-6)


def test_krum_float64_distances_resolve_close_updates() -> None:
    # Updates with a large common offset and tiny differences: float32 Gram products would
    # lose the differences entirely.
    base = np.full((1, 2000), 1000.0, dtype=np.float32)
    offsets = np.array([0.0, 1.0, 2.0, 30.0, 31.0])[:, None] * np.float32(2**-6)
    updates = (base + offsets).astype(np.float32)
    scores = krum_scores(updates, f=1)
    expected = np.array([*LINE_SCORES[:3], 1 + 28**2, 1 + 29**2], dtype=np.float64)
    np.testing.assert_allclose(scores, expected * 2000 * 2.0**-12, rtol=1e-6)
    np.testing.assert_array_equal(krum(updates, np.ones(5), f=1), updates[1])


@pytest.mark.parametrize(("n", "f"), [(4, 1), (6, 2), (2, 0), (1, 0)])
def test_krum_requires_2f_plus_3(n: int, f: int) -> None:
    updates = np.ones((n, 3), np.float32)
    with pytest.raises(AggregationError, match=rf"n >= 2f \+ 3.*n={n} with f={f}"):
        krum(updates, np.ones(n), f=f)
    with pytest.raises(AggregationError, match=r"n >= 2f \+ 3"):
        multikrum(updates, np.ones(n), f=f)


def test_multikrum_m_too_large() -> None:
    with pytest.raises(AggregationError, match="m=5 exceeds n - f = 4"):
        multikrum(LINE, np.ones(5), f=1, m=5)


def test_krum_never_selects_non_finite_update() -> None:
    updates = np.vstack([LINE, [[np.nan, 0.0]], [[np.inf, 1.0]]]).astype(np.float32)
    scores = krum_scores(updates, f=2)
    assert np.isinf(scores[5:]).all()
    # Each score sums n - f - 2 = 3 squared distances; the finite row 2 (4 + 1 + 98**2) wins.
    np.testing.assert_allclose(
        scores[:5],
        [1 + 4 + 100**2, 1 + 1 + 99**2, 4 + 1 + 98**2, 1 + 98**2 + 99**2, 1 + 99**2 + 100**2],
    )
    np.testing.assert_array_equal(krum(updates, np.ones(7), f=2), [2.0, 0.0])
    np.testing.assert_allclose(multikrum(updates, np.ones(7), f=2, m=3), [1.0, 0.0])


@pytest.mark.parametrize("kwargs", [{"f": -1}, {"f": 0.5}, {"m": 0}, {"max_samples": 0}])
def test_multikrum_bad_params(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        MultiKrum(**kwargs)  # type: ignore[arg-type]


def test_krum_bad_f() -> None:
    with pytest.raises(ConfigError, match="f must be"):
        Krum(f=-2)
    with pytest.raises(ConfigError, match="f must be"):
        krum(LINE, np.ones(5), f=-2)


SMALL_INTS = st.integers(-4, 4).map(float)  # exact arithmetic, so ties are frequent and exact


@settings(max_examples=50, deadline=None)
@given(
    updates=hnp.arrays(
        np.float32,
        st.tuples(st.integers(5, 9), st.integers(1, 4)),
        elements=st.one_of(SMALL_INTS, st.floats(-100, 100, width=32)),
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_krum_and_multikrum_are_order_invariant(updates: np.ndarray, seed: int) -> None:
    n = updates.shape[0]
    shuffled = updates[np.random.default_rng(seed).permutation(n)]
    f = (n - 3) // 2
    np.testing.assert_array_equal(krum(shuffled, np.ones(n), f=f), krum(updates, np.ones(n), f=f))
    np.testing.assert_allclose(
        multikrum(shuffled, np.ones(n), f=f, m=2),
        multikrum(updates, np.ones(n), f=f, m=2),
        rtol=1e-6,
        atol=1e-5,
    )


@settings(max_examples=40, deadline=None)
@given(row=hnp.arrays(np.float32, st.integers(1, 6), elements=st.floats(-1e3, 1e3, width=32)))
def test_krum_of_identical_rows_is_the_row(row: np.ndarray) -> None:
    updates = np.tile(row, (5, 1))
    np.testing.assert_array_equal(krum(updates, np.ones(5), f=1), row)


def test_rows_that_differ_below_the_projections_precision_are_still_ordered_by_content() -> None:
    """Found by the property above: [1e-45, 1] and [0, 1] project onto the same float64 and
    their squared distance underflows, so they tie; the tie is broken by the rows' bytes, in
    every order of arrival."""
    tiny = np.float32(1e-45)
    updates = np.array([[tiny, 1], [0, 0], [0, 0], [0, 1], [0, 1]], dtype=np.float32)
    picked = {krum(updates[list(p)], np.ones(5), f=1).tobytes()
              for p in itertools.permutations(range(5))}
    assert len(picked) == 1
