"""The accountant against published values and against independent computations.

References (each test says which it checks):

- dp-accounting's own example: ``rdp_privacy_accountant_test.py``,
  ``test_compute_epsilon_delta_gaussian`` ("noise multiplier is chosen to obtain exactly
  (1, 1e-6)-DP"): sigma = 4.530877117, one unsampled Gaussian release, epsilon = 1 at
  delta = 1e-6 (the test ships with the installed package, dp_accounting/rdp/).
- Balle & Wang 2018, "Improving the Gaussian Mechanism for Differential Privacy: Analytical
  Calibration and Optimal Denoising", Theorem 8: the exact (epsilon, delta) curve of the
  Gaussian mechanism, delta(eps) = Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s) with
  s = sigma (sensitivity 1); T releases compose into one with sigma / sqrt(T).
- Mironov, Talwar & Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian
  Mechanism", Section 3.3: for integer alpha, the RDP of the Poisson-sampled Gaussian is
  log(sum_k C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 sigma^2))) / (alpha - 1);
  converted to (epsilon, delta) with Canonne, Kamath & Steinke 2020, Proposition 12.
- Abadi et al. 2016, "Deep Learning with Differential Privacy", Section 3.1: q = 0.01,
  sigma = 4, T = 10000, delta = 1e-5 gives epsilon ~ 1.26 with the moments accountant; RDP
  with fractional orders and the improved conversion is a tighter upper bound on the same
  mechanism, so it must come out below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import gammaln, logsumexp
from scipy.stats import norm

from hierfl.errors import ConfigError
from hierfl.privacy.accountant import Accountant, epsilon_composed, epsilon_for


def _analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Balle & Wang 2018, Theorem 8, solved for epsilon by bisection."""

    def delta_at(eps: float) -> float:
        return float(norm.cdf(0.5 / sigma - eps * sigma)
                     - math.exp(eps) * norm.cdf(-0.5 / sigma - eps * sigma))

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if delta_at(mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def _integer_order_rdp_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """Mironov, Talwar & Zhang 2019 (integer orders) + Canonne et al. 2020 conversion."""
    best = math.inf
    for alpha in range(2, 257):
        k = np.arange(alpha + 1)
        log_terms = (gammaln(alpha + 1) - gammaln(k + 1) - gammaln(alpha - k + 1)
                     + (alpha - k) * math.log1p(-q) + k * math.log(q)
                     + (k * k - k) / (2 * sigma ** 2))
        rdp = steps * float(logsumexp(log_terms)) / (alpha - 1)
        eps = rdp + math.log1p(-1 / alpha) - math.log(delta * alpha) / (alpha - 1)
        best = min(best, eps)
    return best


def test_privacy_accountant_matches_dp_accounting_published_example() -> None:
    eps = epsilon_for(noise_multiplier=4.530877117, sample_rate=1.0, releases=1, delta=1e-6)
    assert eps == pytest.approx(1.0, rel=0.01)
    # PLD is exact for the Gaussian up to its discretisation: never looser than RDP
    pld = epsilon_for(noise_multiplier=4.530877117, sample_rate=1.0, releases=1, delta=1e-6,
                      method="pld")
    assert pld <= eps


@pytest.mark.parametrize(("sigma", "releases"), [(1.0, 1), (2.0, 10), (5.0, 100)])
def test_privacy_pld_matches_the_analytic_gaussian_mechanism(sigma: float, releases: int) -> None:
    exact = _analytic_gaussian_epsilon(sigma / math.sqrt(releases), 1e-5)
    pld = epsilon_for(noise_multiplier=sigma, sample_rate=1.0, releases=releases, delta=1e-5,
                      method="pld")
    assert pld == pytest.approx(exact, rel=0.01)
    # RDP is an upper bound on the same mechanism
    rdp = epsilon_for(noise_multiplier=sigma, sample_rate=1.0, releases=releases, delta=1e-5)
    assert rdp >= exact * 0.999


@pytest.mark.parametrize(
    ("q", "sigma", "steps"),
    [(0.01, 4.0, 10_000), (256 / 60_000, 1.1, 60 * 60_000 // 256), (0.05, 2.0, 1000),
     (0.1, 2.0, 200)],
)
def test_privacy_rdp_matches_mironov_integer_orders(q: float, sigma: float, steps: int) -> None:
    ours = epsilon_for(noise_multiplier=sigma, sample_rate=q, releases=steps, delta=1e-5)
    ref = _integer_order_rdp_epsilon(q, sigma, steps, 1e-5)
    # dp-accounting also tries fractional orders: never above the integer-order bound
    assert ours <= ref * (1 + 1e-9)
    assert ours == pytest.approx(ref, rel=0.01)


def test_privacy_rdp_is_below_abadi_moments_accountant() -> None:
    eps = epsilon_for(noise_multiplier=4.0, sample_rate=0.01, releases=10_000, delta=1e-5)
    assert 0.8 < eps < 1.26
    # and PLD, tighter still, below RDP
    pld = epsilon_for(noise_multiplier=4.0, sample_rate=0.01, releases=10_000, delta=1e-5,
                      method="pld")
    assert pld < eps


def test_privacy_accountant_spend_and_prospective_check() -> None:
    a = Accountant(noise_multiplier=1.0, sample_rate=0.1, delta=1e-5)
    assert a.epsilon() == 0.0
    e3 = a.epsilon(3)
    assert a.spend(3) == e3
    assert a.releases == 3
    assert a.would_exceed(e3, 1)
    assert not a.would_exceed(a.epsilon(4), 1)
    n = a.max_releases(e3)
    assert n == 3
    assert a.epsilon(n + 1) > e3
    # epsilon grows with releases and shrinks with noise
    assert a.epsilon(10) > a.epsilon(5)
    assert epsilon_for(noise_multiplier=2.0, sample_rate=0.1, releases=5, delta=1e-5) < \
        a.epsilon(5)


def test_privacy_composition_of_parameter_groups() -> None:
    both = epsilon_composed([(1.0, 1.0, 3), (2.0, 1.0, 2)], delta=1e-5)
    assert both > epsilon_for(noise_multiplier=1.0, sample_rate=1.0, releases=3, delta=1e-5)
    # two groups with the same parameters compose like one
    split = epsilon_composed([(1.5, 0.2, 4), (1.5, 0.2, 6)], delta=1e-5)
    whole = epsilon_for(noise_multiplier=1.5, sample_rate=0.2, releases=10, delta=1e-5)
    assert split == pytest.approx(whole, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": -1.0}, "sigma <= 0"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "(0, 1]"),
        ({"delta": 1.0}, "delta"),
        ({"delta": 0.0}, "delta"),
        ({"method": "moments"}, "method"),
        ({"releases": -1}, "releases"),
    ],
)
def test_privacy_accountant_refuses_nonsense(kwargs: dict, words: str) -> None:
    params = {"noise_multiplier": 1.0, "sample_rate": 0.5, "releases": 1, "delta": 1e-5,
              **kwargs}
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("]", r"\]")):
        epsilon_for(**params)
