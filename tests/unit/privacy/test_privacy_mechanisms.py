"""Clipping, the Gaussian noise the fog adds (its std, statistically), noise shares, the DP
wrapper's sensitivity bound and the rules it refuses, adaptive clipping."""

from __future__ import annotations

import numpy as np
import pytest

from hierfl.aggregation import make_aggregator
from hierfl.config import FogSettings
from hierfl.errors import ConfigError
from hierfl.fog.service import _fog_rule
from hierfl.privacy.mechanisms import (
    AdaptiveClip,
    clip_rows,
    clip_vector,
    effective_noise_multiplier,
    gaussian_noise,
)
from hierfl.privacy.wrappers import DPAggregator


def test_privacy_clip_bounds_every_row_and_zeroes_non_finite() -> None:
    x = np.array([[3e5, 4e5], [0.3, 0.4], [0.0, 0.0], [np.nan, 1.0]], dtype=np.float32)
    out, norms = clip_rows(x, 1.0)
    assert norms[0] == pytest.approx(5e5)
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)  # norm 1e6-ish -> exactly C
    np.testing.assert_allclose(out[1], x[1])  # under C: unchanged
    np.testing.assert_array_equal(out[2], 0.0)
    np.testing.assert_array_equal(out[3], 0.0)  # a NaN row contributes nothing
    assert np.isinf(norms[3])
    v, n = clip_vector(np.full(100, 1e5, np.float32), 0.5)
    assert n == pytest.approx(1e6)
    assert np.linalg.norm(v) == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(ConfigError, match="clip_norm"):
        clip_rows(x, 0.0)


def _dp_fog(**privacy) -> DPAggregator:
    s = FogSettings.load(fog_id="f", aggregator="fedavg", min_updates=4, spool_dir="spool",
                         privacy={"mode": "trusted_fog", **privacy})
    rule = _fog_rule(s)
    assert isinstance(rule, DPAggregator)
    return rule


def test_privacy_fog_noise_has_the_configured_std() -> None:
    """The fog's release is (sum of clipped + N(0, (sigma C)^2)) / m: with zero updates the
    release times m is the noise. 4000 trials x 64 coordinates, fixed seed: the sample std of
    256,000 draws is within 1 % of sigma*C (its relative standard error is 0.14 %), the mean is
    0, and every trial is independent (no repeated noise)."""
    sigma, clip, m = 1.3, 0.7, 4
    agg = _dp_fog(noise_multiplier=sigma, clip_norm=clip)
    agg.rng = np.random.default_rng(20261206)
    zeros = np.zeros((m, 64), np.float32)
    draws = np.stack([agg(zeros, np.ones(m)) * m for _ in range(4000)]).astype(np.float64)
    assert draws.std() == pytest.approx(sigma * clip, rel=0.01)
    assert abs(draws.mean()) < 5 * sigma * clip / np.sqrt(draws.size)
    assert len({row.tobytes() for row in draws}) == len(draws)
    # and on the real path a differently configured fog has a different std
    agg2 = _dp_fog(noise_multiplier=0.5, clip_norm=clip)
    agg2.rng = np.random.default_rng(1)
    d2 = np.stack([agg2(zeros, np.ones(m)) * m for _ in range(500)])
    assert d2.std() == pytest.approx(0.5 * clip, rel=0.03)


def test_privacy_noise_shares_sum_to_the_region_noise() -> None:
    rng = np.random.default_rng(5)
    n, sigma, clip = 8, 1.0, 2.0
    total = sum(gaussian_noise(20_000, noise_multiplier=sigma, clip_norm=clip, rng=rng, share=n)
                for _ in range(n))
    assert total.std() == pytest.approx(sigma * clip, rel=0.02)
    one = gaussian_noise(20_000, noise_multiplier=sigma, clip_norm=clip, rng=rng, share=n)
    assert one.std() == pytest.approx(sigma * clip / np.sqrt(n), rel=0.02)


def test_privacy_one_edge_moves_the_release_by_at_most_c_over_m() -> None:
    """Sensitivity: replacing one edge's update by anything (norm 1e6, NaN) moves the
    noise-free release by at most C / m."""
    rng = np.random.default_rng(3)
    clip, m = 0.5, 5
    base = rng.normal(size=(m, 30)).astype(np.float32)
    for inner in (make_aggregator("fedavg"), make_aggregator("norm_bounded", {"max_norm": 0.3})):
        agg = DPAggregator(inner, clip_norm=clip, noise_multiplier=1.0, expected_updates=m,
                           add_noise=False)
        ref = agg(base, np.arange(1, m + 1, dtype=np.float64))
        for evil in (np.full(30, 1e6 / np.sqrt(30)), np.full(30, np.nan), -base[0] * 1e3):
            other = base.copy()
            other[0] = evil
            # claimed weights are ignored: a huge claim buys nothing
            out = agg(other, np.array([1e9, 1, 1, 1, 1], dtype=np.float64))
            assert np.linalg.norm(out - ref) <= 2 * clip / m * (1 + 1e-5)
        assert agg.clipped_total >= 3


