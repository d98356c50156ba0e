"""Nearest-neighbour mixing (NNM) before the robust rules: hand-computed cases and properties."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hierfl.aggregation.base import make_aggregator
from hierfl.aggregation.median import median
from hierfl.aggregation.mixing import nearest_neighbour_mixing, nnm_coefficients
from hierfl.errors import AggregationError, ConfigError

MIXABLE: dict[str, dict[str, Any]] = {
    "median": {},
    "trimmed_mean": {"trim_ratio": 0.2},
    "geometric_median": {},
    "krum": {"f": 1},
    "multikrum": {"f": 1},
}

# Four updates in the unit square and one far away (the hand-computed case below).
SQUARE = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [10, 10]], dtype=np.float32)


def test_mixing_hand_computed_1d() -> None:
    # Nearest 2 of 0: {0, 1}; of 1: {1, 0}; of 10: {10, 1}.
    x = np.array([[0.0], [1.0], [10.0]], dtype=np.float32)

    np.testing.assert_array_equal(nearest_neighbour_mixing(x, 1).ravel(), [0.5, 0.5, 5.5])
    np.testing.assert_array_equal(make_aggregator("median", {"nnm_f": 1})(x, np.ones(3)), [0.5])
    np.testing.assert_array_equal(median(x, np.ones(3)), [1.0])  # without mixing


def test_mixing_hand_computed_square() -> None:
    # Each corner's 4 nearest are the 4 corners: mean (0.5, 0.5). (10, 10)'s are itself,
    # (1, 1) at 162, (1, 0) and (0, 1) at 181: mean (12, 12) / 4 = (3, 3).
    mixed = nearest_neighbour_mixing(SQUARE, 1)

    np.testing.assert_array_equal(mixed, [[0.5, 0.5]] * 4 + [[3.0, 3.0]])
    coeffs = nnm_coefficients(SQUARE, 1)
    np.testing.assert_array_equal(coeffs.sum(axis=1), np.ones(5))
    np.testing.assert_array_equal(coeffs[4], [0, 0.25, 0.25, 0.25, 0.25])


@pytest.mark.parametrize("name", sorted(MIXABLE))
def test_every_mixable_rule_returns_the_corner_mean(name: str) -> None:
    # 4 of the 5 mixed updates are (0.5, 0.5): every rule returns it. Without mixing the
    # trimmed mean (k = 1) is (2/3, 2/3) and the median (1, 1).
    aggregator = make_aggregator(name, MIXABLE[name] | {"nnm_f": 1})

    np.testing.assert_allclose(aggregator(SQUARE, np.ones(5)), [0.5, 0.5], atol=1e-6)


def test_without_mixing_the_square_is_biased() -> None:
    np.testing.assert_allclose(
        make_aggregator("trimmed_mean", {"trim_ratio": 0.2})(SQUARE, np.ones(5)), [2 / 3, 2 / 3]
    )
    np.testing.assert_array_equal(median(SQUARE, np.ones(5)), [1.0, 1.0])


# --- heterogeneous honest updates and a sign-flipping attacker (the benchmark's setting) ------


def _non_iid_round(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """4 honest updates with a spread as large as their mean, and one sending -4x its own."""
    rng = np.random.default_rng(seed)
    d = 200
    common = rng.standard_normal(d)
    honest = (common + rng.standard_normal((4, d))).astype(np.float32)
    attacker = (-4.0 * honest[0] + 0.1 * rng.standard_normal(d)).astype(np.float32)
    return honest, np.vstack([honest, attacker])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("name", ["median", "trimmed_mean", "geometric_median"])
def test_mixing_removes_the_sign_flip_bias(name: str, seed: int) -> None:
    honest, updates = _non_iid_round(seed)
    target = honest.mean(axis=0)
    plain = make_aggregator(name, MIXABLE[name])
    mixed = make_aggregator(name, MIXABLE[name] | {"nnm_f": 1})

    plain_error = np.linalg.norm(plain(updates, np.ones(5)) - target)
    mixed_error = np.linalg.norm(mixed(updates, np.ones(5)) - target)

    # The attacker is farther from every honest update than they are from each other, so every
    # honest mixed update is the honest mean, and so is the rule's result.
    assert mixed_error <= 1e-4 * np.linalg.norm(target)
    assert plain_error > 0.2 * np.linalg.norm(target)


# --- breakdown -------------------------------------------------------------------------------


def _far_attack(n_honest: int, q: int, value: float, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    honest = (0.1 * rng.standard_normal(30) + 0.05 * rng.standard_normal((n_honest, 30))).astype(
        np.float32
    )
    return honest, np.vstack([honest, np.full((q, 30), value, dtype=np.float32)])


@pytest.mark.parametrize("value", [1e6, -1e9])
@pytest.mark.parametrize("name", sorted(MIXABLE))
def test_up_to_nnm_f_far_attackers_change_nothing(name: str, value: float) -> None:
    # 16 honest + 4 Byzantine (20 %), nnm_f = 4: the result is the honest mean.
    honest, updates = _far_attack(16, 4, value)
    params = MIXABLE[name] | {"nnm_f": 4} | ({"f": 4} if "krum" in name else {})

    result = make_aggregator(name, params)(updates, np.ones(20))

    np.testing.assert_allclose(result, honest.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_more_attackers_than_nnm_f_break_the_median() -> None:
    # 2 colluding attackers with nnm_f = 1: each honest update mixes one of them in, and the
    # median of the mixed updates leaves the honest range, where the plain median (2 < 5 / 2)
    # stays inside it. Set nnm_f to the number of Byzantine updates expected, not fewer.
    honest, updates = _far_attack(3, 2, 1e6)

    mixed = make_aggregator("median", {"nnm_f": 1})(updates, np.ones(5))
    plain = median(updates, np.ones(5))

    assert (mixed > honest.max(axis=0)).all()
    assert (plain <= honest.max(axis=0)).all()
    np.testing.assert_allclose(
        make_aggregator("median", {"nnm_f": 2})(updates, np.ones(5)),
        honest.mean(axis=0),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("n", [1, 2])
def test_mixing_needs_an_honest_majority(n: int) -> None:
    with pytest.raises(AggregationError, match=r"n >= 2f \+ 1"):
        make_aggregator("median", {"nnm_f": 1})(np.ones((n, 3), np.float32), np.ones(n))


# --- contract --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1"])
@pytest.mark.parametrize("name", sorted(MIXABLE))
def test_bad_nnm_f_is_a_config_error(name: str, bad: object) -> None:
    with pytest.raises(ConfigError, match="nnm_f"):
        make_aggregator(name, {"nnm_f": bad})


@pytest.mark.parametrize("name", sorted(MIXABLE))
def test_mixing_runs_the_input_checks_first(name: str) -> None:
    with pytest.raises(AggregationError, match=">= 0"):
        make_aggregator(name, {"nnm_f": 1})(
            np.ones((5, 3), np.float32), np.array([1.0, 1, 1, 1, -1])
        )


@pytest.mark.parametrize("name", sorted(MIXABLE))
def test_mixing_does_not_mutate_inputs(name: str) -> None:
    updates = np.random.default_rng(3).standard_normal((9, 13)).astype(np.float32)
    before = updates.copy()
    updates.flags.writeable = False

    make_aggregator(name, MIXABLE[name] | {"nnm_f": 2})(updates, np.ones(9))

    np.testing.assert_array_equal(updates, before)


def test_non_finite_update_taints_only_its_own_mixed_row() -> None:
    updates = SQUARE.copy()
    updates[4, 0] = np.nan

    mixed = nearest_neighbour_mixing(updates, 1)

    assert np.isnan(mixed[4]).all()
    np.testing.assert_array_equal(mixed[:4], [[0.5, 0.5]] * 4)
    np.testing.assert_array_equal(
        make_aggregator("median", {"nnm_f": 1})(updates, np.ones(5)), [0.5, 0.5]
    )


def test_tied_neighbours_do_not_depend_on_order() -> None:
    # (0, 1) and (1, 0) are both at distance 1 from (0, 0), which keeps only one of them.
    x = np.array([[0, 0], [1, 0], [0, 1], [5, 5], [-5, 5]], dtype=np.float32)
    perm = np.array([4, 2, 0, 3, 1])

    np.testing.assert_allclose(
        nearest_neighbour_mixing(x[perm], 2), nearest_neighbour_mixing(x, 2)[perm], rtol=1e-6
    )


FINITE = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.tuples(st.integers(3, 9), st.integers(1, 6)), elements=FINITE),
    data=st.data(),
)
def test_mixed_updates_stay_in_the_coordinate_range(x: np.ndarray, data: st.DataObject) -> None:
    f = data.draw(st.integers(1, (x.shape[0] - 1) // 2))
    perm = np.array(data.draw(st.permutations(range(x.shape[0]))))

    mixed = nearest_neighbour_mixing(x, f)

    slack = 1e-5 * (1 + np.abs(x).max())
    assert (mixed >= x.min(axis=0) - slack).all()
    assert (mixed <= x.max(axis=0) + slack).all()
    # Equivariant: permuting the updates permutes their mixed rows.
    np.testing.assert_allclose(nearest_neighbour_mixing(x[perm], f), mixed[perm], atol=slack)
