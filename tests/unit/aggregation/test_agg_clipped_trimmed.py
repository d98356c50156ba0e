"""The fog's default rule: robust in regions of 3+, bounded and never skipping in 1-2."""

from __future__ import annotations

import numpy as np
import pytest

from hierfl.aggregation import ClippedTrimmedMean, make_aggregator
from hierfl.aggregation.clipped_trimmed import clipped_trimmed_mean
from hierfl.config import FogSettings
from hierfl.errors import ConfigError


def honest(n: int, d: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (1.0 + 0.1 * rng.normal(size=(n, d))).astype(np.float32)


def test_it_is_the_fog_default() -> None:
    s = FogSettings.load(fog_id="g")
    assert s.aggregator == "clipped_trimmed_mean"
    assert isinstance(make_aggregator(s.aggregator, s.aggregator_params), ClippedTrimmedMean)
    assert s.max_samples == 100_000


@pytest.mark.parametrize("n_honest", [2, 3, 4, 9])
@pytest.mark.parametrize("attack", [-1.0, -4.0, 100.0, "gauss"])
def test_one_byzantine_update_is_out_voted_from_three_updates(n_honest, attack) -> None:
    h = honest(n_honest)
    bad = (np.random.default_rng(9).normal(scale=50, size=(1, h.shape[1]))
           if attack == "gauss" else attack * h[:1]).astype(np.float32)
    got = clipped_trimmed_mean(np.concatenate([h, bad]), np.ones(n_honest + 1))
    # stays near the honest mean (1.0 per coordinate)
    assert abs(float(got.mean()) - 1.0) < 0.15


def test_sample_count_claims_buy_nothing() -> None:
    h = honest(4)
    x = np.concatenate([h, 100 * h[:1]])
    a = clipped_trimmed_mean(x, np.array([10, 10, 10, 10, 1e6]))
    b = clipped_trimmed_mean(x, np.ones(5))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", [1, 2])
def test_small_regions_close_their_round_with_bounded_damage(n) -> None:
    h = honest(n)
    assert clipped_trimmed_mean(h, np.ones(n)).shape == (h.shape[1],)
    if n == 2:
        # one of two is Byzantine (x100): clipped to 3 x the smallest norm, so the step is
        # bounded by the honest update's size, not the attacker's
        x = np.stack([h[0], -100 * h[1]])
        got = clipped_trimmed_mean(x, np.ones(2))
        assert np.linalg.norm(got) <= 2.0 * np.linalg.norm(h[0])


def test_a_scaled_update_is_clipped_even_when_not_trimmed() -> None:
    h = honest(5)
    x = np.concatenate([h, 1000 * h[:1]])
    got = clipped_trimmed_mean(x, np.ones(6), trim_ratio=0.0)
    assert abs(float(got.mean()) - 1.0) < 0.15


@pytest.mark.parametrize("params", [{"f": 0}, {"trim_ratio": 0.6}, {"clip_multiplier": 0},
                                    {"clip_multiplier": -1.0}])
def test_bad_parameters_are_config_errors(params) -> None:
    with pytest.raises(ConfigError):
        make_aggregator("clipped_trimmed_mean", params)