@pytest.mark.parametrize(
    ("name", "params"),
    [("median", {}), ("trimmed_mean", {}), ("krum", {}), ("geometric_median", {}),
     ("clipped_trimmed_mean", {}), ("norm_bounded", {}),
     ("norm_bounded", {"max_norm": 1.0, "weighted": True})],
)
def test_privacy_wrapper_refuses_rules_that_break_the_sensitivity_bound(name, params) -> None:
    with pytest.raises(ConfigError, match="breaks the accounting"):
        DPAggregator(make_aggregator(name, params), clip_norm=1.0, noise_multiplier=1.0,
                     expected_updates=2)


def test_privacy_adaptive_clip_follows_the_quantile() -> None:
    rng = np.random.default_rng(11)
    ac = AdaptiveClip(clip_norm=10.0, target_quantile=0.5, learning_rate=0.2,
                      count_noise_multiplier=1.0)
    norms = rng.lognormal(0.0, 0.3, size=200)  # median ~ 1
    for _ in range(200):
        ac.update(norms, len(norms), rng)
    assert ac.clip_norm == pytest.approx(float(np.median(norms)), rel=0.1)
    # the updates' share of the noise once the count takes its own (Andrew et al., Thm 1)
    assert effective_noise_multiplier(1.0, 10.0) > 1.0
    with pytest.raises(ConfigError, match="count noise"):
        effective_noise_multiplier(1.0, 0.4)


def test_privacy_clip_rows_in_float32_without_a_float64_copy() -> None:
    import tracemalloc

    rng = np.random.default_rng(5)
    x = (rng.normal(size=(40, 50_000)) * rng.uniform(0.01, 30, size=(40, 1))).astype(np.float32)
    before = np.linalg.norm(x.astype(np.float64), axis=1)
    tracemalloc.start()
    out, norms = clip_rows(x, 0.7)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.dtype == np.float32 and out is not x
    assert peak < 1.5 * x.nbytes  # one float32 copy (a float64 copy alone would be 2x)
    np.testing.assert_allclose(norms, before, rtol=1e-6)
    after = np.linalg.norm(out.astype(np.float64), axis=1)
    assert after.max() <= 0.7  # exactly, in float64: float32 rounding never leaves a row above C
    np.testing.assert_allclose(after[before > 0.7], 0.7, rtol=1e-6)
    # in place: no copy at all, same result
    y = x.copy()
    same, _ = clip_rows(y, 0.7, out=y)
    assert same is y
    np.testing.assert_array_equal(same, out)
    with pytest.raises(ConfigError, match="float32"):
        clip_rows(x, 0.7, out=np.zeros(x.shape))


def test_privacy_fog_noise_comes_from_a_fresh_secrets_seed_per_release(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from hierfl.aggregation.fedavg import FedAvg
    from hierfl.privacy import mechanisms

    agg = DPAggregator(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, expected_updates=2)
    assert agg.rng is None  # production default: no fixed generator
    u = np.zeros((2, 1000), dtype=np.float32)
    w = np.ones(2)
    a, b = agg(u, w), agg(u, w)
    assert not np.array_equal(a, b)  # independent noise per release
    seeds: list[int] = []

    def token_bytes(n: int) -> bytes:
        seeds.append(n)
        return bytes([len(seeds)]) * n

    monkeypatch.setattr(mechanisms.secrets, "token_bytes", token_bytes)
    c = agg(u, w)
    assert seeds == [32]  # one 256-bit seed from secrets for this release
    seeds.clear()
    np.testing.assert_array_equal(agg(u, w), c)  # the noise is that seed's, nothing else's


def test_privacy_fog_dp_rule_clips_the_handed_over_stack_in_place() -> None:
    from hierfl.aggregation.fedavg import FedAvg

    rng = np.random.default_rng(8)
    x = (rng.normal(size=(6, 500)) * 3).astype(np.float32)
    w = np.ones(6)
    fog = _dp_fog()
    assert fog.clip_in_place  # the fog's round stacks the updates afresh for each close
    owner = DPAggregator(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, expected_updates=4,
                         clip_in_place=True, rng=np.random.default_rng(1))
    copier = DPAggregator(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, expected_updates=4,
                          rng=np.random.default_rng(1))
    kept = x.copy()
    a = copier(kept, w)
    np.testing.assert_array_equal(kept, x)  # default: the caller's stack is never touched
    handed = x.copy()
    b = owner(handed, w)
    np.testing.assert_array_equal(a, b)  # same release
    assert np.linalg.norm(handed.astype(np.float64), axis=1).max() <= 1.0  # clipped in place
    frozen = x.copy()
    frozen.flags.writeable = False
    owner(frozen, w)  # a read-only stack is copied, not written
    np.testing.assert_array_equal(frozen, x)
