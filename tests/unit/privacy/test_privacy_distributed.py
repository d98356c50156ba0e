"""Distributed DP (Skellam shares before secure aggregation): the noise the region's sum carries,
exact modular sums, honest accounting of dropouts, the RDP bound against independent
computations, the persisted ledger, and the settings it refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from hierfl.errors import ConfigError, StoreError
from hierfl.privacy import distributed as dd
from hierfl.privacy import mechanisms
from hierfl.privacy.distributed import (
    RDP_ORDERS,
    DistributedDP,
    DistributedLedger,
    add_noise_share,
    csprng,
    epsilon_distributed,
    skellam_rdp,
)
from hierfl.privacy.ledger import LedgerCorruptError


def _params(n: int = 10, sigma: float = 1.0, dim: int = 1000, clip: float = 1.0) -> DistributedDP:
    return DistributedDP.for_region(expected_edges=n, clip_norm=clip, noise_multiplier=sigma,
                                    dim=dim)


def test_privacy_distributed_sum_of_shares_has_configured_variance() -> None:
    # 10 edges with zero updates: the decoded sum is pure noise, sigma^2 C^2 per coordinate
    # (sigma^2 C^2 s^2 in integers); 6 survivors carry 6/10 of it.
    p = _params(n=10, sigma=1.3, dim=20_000, clip=0.5)
    rng = np.random.default_rng(7)
    zero = np.zeros(p.dim, dtype=np.int64)
    shares = [add_noise_share(zero, p, rng=rng) for _ in range(10)]
    full = p.decode_sum(np.sum(shares, axis=0, dtype=np.uint64).astype(np.uint32))
    assert float(np.var(full)) == pytest.approx((1.3 * 0.5) ** 2, rel=0.05)
    assert float(np.mean(full)) == pytest.approx(0.0, abs=5 * 1.3 * 0.5 / math.sqrt(p.dim))
    six = p.decode_sum(np.sum(shares[:6], axis=0, dtype=np.uint64).astype(np.uint32))
    assert float(np.var(six)) == pytest.approx(0.6 * (1.3 * 0.5) ** 2, rel=0.05)
    assert p.noise_std(6) == pytest.approx(1.3 * 0.5 * math.sqrt(0.6))
    # integer-valued noise with the Skellam variance 2 mu per share
    ints = p.decode_integers(shares[0])
    assert float(np.var(ints)) == pytest.approx(2 * p.mu_per_edge, rel=0.05)


def test_privacy_distributed_modular_wraparound_leaves_sum_exact() -> None:
    p = _params(n=5, sigma=0.8, dim=4000)
    updates = [np.random.default_rng(i).normal(size=p.dim) * (-1) ** i for i in range(5)]
    exact = np.zeros(p.dim, dtype=np.int64)
    masked_total = np.zeros(p.dim, dtype=np.uint64)
    masks = [np.random.default_rng(100 + i).integers(0, 2**32, p.dim, dtype=np.uint64)
             for i in range(5)]
    for i, u in enumerate(updates):
        y = p.round_update(u, np.random.default_rng(10 + i))
        share = add_noise_share(y, p, rng=np.random.default_rng(20 + i))
        # the same generator on zeros gives this share's noise alone
        noise = p.decode_integers(add_noise_share(np.zeros(p.dim, dtype=np.int64), p,
                                                  rng=np.random.default_rng(20 + i)))
        exact += y + noise
        assert (share >= 2**31).any()  # negative coordinates really wrapped
        # pairwise-cancelling masks, added modulo 2^32 as secure aggregation does
        mask = (masks[i] - masks[(i + 1) % 5]) % 2**32
        masked_total = (masked_total + share.astype(np.uint64) + mask) % 2**32
    total = masked_total.astype(np.uint32)
    np.testing.assert_array_equal(p.decode_integers(total), exact)
    np.testing.assert_array_equal(p.decode_sum(total), exact / p.scale)
    # the sum is close to the plain float sum (noise sigma C plus rounding)
    plain = np.sum([u / max(1.0, float(np.linalg.norm(u))) for u in updates], axis=0)
    assert float(np.std(p.decode_sum(total) - plain)) == pytest.approx(0.8, rel=0.1)


def test_privacy_distributed_conditional_rounding_bounds_norm_and_is_unbiased() -> None:
    p = DistributedDP(clip_norm=1.0, scale=8.0, noise_multiplier=1.0, expected_edges=3, dim=64)
    x = np.random.default_rng(3).normal(size=64)
    x /= np.linalg.norm(x)  # norm exactly C: the rounding is what could push it above
    rng = np.random.default_rng(4)
    draws = np.array([p.round_update(x, rng) for _ in range(3000)])
    norms = np.linalg.norm(draws, axis=1)
    assert norms.max() <= p.l2_sensitivity + 1e-9
    assert norms.max() > 8.0  # rounding does add norm: the bound is not vacuous
    np.testing.assert_allclose(draws.mean(axis=0), x * 8.0, atol=0.1)
    # an update far above C is clipped first
    big = p.round_update(x * 1e6, rng)
    assert float(np.linalg.norm(big)) <= p.l2_sensitivity


def test_privacy_distributed_epsilon_grows_when_edges_drop_out(tmp_path: Path) -> None:
    p = _params(n=10, sigma=2.0)
    ledger = DistributedLedger(tmp_path / dd.DISTRIBUTED_LEDGER_FILE, population="fog-a",
                               params=p, delta=1e-5)
    e10, e7, e3 = ledger.epsilon(10), ledger.epsilon(7), ledger.epsilon(3)
    assert 0 < e10 < e7 < e3
    assert ledger.spend(10) == pytest.approx(e10)
    after_drop = ledger.spend(4)
    # the second release carried 4 shares: more epsilon than two full releases
    assert after_drop > epsilon_distributed(p, [10, 10], delta=1e-5)
    assert after_drop == pytest.approx(epsilon_distributed(p, [10, 4], delta=1e-5))
    m = ledger.metrics()
    assert m["dp.surviving_edges"] == 4.0
    assert m["dp.releases"] == 2.0
    assert m["dp.epsilon"] == pytest.approx(after_drop)
    assert m["dp.effective_noise_multiplier"] == pytest.approx(
        2.0 * math.sqrt(0.4) * p.clip_norm * p.scale / p.l2_sensitivity)
    # budget check against the surviving count
    assert ledger.would_exceed(after_drop + 0.01, 1)
    assert not ledger.would_exceed(None, 1)
    # persisted: a restart keeps both releases and their survivors
    again = DistributedLedger(tmp_path / dd.DISTRIBUTED_LEDGER_FILE, population="fog-a",
                              params=p, delta=1e-5)
    assert again.releases == 2 and again.last_surviving == 4
    assert again.epsilon() == pytest.approx(after_drop)
    saved = json.loads((tmp_path / dd.DISTRIBUTED_LEDGER_FILE).read_text())
    assert sorted(g["shares"] for g in saved["groups"]) == [4, 10]


def test_privacy_distributed_ledger_refuses_corrupt_or_foreign_file(tmp_path: Path) -> None:
    p = _params()
    path = tmp_path / "l.json"
    DistributedLedger(path, population="fog-a", params=p, delta=1e-5).spend(10)
    with pytest.raises(LedgerCorruptError, match="fog-a"):
        DistributedLedger(path, population="fog-b", params=p, delta=1e-5)
    path.write_text("{not json")
    with pytest.raises(LedgerCorruptError, match="never reset silently"):
        DistributedLedger(path, population="fog-a", params=p, delta=1e-5)
    path.write_text(json.dumps({"version": 1, "kind": "distributed-skellam",
                                "population": "fog-a", "groups": [{"mu": -1}]}))
    with pytest.raises(LedgerCorruptError, match="malformed"):
        DistributedLedger(path, population="fog-a", params=p, delta=1e-5)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "l.json").mkdir()  # a folder where the file should go: cannot write
    bad = DistributedLedger(None, population="fog-a", params=p, delta=1e-5)
    bad.path = tmp_path / "ro" / "l.json"
    with pytest.raises(StoreError):
        bad.spend(10)


def test_privacy_distributed_rdp_bounds_the_exact_renyi_divergence() -> None:
    # Independent computation: the exact Renyi divergence of Sk(mu) shifted by 1 against Sk(mu)
    # (d = 1, Delta_2 = Delta_1 = 1), summed over the pmf with scipy, never exceeds Theorem 3.5's
    # bound, and the bound is tight (within 50 % at mu 5, 3 % at mu 50).
    for mu, slack in ((5.0, 1.5), (50.0, 1.03)):
        xs = np.arange(-int(60 * math.sqrt(mu)) - 10, int(60 * math.sqrt(mu)) + 10)
        log_q = stats.skellam.logpmf(xs, mu, mu)
        log_p = stats.skellam.logpmf(xs - 1, mu, mu)
        bound = skellam_rdp(mu, 1.0, 1.0, orders=(2, 4, 8, 16))
        for a, b in zip((2, 4, 8, 16), bound, strict=True):
            exact = float(logsumexp(a * log_p + (1 - a) * log_q)) / (a - 1)
            assert exact <= b
            assert b <= slack * exact


def test_privacy_distributed_epsilon_matches_independent_computations() -> None:
    p = _params(n=10, sigma=3.0, dim=1000)
    eps = epsilon_distributed(p, [10] * 50, delta=1e-5)
    # (a) RDP -> (epsilon, delta) recomputed here (Canonne, Kamath, Steinke 2020, Prop. 12 /
    # Balle et al. 2020): eps = min_a rdp + log1p(-1/a) - log(delta a) / (a - 1)
    rdp = 50 * skellam_rdp(p.mu_per_edge * 10, p.l2_sensitivity, p.l1_sensitivity)
    mine = min(r + math.log1p(-1 / a) - math.log(1e-5 * a) / (a - 1)
               for a, r in zip(RDP_ORDERS, rdp, strict=True))
    assert eps == pytest.approx(mine, rel=1e-9)
    # (b) with shares this large the Skellam sum behaves like a Gaussian of std sqrt(2 mu n):
    # dp-accounting's Gaussian at the same effective sigma gives epsilon within 1 %
    import dp_accounting

    sigma_eff = math.sqrt(2 * p.mu_per_edge * 10) / p.l2_sensitivity
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma_eff), 50))
    assert eps == pytest.approx(acc.get_epsilon(1e-5), rel=0.01)
    assert eps >= acc.get_epsilon(1e-5) * 0.999  # Skellam's bound is never the looser side


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"noise_multiplier": 0.0}, "noise_multiplier"),
    ({"noise_multiplier": float("nan")}, "noise_multiplier"),
    ({"clip_norm": -1.0}, "clip_norm"),
    ({"scale": 3.0}, "power of two"),
    ({"expected_edges": 0}, "expected_edges"),
    ({"dim": 0}, "dim"),
    ({"beta": 1.0}, "beta"),
    ({"scale": 2.0**28, "noise_multiplier": 0.0001}, "wrap around"),
    ({"scale": 2.0**21}, "Poisson sampler"),
])
def test_privacy_distributed_refuses_nonsense_settings(kwargs: dict[str, float],
                                                       words: str) -> None:
    base: dict[str, float] = {"clip_norm": 1.0, "scale": 2.0**10, "noise_multiplier": 1.0,
                              "expected_edges": 10, "dim": 100}
    with pytest.raises(ConfigError, match=words):
        DistributedDP(**{**base, **kwargs})  # type: ignore[arg-type]


def test_privacy_distributed_refuses_bad_calls() -> None:
    p = _params(n=4, dim=8)
    with pytest.raises(ConfigError, match="surviving"):
        p.rdp(0)
    ledger = DistributedLedger(None, population="fog-a", params=p, delta=1e-5)
    with pytest.raises(ConfigError, match="exceed expected_edges"):
        ledger.spend(5)
    with pytest.raises(ConfigError, match="delta"):
        DistributedLedger(None, population="fog-a", params=p, delta=1.0)
    with pytest.raises(ConfigError, match="delta"):
        epsilon_distributed(p, [4], delta=0.0)
    with pytest.raises(ConfigError, match="shape"):
        add_noise_share(np.zeros(7, dtype=np.int64), p)
    with pytest.raises(ConfigError, match="integers"):
        add_noise_share(np.zeros(8), p)
    with pytest.raises(ConfigError, match="beyond"):
        add_noise_share(np.full(8, 2**31 - 1, dtype=np.int64), p)
    with pytest.raises(ConfigError, match="NaN"):
        p.round_update(np.full(8, np.nan))
    with pytest.raises(ConfigError, match="shape"):
        p.decode_sum(np.zeros(3, dtype=np.uint32))
    with pytest.raises(ConfigError, match="scale"):
        DistributedDP.for_region(expected_edges=2**31, clip_norm=1.0, noise_multiplier=1.0,
                                 dim=4)
    assert ledger.releases == 0 and ledger.epsilon() == 0.0


def test_privacy_distributed_csprng_draws_its_seed_from_secrets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = csprng(), csprng()
    assert a.integers(0, 2**63) != b.integers(0, 2**63)  # fresh 256-bit seed each call
    calls: list[int] = []

    def fixed(n: int) -> bytes:
        calls.append(n)
        return b"\x01" * n

    monkeypatch.setattr(mechanisms.secrets, "token_bytes", fixed)
    p = _params(n=2, dim=16)
    one = p.encode(np.ones(16) * 0.1)
    two = p.encode(np.ones(16) * 0.1)
    np.testing.assert_array_equal(one, two)  # the seed, and only the seed, came from secrets
    assert calls and all(n == 32 for n in calls)


def test_privacy_distributed_from_settings(tmp_path: Path) -> None:
    from hierfl.config import PrivacySettings

    p = PrivacySettings(mode="untrusted_fog", noise_multiplier=1.2, clip_norm=0.5,
                        delta=1e-6, ledger_dir=tmp_path)
    params = dd.params_from_settings(p, expected_edges=8, dim=100)
    assert (params.clip_norm, params.noise_multiplier, params.rounding) == (0.5, 1.2, "nearest")
    assert params == dd.params_from_settings(p, expected_edges=8, dim=100)  # edges = fog
    ledger = dd.ledger_from_settings(p, "fog-a", params, tmp_path / "unused")
    ledger.spend(8)
    assert (tmp_path / dd.DISTRIBUTED_LEDGER_FILE).exists()
    assert ledger.delta == 1e-6
    with pytest.raises(ConfigError, match="untrusted_fog"):
        dd.params_from_settings(PrivacySettings(mode="trusted_fog"), expected_edges=8, dim=100)
