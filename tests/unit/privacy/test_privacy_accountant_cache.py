"""The accountant's per-release RDP cache: the same epsilon as dp-accounting computed from
scratch, and a budget check at a new release count that no longer recomputes the RDP."""

from __future__ import annotations

import time

import dp_accounting
import pytest

from hierfl.privacy import accountant as acc
from hierfl.privacy.accountant import epsilon_composed, epsilon_for


def _scratch(sigma: float, q: float, n: int, delta: float, fixed_from: int = 0) -> float:
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(sigma)
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    if fixed_from and q < 1:
        event = dp_accounting.SampledWithoutReplacementDpEvent(
            fixed_from, acc.fixed_sample_size(q, fixed_from), event)
        relation = dp_accounting.NeighboringRelation.REPLACE_ONE
    elif q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    a = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    a.compose(dp_accounting.SelfComposedDpEvent(event, n))
    return float(a.get_epsilon(delta))


@pytest.mark.parametrize(("sigma", "q", "n", "fixed_from"), [
    (1.1, 1.0, 7, 0), (0.9, 0.05, 300, 0), (2.0, 0.2, 41, 0), (1.3, 0.1, 25, 200),
])
def test_privacy_accountant_cache_matches_dp_accounting_from_scratch(
        sigma: float, q: float, n: int, fixed_from: int) -> None:
    got = epsilon_for(noise_multiplier=sigma, sample_rate=q, releases=n, delta=1e-5,
                      fixed_from=fixed_from)
    assert got == pytest.approx(_scratch(sigma, q, n, 1e-5, fixed_from), rel=1e-9)


def test_privacy_accountant_cache_composes_groups_like_dp_accounting() -> None:
    got = epsilon_composed([(1.1, 0.1, 30), (1.5, 0.1, 12)], delta=1e-6)
    a = dp_accounting.rdp.RdpAccountant()
    a.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(s)), k)
        for s, k in ((1.1, 30), (1.5, 12))]))
    assert got == pytest.approx(a.get_epsilon(1e-6), rel=1e-9)


def test_privacy_accountant_cache_budget_check_at_new_counts_is_cheap() -> None:
    acc._rdp_one_release.cache_clear()
    acc._epsilon_cached.cache_clear()
    epsilon_for(noise_multiplier=1.05, sample_rate=0.07, releases=1, delta=1e-5)
    before = acc._rdp_one_release.cache_info()
    t = time.perf_counter()
    eps = [epsilon_for(noise_multiplier=1.05, sample_rate=0.07, releases=n, delta=1e-5)
           for n in range(2, 102)]
    took = time.perf_counter() - t
    after = acc._rdp_one_release.cache_info()
    assert after.misses == before.misses  # the RDP of one release was computed once
    assert after.hits >= before.hits + 100
    assert eps == sorted(eps)  # monotone in the releases
    assert took < 5.0  # 100 new counts; from scratch each took ~0.1 s (generous under load)


def test_privacy_accountant_cache_pld_matches_dp_accounting_from_scratch() -> None:
    acc._pld_one_release.cache_clear()
    acc._epsilon_cached.cache_clear()
    a = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    a.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(3.0)), 11))
    first = epsilon_for(noise_multiplier=3.0, sample_rate=0.2, releases=10, delta=1e-5,
                        method="pld")
    got = epsilon_for(noise_multiplier=3.0, sample_rate=0.2, releases=11, delta=1e-5,
                      method="pld")
    assert got == pytest.approx(a.get_epsilon(1e-5), rel=1e-12)
    assert 0 < first < got
    assert acc._pld_one_release.cache_info().misses == 1  # built once, composed twice
    mixed = epsilon_composed([(3.0, 0.2, 11), (2.0, 1.0, 5)], delta=1e-5, method="pld")
    b = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    b.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(3.0)), 11),
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 5)]))
    assert mixed == pytest.approx(b.get_epsilon(1e-5), rel=1e-12)
