"""Privacy accounting: the sampled Gaussian mechanism composed over every release.

A *release* is one output of a Gaussian mechanism with noise multiplier ``sigma`` (noise standard
deviation ``sigma * C`` on a sum whose sensitivity to one participant is ``C``), run on a subset
of the population chosen with sampling rate ``q`` (Poisson sampling: every participant is in with
probability ``q``; ``q = 1.0`` means no subsampling). ``releases`` such outputs compose; the
accountant reports the smallest ``epsilon`` such that the whole sequence is
``(epsilon, delta)``-DP under the add-or-remove-one neighbouring relation.

The arithmetic is Google's ``dp-accounting`` (numpy/scipy only, no torch): its RDP accountant
(Mironov 2017; Mironov, Talwar, Zhang 2019 for the sampled Gaussian) by default, its PLD
accountant (privacy loss distributions, tighter, slower) with ``method="pld"``. Both are upper
bounds on the true epsilon; PLD's is the tighter one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator
from typing import Any, Literal

from hierfl.errors import ConfigError

__all__ = [
    "METHODS",
    "Accountant",
    "Method",
    "check_params",
    "epsilon_composed",
    "epsilon_for",
    "fixed_sample_size",
]

Method = Literal["rdp", "pld"]
METHODS: tuple[str, ...] = ("rdp", "pld")

# PLD discretisation: dp-accounting's default (1e-4) is exact to far better than 1 % here and
# keeps one evaluation under a second for thousands of releases.
_PLD_DISCRETIZATION = 1e-4


def check_params(
    *, noise_multiplier: float, sample_rate: float, delta: float, method: str = "rdp"
) -> None:
    """Refuse parameters that make no sense for the sampled Gaussian mechanism.

    Args:
        noise_multiplier: sigma, noise std divided by the sensitivity; must be finite and > 0.
        sample_rate: q, the Poisson sampling probability; must be in (0, 1].
        delta: the delta of (epsilon, delta)-DP; must be in (0, 1).
        method: "rdp" or "pld".

    Raises:
        ConfigError: with a message that says which parameter is wrong and why.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(
            f"privacy: noise_multiplier (sigma) must be > 0, got {noise_multiplier}: "
            "sigma <= 0 adds no noise, so no epsilon bounds the release"
        )
    if not (math.isfinite(sample_rate) and 0.0 < sample_rate <= 1.0):
        raise ConfigError(
            f"privacy: sample_rate (q) must be in (0, 1], got {sample_rate}: "
            "it is the probability that one participant is in a release"
        )
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        raise ConfigError(f"privacy: delta must be in (0, 1), got {delta}")
    if method not in METHODS:
        raise ConfigError(f"privacy: accountant method must be one of {METHODS}, got {method!r}")


def fixed_sample_size(sample_rate: float, population: int) -> int:
    """m of a fixed-size sample: ``round(q * N)``, at least 1."""
    return max(1, round(sample_rate * population))


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(sigma: float, q: float, releases: int, delta: float, method: str,
                    fixed_from: int = 0) -> float:
    return _epsilon_groups(((sigma, q, releases, fixed_from),), delta, method)


def _epsilon_groups(groups: tuple[tuple[float, float, int, int], ...], delta: float,
                    method: str) -> float:
    if not any(n > 0 for _, _, n, _ in groups):
        return 0.0
    if method == "rdp":
        return _epsilon_rdp(groups, delta)
    return _epsilon_pld(groups, delta)


def _event(sigma: float, q: float, fixed_from: int) -> Any:
    # Lazy: dp_accounting imports scipy (~1 s); only a DP federation pays it.
    import dp_accounting  # noqa: PLC0415

    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(sigma)
    if fixed_from > 0 and q < 1.0:
        # a fixed-size sample without replacement: dp-accounting accounts it under the
        # replace-one relation only (Wang, Balle, Kasiviswanathan 2019), with RDP
        return dp_accounting.SampledWithoutReplacementDpEvent(
            fixed_from, fixed_sample_size(q, fixed_from), event)
    if q < 1.0:
        return dp_accounting.PoissonSampledDpEvent(q, event)
    return event


