"""FedAvg and the weight caps shared with the weighted robust rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfl.aggregation.fedavg import FedAvg, capped_weights, fedavg
from hierfl.errors import AggregationError, ConfigError


def test_fedavg_hand_computed() -> None:
    updates = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)
    weights = np.array([1.0, 1.0, 2.0])

    result = fedavg(updates, weights)

    # (1 + 3 + 2*5) / 4, (2 + 4 + 2*6) / 4
    np.testing.assert_array_equal(result, np.array([3.5, 4.5], dtype=np.float32))
    assert result.dtype == np.float32


def test_fedavg_accumulates_in_float64() -> None:
    # 1e8 + 1 - 1e8 is 0 in float32 arithmetic, 1 in float64.
    updates = np.array([[1e8], [1.0], [-1e8]], dtype=np.float32)
    result = fedavg(updates, np.ones(3))
    np.testing.assert_allclose(result, [1.0 / 3.0], rtol=1e-6)


def test_zero_weight_rows_are_ignored_even_if_nan() -> None:
    updates = np.array([[1.0, 1.0], [np.nan, np.inf], [3.0, 5.0]], dtype=np.float32)
    result = fedavg(updates, np.array([1.0, 0.0, 1.0]))
    np.testing.assert_array_equal(result, [2.0, 3.0])


def test_fedavg_nan_in_weighted_row_raises() -> None:
    updates = np.array([[1.0], [np.nan]], dtype=np.float32)
    with pytest.raises(AggregationError, match="non-finite"):
        fedavg(updates, np.ones(2))


def test_fedavg_zero_total_weight_raises() -> None:
    with pytest.raises(AggregationError, match="total claimed weight is 0"):
        fedavg(np.ones((2, 3), np.float32), np.zeros(2))


def test_capped_weights_no_caps_is_normalised() -> None:
    np.testing.assert_allclose(capped_weights(np.array([1.0, 3.0])), [0.25, 0.75])


def test_max_samples_clips_claims() -> None:
    shares = capped_weights(np.array([1.0, 1e9]), max_samples=10)
    np.testing.assert_allclose(shares, [1 / 11, 10 / 11])


@pytest.mark.parametrize(
    ("weights", "cap", "expected"),
    [
        # One capped: 0.8 -> 0.5, the others split 0.5 in proportion 1:1.
        ([1.0, 1.0, 8.0], 0.5, [0.25, 0.25, 0.5]),
        # Two capped: after capping 4 the 3 would get 0.35 > 0.3, so it is capped too;
        # 2 and 1 share 0.4 as 2:1.
        ([4.0, 3.0, 2.0, 1.0], 0.3, [0.3, 0.3, 0.4 * 2 / 3, 0.4 / 3]),
        # Already within the cap: unchanged.
        ([1.0, 1.0, 1.0], 0.5, [1 / 3, 1 / 3, 1 / 3]),
        # Infeasible (2 updates cannot each hold <= 0.25): uniform over weighted updates.
        ([1.0, 100.0], 0.25, [0.5, 0.5]),
        ([0.0, 5.0, 1.0], 0.4, [0.0, 0.5, 0.5]),
        # Exactly feasible: every update at the cap.
        ([1.0, 1.0, 1.0, 9.0], 0.25, [0.25, 0.25, 0.25, 0.25]),
    ],
)
def test_max_weight_fraction_water_filling(
    weights: list[float], cap: float, expected: list[float]
) -> None:
    shares = capped_weights(np.array(weights), max_weight_fraction=cap)
    np.testing.assert_allclose(shares, expected, rtol=1e-12, atol=1e-15)


@settings(max_examples=100, deadline=None)
@given(
    weights=st.lists(st.floats(0.0, 1e9), min_size=1, max_size=12).filter(lambda w: sum(w) > 0),
    cap=st.floats(0.01, 1.0),
)
def test_capped_weights_properties(weights: list[float], cap: float) -> None:
    w = np.array(weights)
    shares = capped_weights(w, max_weight_fraction=cap)
    positive = w > 0
    k = int(positive.sum())

    assert np.isclose(shares.sum(), 1.0)
    assert (shares >= 0).all()
    assert (shares[~positive] == 0).all()
    if k * cap >= 1:
        assert shares.max() <= cap * (1 + 1e-9)
        # Order is preserved: a heavier claim never gets a smaller share.
        order = np.argsort(w)
        assert (np.diff(shares[order]) >= -1e-12).all()
    else:
        np.testing.assert_allclose(shares[positive], 1.0 / k)


def test_weighting_attack_dominates_plain_fedavg() -> None:
    honest = np.full((19, 4), 0.1, dtype=np.float32)
    attacker = np.full((1, 4), -50.0, dtype=np.float32)
    updates = np.vstack([honest, attacker])
    weights = np.array([100.0] * 19 + [1e9])

    result = fedavg(updates, weights)

    np.testing.assert_allclose(result, attacker[0], rtol=1e-4)


@pytest.mark.parametrize(
    ("params", "max_share"),
    [({"max_samples": 100}, 0.05), ({"max_weight_fraction": 0.1}, 0.1)],
)
def test_weighting_attack_is_capped(params: dict[str, float], max_share: float) -> None:
    honest = np.full((19, 4), 0.1, dtype=np.float32)
    attacker = np.full((1, 4), -50.0, dtype=np.float32)
    updates = np.vstack([honest, attacker])
    weights = np.array([100.0] * 19 + [1e9])

    result = FedAvg(**params)(updates, weights)  # type: ignore[arg-type]

    # result = (1 - p) * honest + p * attacker; recover the attacker's share p.
    share = (result - honest[0]) / (attacker[0] - honest[0])
    np.testing.assert_allclose(share, max_share, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_samples": 0},
        {"max_samples": 2.5},
        {"max_weight_fraction": -0.1},
        {"max_weight_fraction": 2},
    ],
)
def test_fedavg_bad_caps(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        FedAvg(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        fedavg(np.ones((2, 2), np.float32), np.ones(2), **kwargs)  # type: ignore[arg-type]
