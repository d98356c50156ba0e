"""Breakdown and weighting-attack tests: robust rules hold, plain FedAvg does not.

Setting: 16 honest updates ``h_i`` around a common direction plus ``q = 4`` Byzantine ones
(n = 20, 20 % Byzantine), below every robust rule's breakdown point as configured here. Each
rule is held to the bound its module docstring states.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from hierfl.aggregation.base import make_aggregator
from hierfl.aggregation.fedavg import fedavg
from hierfl.aggregation.median import median
from hierfl.aggregation.trimmed_mean import trimmed_mean

N_HONEST, Q, D = 16, 4, 40
ALPHA = Q / (N_HONEST + Q)

ROBUST: dict[str, dict[str, Any]] = {
    "median": {},
    "trimmed_mean": {"trim_ratio": 0.2},  # k = 4 per tail
    "krum": {"f": Q},
    "multikrum": {"f": Q},  # m = n - f = 16
    "geometric_median": {},
    "norm_bounded": {},
}


def _honest(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    direction = 0.1 * rng.standard_normal(D)
    return (direction + 0.05 * rng.standard_normal((N_HONEST, D))).astype(np.float32)


ATTACKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "huge_positive": lambda h: np.full((Q, D), 1e6, dtype=np.float32),
    "huge_negative": lambda h: np.full((Q, D), -1e9, dtype=np.float32),
    "sign_flip_x100": lambda h: np.tile(-100.0 * h.mean(axis=0), (Q, 1)).astype(np.float32),
    "scattered": lambda h: (1e4 * np.random.default_rng(9).standard_normal((Q, D))).astype(
        np.float32
    ),
}


def _attacked(attack: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    honest = _honest(seed)
    updates = np.vstack([honest, ATTACKS[attack](honest)])
    weights = np.random.default_rng(seed + 1).integers(50, 150, N_HONEST + Q).astype(np.float64)
    return honest, updates, weights


def _spread(honest: np.ndarray) -> float:
    return float(np.linalg.norm(honest - honest.mean(axis=0), axis=1).max())


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_fedavg_breaks(attack: str) -> None:
    honest, updates, weights = _attacked(attack)

    result = fedavg(updates, weights)

    assert np.linalg.norm(result - honest.mean(axis=0)) > 10 * _spread(honest)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
def test_coordinatewise_rules_stay_in_honest_range(name: str, attack: str) -> None:
    honest, updates, weights = _attacked(attack)

    result = make_aggregator(name, ROBUST[name])(updates, weights)

    assert (result >= honest.min(axis=0)).all()
    assert (result <= honest.max(axis=0)).all()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_krum_selects_an_honest_update(attack: str) -> None:
    honest, updates, weights = _attacked(attack)

    result = make_aggregator("krum", ROBUST["krum"])(updates, weights)

    assert any(np.array_equal(result, h) for h in honest)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_multikrum_selects_exactly_the_honest_updates(attack: str) -> None:
    honest, updates, weights = _attacked(attack)

    result = make_aggregator("multikrum", ROBUST["multikrum"])(updates, weights)

    np.testing.assert_allclose(result, honest.mean(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_geometric_median_within_stability_bound(attack: str) -> None:
    honest, updates, weights = _attacked(attack)
    bound = 2 * (1 - ALPHA) / (1 - 2 * ALPHA) * _spread(honest)

    result = make_aggregator("geometric_median")(updates, weights)

    assert np.linalg.norm(result - honest.mean(axis=0)) <= bound


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_norm_bounded_influence_is_bounded(attack: str) -> None:
    honest, updates, weights = _attacked(attack)
    max_honest_norm = float(np.linalg.norm(honest, axis=1).max())

    result = make_aggregator("norm_bounded")(updates, weights)

    # ||result|| <= tau <= max honest norm, so the distance is at most twice that.
    assert np.linalg.norm(result) <= max_honest_norm * (1 + 1e-6)
    assert np.linalg.norm(result - honest.mean(axis=0)) <= 2 * max_honest_norm


def test_median_breaks_at_half() -> None:
    # The bounds above are not vacuous: at q = n / 2 the median leaves the honest range.
    honest = _honest()
    updates = np.vstack([honest, np.full((N_HONEST, D), 1e6, dtype=np.float32)])
    result = median(updates, np.ones(2 * N_HONEST))
    assert (result > honest.max(axis=0)).all()


def test_trimmed_mean_breaks_beyond_trim_count() -> None:
    honest, updates, _ = _attacked("huge_positive")
    result = trimmed_mean(updates, np.ones(N_HONEST + Q), trim_ratio=0.15)  # k = 3 < q = 4
    assert (result > honest.max(axis=0)).all()


# --- weighting attack: one update claims 1e9 samples -------------------------------------


def _weighting_attack() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    honest = _honest(seed=5)
    attacker = np.full((1, D), 3.0, dtype=np.float32)
    updates = np.vstack([honest, attacker])
    claims = np.full(N_HONEST + 1, 100.0)
    inflated = claims.copy()
    inflated[-1] = 1e9
    return updates, claims, inflated


@pytest.mark.parametrize("name", sorted(ROBUST))
def test_robust_rules_ignore_inflated_claims(name: str) -> None:
    updates, claims, inflated = _weighting_attack()
    aggregator = make_aggregator(name, ROBUST[name] | ({"f": 1} if "krum" in name else {}))

    np.testing.assert_array_equal(aggregator(updates, inflated), aggregator(updates, claims))


def test_weighted_norm_bounded_is_dominated_without_cap_and_not_with_it() -> None:
    # Honest rows all equal h (norm 1); the attacker sends -100 h, clipped to -h (tau = 1).
    h = np.zeros(D, dtype=np.float32)
    h[0] = 1.0
    updates = np.vstack([np.tile(h, (N_HONEST, 1)), -100 * h[None, :]]).astype(np.float32)
    weights = np.array([100.0] * N_HONEST + [1e9])

    def attacker_share(**params: object) -> float:
        result = make_aggregator("norm_bounded", {"weighted": True, **params})(updates, weights)
        return float((1.0 - result[0]) / 2.0)  # result = (1 - 2 p) h

    assert attacker_share() > 0.99
    assert attacker_share(max_weight_fraction=0.1) == pytest.approx(0.1, rel=1e-5)
    assert attacker_share(max_samples=100) == pytest.approx(1 / (N_HONEST + 1), rel=1e-5)


def test_weighted_multikrum_never_selects_the_far_heavy_claimer() -> None:
    honest = _honest(seed=6)
    updates = np.vstack([honest, np.full((1, D), 50.0, dtype=np.float32)])
    weights = np.array([100.0] * N_HONEST + [1e9])

    result = make_aggregator("multikrum", {"f": 1, "weighted": True})(updates, weights)

    np.testing.assert_allclose(result, honest.mean(axis=0), rtol=1e-5, atol=1e-6)