@functools.lru_cache(maxsize=256)
def _rdp_one_release(sigma: float, q: float, fixed_from: int) -> tuple[tuple[float, ...],
                                                                      tuple[float, ...]]:
    """(orders, RDP) of one release: RDP composes by addition, so ``n`` releases are ``n``
    times this vector. Computing it is what costs (~0.1 s for a sampled Gaussian, ~0.5 s
    without replacement); a budget check at a new release count then costs only the
    conversion to epsilon."""
    import dp_accounting  # noqa: PLC0415

    relation = (dp_accounting.NeighboringRelation.REPLACE_ONE if fixed_from > 0 and q < 1.0
                else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    with _quiet_absl():
        accountant.compose(_event(sigma, q, fixed_from))
    # dp-accounting keeps the composed RDP in _orders/_rdp (no public getter); the
    # test against its own get_epsilon (test_privacy_accountant_cache.py) catches a change.
    return (tuple(float(a) for a in accountant._orders),
            tuple(float(r) for r in accountant._rdp))


def _epsilon_rdp(groups: tuple[tuple[float, float, int, int], ...], delta: float) -> float:
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon  # noqa: PLC0415

    orders: tuple[float, ...] = ()
    total: list[float] = []
    for sigma, q, releases, fixed_from in groups:
        if releases == 0:
            continue
        orders, one = _rdp_one_release(sigma, q, fixed_from)
        if not total:
            total = [0.0] * len(one)
        total = [t + releases * r for t, r in zip(total, one, strict=True)]
    with _quiet_absl():
        eps = float(compute_epsilon(orders, total, delta)[0])
    return max(0.0, eps)


def _epsilon_pld(groups: tuple[tuple[float, float, int, int], ...], delta: float) -> float:
    # The same operations as dp-accounting's PLDAccountant (identity, then each group composed
    # in), with the costly part cached: the PLD of one sampled-Gaussian release (~2 s to build
    # at this discretisation); n releases are its self-composition. The unsampled Gaussian
    # composes analytically (std sigma / sqrt(n)) and is cheap as it is.
    from dp_accounting.pld import privacy_loss_distribution as pld_lib  # noqa: PLC0415

    with _quiet_absl():
        total = pld_lib.identity(value_discretization_interval=_PLD_DISCRETIZATION)
        for sigma, q, releases, _ in groups:
            if releases == 0:
                continue
            if q < 1.0:
                part = _pld_one_release(sigma, q).self_compose(releases)
            else:
                part = pld_lib.from_gaussian_mechanism(
                    standard_deviation=sigma / math.sqrt(releases),
                    value_discretization_interval=_PLD_DISCRETIZATION)
            total = total.compose(part)
        eps = float(total.get_epsilon_for_delta(delta))
    return max(0.0, eps)


@functools.lru_cache(maxsize=16)
def _pld_one_release(sigma: float, q: float) -> Any:
    """The privacy loss distribution of one Poisson-sampled Gaussian release."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib  # noqa: PLC0415

    return pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma, value_discretization_interval=_PLD_DISCRETIZATION,
        sampling_prob=q)


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    # The RDP accountant logs (through absl) every fractional order it cannot evaluate and then
    # excludes it, which only loosens the bound; those lines are noise in a tier's log.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def epsilon_for(
    *,
    noise_multiplier: float,
    sample_rate: float,
    releases: int,
    delta: float,
    method: Method = "rdp",
    fixed_from: int = 0,
) -> float:
    """Epsilon at ``delta`` after ``releases`` sampled Gaussian releases.

    Args:
        noise_multiplier: sigma (> 0).
        sample_rate: q in (0, 1]; 1.0 means every participant is in every release.
        releases: how many releases compose (>= 0; 0 gives epsilon 0).
        delta: in (0, 1).
        method: "rdp" (default) or "pld".
        fixed_from: N > 0: each release samples exactly ``round(q N)`` of N participants
            without replacement (accounted with RDP under the replace-one relation, the only
            one dp-accounting supports for it); 0 (default): Poisson sampling, add-or-remove.

    Returns:
        epsilon, a finite float >= 0 (``math.inf`` when the accountant finds no finite bound).

    Raises:
        ConfigError: for nonsense parameters (see :func:`check_params`) or negative releases.
    """
    check_params(
        noise_multiplier=noise_multiplier, sample_rate=sample_rate, delta=delta, method=method
    )
    if releases < 0:
        raise ConfigError(f"privacy: releases must be >= 0, got {releases}")
    _check_fixed(fixed_from, method)
    return _epsilon_cached(
        float(noise_multiplier), float(sample_rate), int(releases), float(delta), method,
        int(fixed_from),
    )


def _check_fixed(fixed_from: int, method: str) -> None:
    if fixed_from < 0:
        raise ConfigError(f"privacy: fixed-size sampling needs a population >= 1, got "
                          f"{fixed_from}")
    if fixed_from > 0 and method != "rdp":
        raise ConfigError("privacy: fixed-size sampling is accounted with the RDP accountant "
                          "only (dp-accounting's PLD has no sampling without replacement)")


def epsilon_composed(
    groups: list[tuple[float, float, int]] | list[tuple[float, float, int, int]], *,
    delta: float, method: Method = "rdp",
) -> float:
    """Epsilon of releases made with different parameters, composed.

    A ledger whose noise multiplier or sampling rate changed between restarts holds one group
    per parameter set; their releases compose like any others.

    Args:
        groups: ``(noise_multiplier, sample_rate, releases[, fixed_from])`` tuples
            (``fixed_from``: see :func:`epsilon_for`; 0 or absent: Poisson sampling).
        delta: in (0, 1).
        method: "rdp" or "pld".

    Raises:
        ConfigError: for nonsense parameters in any group, or Poisson and fixed-size groups
            mixed (their neighbouring relations differ: no one epsilon composes them).
    """
    key = tuple((float(g[0]), float(g[1]), int(g[2]), int(g[3]) if len(g) > 3 else 0)
                for g in groups)
    for sigma, q, n, fixed_from in key:
        check_params(noise_multiplier=sigma, sample_rate=q, delta=delta, method=method)
        if n < 0:
            raise ConfigError(f"privacy: releases must be >= 0, got {n}")
        _check_fixed(fixed_from, method)
    kinds = {f > 0 and q < 1.0 for _, q, n, f in key if n > 0}
    if len(kinds) > 1:
        raise ConfigError("privacy: releases with Poisson and with fixed-size sampling cannot "
                          "be composed into one epsilon (add-or-remove vs replace-one)")
    if len(key) == 1:
        return _epsilon_cached(key[0][0], key[0][1], key[0][2], float(delta), method, key[0][3])
    return _epsilon_groups(key, float(delta), method)


class Accountant:
    """Running privacy account of one population (an edge's records, a fog's region).

    Attributes:
        noise_multiplier: sigma.
        sample_rate: q.
        delta: the delta epsilon is reported at.
        method: "rdp" or "pld".
        releases: releases accounted so far.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        delta: float,
        method: Method = "rdp",
        releases: int = 0,
        fixed_from: int = 0,
    ) -> None:
        """Validate the parameters and start at ``releases`` (a restored ledger's count);
        ``fixed_from``: see :func:`epsilon_for`.

        Raises:
            ConfigError: for nonsense parameters or negative ``releases``.
        """
        check_params(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, delta=delta, method=method
        )
        if releases < 0:
            raise ConfigError(f"privacy: releases must be >= 0, got {releases}")
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        self.method: Method = method
        self.releases = int(releases)
        _check_fixed(fixed_from, method)
        self.fixed_from = int(fixed_from)

    def epsilon(self, releases: int | None = None) -> float:
        """Epsilon after ``releases`` releases (default: the releases accounted so far)."""
        n = self.releases if releases is None else releases
        return epsilon_for(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            releases=n,
            delta=self.delta,
            method=self.method,
            fixed_from=self.fixed_from,
        )

    def spend(self, n: int = 1) -> float:
        """Account ``n`` more releases and return the new epsilon.

        Raises:
            ConfigError: if ``n`` is negative.
        """
        if n < 0:
            raise ConfigError(f"privacy: cannot spend {n} releases")
        self.releases += n
        return self.epsilon()

    def would_exceed(self, target_epsilon: float, n: int = 1) -> bool:
        """Whether ``n`` more releases would take epsilon above ``target_epsilon``."""
        return self.epsilon(self.releases + n) > target_epsilon

    def max_releases(self, target_epsilon: float, limit: int = 1_000_000) -> int:
        """The most releases (from zero) whose epsilon stays within ``target_epsilon``.

        Binary search over the monotone epsilon(releases); capped at ``limit``.
        """
        if self.epsilon(1) > target_epsilon:
            return 0
        lo, hi = 1, 2
        while hi < limit and self.epsilon(hi) <= target_epsilon:
            lo, hi = hi, min(limit, hi * 2)
        if hi >= limit and self.epsilon(limit) <= target_epsilon:
            return limit
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.epsilon(mid) <= target_epsilon:
                lo = mid
            else:
                hi = mid
        return lo

    def __repr__(self) -> str:
        return (
            f"Accountant(sigma={self.noise_multiplier}, q={self.sample_rate}, "
            f"delta={self.delta}, method={self.method!r}, releases={self.releases})"
        )
