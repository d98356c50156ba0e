"""Distributed DP for the untrusted fog: Skellam noise shares added before secure aggregation.

Paper: Agarwal, Kairouz, Liu 2021, "The Skellam Mechanism for Differentially Private Federated
Learning", https://arxiv.org/abs/2110.04995 (the mechanism and its RDP, Theorem 3.5); the
conditional randomized rounding is Kairouz, Liu, Steinke 2021, "The Distributed Discrete
Gaussian Mechanism for Federated Learning with Secure Aggregation",
https://arxiv.org/abs/2102.06387 (section 4.1).

**Why Skellam, not the distributed discrete Gaussian.** Both are integer-valued, so they survive
the modular fixed-point encoding of secure aggregation exactly. The sum of independent Skellam
variables is Skellam again (``Sk(a) + Sk(b) = Sk(a + b)``): whatever number of edges survive a
round, the region's sum carries *exactly* ``Sk(surviving * mu)`` and one closed-form RDP bound
accounts it. A sum of discrete Gaussians is not a discrete Gaussian; its bound (Kairouz et al.
2021, Theorem 1) carries an extra term that grows as shares get small. Skellam is also trivial
to sample exactly with numpy (``Poisson(mu) - Poisson(mu)``), the discrete Gaussian needs a
rejection sampler.

**The call contract** (secure aggregation's edge and fog drivers, ``hierfl/secagg``):

1. Both sides build the same :class:`DistributedDP` (configuration, not negotiated);
   :func:`params_from_settings` builds it from the ``[privacy]`` settings, and
   :func:`ledger_from_settings` the fog's ledger:
   ``DistributedDP.for_region(expected_edges=n, clip_norm=C, noise_multiplier=sigma, dim=d)``
   picks the largest power-of-two fixed-point ``scale`` whose sum cannot wrap the int32 range
   (with a margin for the noise) and whose shares numpy samples exactly (``mu <= MAX_MU``); or
   pass ``scale`` yourself (checked the same way).
2. The edge: ``ints = params.round_update(update)`` (clip to C, scale, conditional randomized
   rounding: an int64 vector whose L2 norm is at most ``params.l2_sensitivity``), then
   ``share = add_noise_share(ints, params)`` (adds its ``Sk(mu)`` noise share, reduces modulo
   2^32: a uint32 vector), then masks ``share`` modulo 2^32 as it would any encoding.
   ``params.encode(update)`` does both steps.
   Secure aggregation's own path (``EdgeSecAgg.on_shares(..., integer_noise=hook)``, which
   quantises with ``FixedPoint.quantize``, i.e. nearest rounding): build the parameters with
   ``rounding="nearest"`` (``Delta_2 = C s + sqrt(d)/2``), the codec as
   ``FixedPoint(clip_norm=C, scale=params.scale, max_summands=n)`` (``params.check_codec``
   refuses any other), and pass ``hook = params.secagg_hook()``; the hook refuses a vector
   longer than ``Delta_2`` (NormBoundError) instead of noising it.
3. The fog unmasks the modular sum ``total`` (uint32) of the ``k`` edges that survived and
   reads it back with ``params.decode_sum(total)`` (float64, exact: two's complement / scale).
4. The fog, before the aggregate leaves it: ``ledger.would_exceed(target_epsilon, k)`` (True:
   discard the sum, the region's budget is spent), else ``ledger.spend(k)`` (persisted first)
   and attach ``ledger.metrics()`` (``dp.*``, including ``dp.surviving_edges``) to the release.
   ``k`` is the number of edges whose noised input is *in the sum*; fewer shares means less
   noise and a larger epsilon, and the ledger accounts exactly that.

**Randomness.** ``rng=None`` (production) draws from :func:`csprng`: a fresh numpy Generator per
call (per release) whose 256-bit seed comes from :mod:`secrets` (the operating system's CSPRNG).
Its stream (PCG64DXSM) is not itself a cryptographic generator; the fresh seed per release keeps
every release's noise independent and unpredictable from any other. Pass a seeded generator
only in tests.

**What the accounting assumes.** The fog sees only the sum (secure aggregation); every edge's
share is private to it. The neighbouring relation is *zero-out*: one edge's update replaced by
zero while the edge still takes part and adds its share (sensitivity ``Delta_2``). Who took part
is not hidden (the fog learns the survivors; secure aggregation does not hide them), and it
could not be: an edge's share leaves with the edge, so "remove one edge" would change the noise
as well as the data. The region's noise is the shares of the ``k`` surviving edges; an edge
that colludes with the fog reveals its own share, which then protects nobody: account such a
threat by passing the honest count (``k`` minus the colluders). Every edge is in every round
(no subsampling: dp-accounting has no amplification bound for Skellam, so none is claimed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hierfl.errors import ConfigError, NormBoundError
from hierfl.privacy.ledger import LedgerCorruptError, write_json_atomic
from hierfl.privacy.mechanisms import csprng

__all__ = [
    "DISTRIBUTED_LEDGER_FILE",
    "MAX_MU",
    "MODULUS_BITS",
    "RDP_ORDERS",
    "DistributedDP",
    "DistributedLedger",
    "add_noise_share",
    "csprng",
    "epsilon_distributed",
    "ledger_from_settings",
    "params_from_settings",
    "skellam_rdp",
]

#: the secure-aggregation ring is Z_{2^32}
MODULUS_BITS = 32
_MODULUS = 2**MODULUS_BITS
_HALF = 2 ** (MODULUS_BITS - 1)
#: integer Renyi orders (Theorem 3.5 of Agarwal et al. holds for every integer order > 1)
RDP_ORDERS: tuple[int, ...] = (*range(2, 65), 80, 96, 128, 160, 192, 256, 384, 512, 1024)
#: how many standard deviations of the summed noise the int32 range must leave room for
_NOISE_MARGIN_STD = 12.0
_MAX_ROUNDING_TRIES = 1000
#: numpy's Poisson sampler is accurate (variance within 0.3 %) up to about 2^40 and drifts
#: beyond (+4 % at 1e15); shares are kept well inside: a larger mu only needs a smaller scale
MAX_MU = 2.0**36
DISTRIBUTED_LEDGER_FILE = "privacy-ledger-distributed.json"
_FORMAT = 1


def _bad(msg: str) -> ConfigError:
    return ConfigError(f"privacy (distributed DP): {msg}")


@dataclass(frozen=True, slots=True)
class DistributedDP:
    """Validated parameters of the Skellam mechanism in one region, shared by edges and fog.

    Args:
        clip_norm: C, the L2 bound of one edge's float update (> 0).
        scale: s, the fixed-point scale (a power of two, so decoding is exact).
        noise_multiplier: sigma: when all ``expected_edges`` send, the sum carries noise of
            standard deviation ``sigma * C`` per coordinate (``sigma * C * s`` in integers).
        expected_edges: n, the edges whose shares make up that noise (the round's roster).
        dim: d, the update's length.
        beta: the conditional rounding's bias bound (Kairouz et al. 2021 use ``e^-0.5``):
            rounding is redrawn until the norm is within :attr:`l2_sensitivity`, which each
            draw meets with probability at least ``1 - beta``.
        rounding: ``"conditional"`` (default: :meth:`round_update`'s conditional randomized
            rounding, unbiased) or ``"nearest"``: the update was rounded to the nearest integer
            elsewhere (secure aggregation's ``FixedPoint.quantize``), which moves each
            coordinate by at most 1/2, so ``Delta_2 = C s + sqrt(d) / 2`` (deterministic).

    Raises:
        ConfigError: for nonsense values, or a sum that could wrap around the int32 range.
    """

    clip_norm: float
    scale: float
    noise_multiplier: float
    expected_edges: int
    dim: int
    beta: float = math.exp(-0.5)
    rounding: str = "conditional"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise _bad(f"clip_norm (C) must be finite and > 0, got {self.clip_norm}")
        if not (math.isfinite(self.scale) and self.scale > 0) or math.frexp(self.scale)[0] != 0.5:
            raise _bad(f"scale must be a positive power of two (exact decoding), got "
                       f"{self.scale}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise _bad(f"noise_multiplier (sigma) must be > 0, got {self.noise_multiplier}: "
                       "without noise no epsilon bounds the release")
        if isinstance(self.expected_edges, bool) or not isinstance(self.expected_edges, int) \
                or self.expected_edges < 1:
            raise _bad(f"expected_edges must be an integer >= 1, got {self.expected_edges!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise _bad(f"dim must be an integer >= 1, got {self.dim!r}")
        if self.rounding not in ("conditional", "nearest"):
            raise _bad(f"rounding must be 'conditional' or 'nearest', got {self.rounding!r}")
        if not 0.0 < self.beta < 1.0:
            raise _bad(f"beta must be in (0, 1), got {self.beta}")
        if self.mu_per_edge > MAX_MU:
            raise _bad(
                f"each share's Skellam mu ({self.mu_per_edge:.4g}) is above {MAX_MU:.4g}, where "
                "numpy's Poisson sampler stays exact enough for the accounting: lower the scale "
                f"(now {self.scale}); DistributedDP.for_region picks one that fits"
            )
        need = self.max_abs_sum()
        if need >= _HALF:
            raise _bad(
                f"the sum of {self.expected_edges} encodings could wrap around the int32 range "
                f"(|coordinate| up to {need:.4g} >= 2^31 with scale {self.scale} and a "
                f"{_NOISE_MARGIN_STD:g}-std noise margin): lower the scale or the clip norm"
            )

    # --- derived figures ----------------------------------------------------------------

    @property
    def mu_per_edge(self) -> float:
        """mu of one edge's share ``Sk(mu, mu)`` (variance ``2 mu``): ``(sigma C s)^2 / (2 n)``."""
        return (self.noise_multiplier * self.clip_norm * self.scale) ** 2 / (
            2.0 * self.expected_edges)

    @property
    def l2_sensitivity(self) -> float:
        """Delta_2: the L2 bound of one rounded update, in integers (Kairouz et al. 2021,
        section 4.1): ``min(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2), (c + sqrt(d))^2)``
        under the square root, with ``c = C s``; ``c + sqrt(d) / 2`` with
        ``rounding="nearest"``."""
        c, d = self.clip_norm * self.scale, float(self.dim)
        if self.rounding == "nearest":
            return c + math.sqrt(d) / 2.0
        cond = c * c + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / self.beta)) * (
            c + math.sqrt(d) / 2.0)
        return math.sqrt(min(cond, (c + math.sqrt(d)) ** 2))

    @property
    def l1_sensitivity(self) -> float:
        """Delta_1 of one rounded (integer) update: ``min(Delta_2^2, sqrt(d) Delta_2)``."""
        l2 = self.l2_sensitivity
        return min(l2 * l2, math.sqrt(self.dim) * l2)

    def noise_std(self, surviving: int) -> float:
        """Per-coordinate std (float units) of the noise a sum of ``surviving`` shares carries:
        ``sigma C sqrt(surviving / n)``."""
        return math.sqrt(2.0 * self.mu_per_edge * surviving) / self.scale

    def max_abs_sum(self) -> float:
        """The largest |coordinate| the int sum of ``n`` encodings may reach: every rounded
        coordinate is at most ``ceil(C s + 1/2)``, plus a 12-std margin of the summed
        noise."""
        n = self.expected_edges
        noise = _NOISE_MARGIN_STD * math.sqrt(2.0 * self.mu_per_edge * n) + _NOISE_MARGIN_STD
        return n * math.ceil(self.clip_norm * self.scale + 0.5) + noise

    @classmethod
    def for_region(cls, *, expected_edges: int, clip_norm: float, noise_multiplier: float,
                   dim: int, beta: float = math.exp(-0.5),
                   rounding: str = "conditional") -> DistributedDP:
        """The parameters with the largest power-of-two scale whose sum cannot wrap.

        Raises:
            ConfigError: for nonsense values, or when no scale >= 2^-30 fits.
        """
        if not (math.isfinite(clip_norm) and clip_norm > 0):
            raise _bad(f"clip_norm (C) must be finite and > 0, got {clip_norm}")
        if isinstance(expected_edges, int) and expected_edges >= 1:
            width = clip_norm * (expected_edges + _NOISE_MARGIN_STD * max(noise_multiplier, 0.0))
            exponent = math.floor(math.log2(_HALF / width))
            if noise_multiplier > 0:
                # (sigma C s)^2 / (2 n) <= MAX_MU
                cap = math.sqrt(2.0 * expected_edges * MAX_MU) / (noise_multiplier * clip_norm)
                exponent = min(exponent, math.floor(math.log2(cap)))
        else:
            exponent = 0
        last: ConfigError | None = None
        for e in range(exponent + 1, -31, -1):
            try:
                return cls(clip_norm=clip_norm, scale=2.0**e, noise_multiplier=noise_multiplier,
                           expected_edges=expected_edges, dim=dim, beta=beta,
                           rounding=rounding)
            except ConfigError as exc:
                if "wrap around" not in str(exc) and "above" not in str(exc):
                    raise
                last = exc
        raise _bad(f"no fixed-point scale >= 2^-30 fits {expected_edges} edges of norm "
                   f"{clip_norm}") from last

    # --- the edge's side ----------------------------------------------------------------

    def round_update(self, update: npt.ArrayLike,
                     rng: np.random.Generator | None = None) -> npt.NDArray[np.int64]:
        """Clip to C, scale by s and round with conditional randomized rounding.

        Args:
            update: the float update, shape ``(dim,)``; NaN/Inf refused.
            rng: None: :func:`csprng` (production); a seeded generator in tests.

        Returns:
            int64 vector whose L2 norm is at most :attr:`l2_sensitivity` (unbiased up to the
            conditioning: ``E[y] = x s`` before the norm test).

        Raises:
            ConfigError: wrong shape or a non-finite coordinate (the edge's own bug).
            NormBoundError: no draw met the bound in 1000 tries (probability ``beta^1000``).
        """
        x = np.array(update, dtype=np.float64)
        if x.shape != (self.dim,):
            raise _bad(f"update has shape {x.shape}, the region's dim is ({self.dim},)")
        if not np.all(np.isfinite(x)):
            raise _bad("update holds NaN or Inf: nothing bounds its contribution")
        norm = float(np.sqrt(x @ x))
        if norm > self.clip_norm:
            x *= self.clip_norm / norm
        x *= self.scale
        floor = np.floor(x)
        frac = x - floor
        bound_sq = self.l2_sensitivity ** 2
        gen = rng if rng is not None else csprng()
        for _ in range(_MAX_ROUNDING_TRIES):
            y = floor + (gen.random(self.dim) < frac)
            if float(y @ y) <= bound_sq:
                return y.astype(np.int64)
        raise NormBoundError(f"conditional rounding found no draw within L2 "
                             f"{self.l2_sensitivity:.6g} in {_MAX_ROUNDING_TRIES} tries")

    def encode(self, update: npt.ArrayLike,
               rng: np.random.Generator | None = None) -> npt.NDArray[np.uint32]:
        """:meth:`round_update` then :func:`add_noise_share`: what the edge masks."""
        gen = rng if rng is not None else csprng()
        return add_noise_share(self.round_update(update, gen), self, rng=gen)

    def check_codec(self, codec: Any) -> None:
        """Refuse a secure-aggregation codec (``hierfl.secagg.encoding.FixedPoint``) that does
        not encode with these parameters: same clip norm and scale, room for every edge.

        Raises:
            ConfigError: naming the mismatch.
        """
        if float(codec.scale) != self.scale or float(codec.clip_norm) != self.clip_norm:
            raise _bad(f"the codec encodes with C = {codec.clip_norm}, scale {codec.scale}; "
                       f"the noise is calibrated to C = {self.clip_norm}, scale {self.scale}: "
                       "build the codec from these parameters (FixedPoint(clip_norm=C, "
                       "scale=params.scale, max_summands=n))")
        if int(codec.max_summands) < self.expected_edges:
            raise _bad(f"the codec sums at most {codec.max_summands} updates, the region "
                       f"expects {self.expected_edges}")

    def secagg_hook(self) -> Callable[[npt.NDArray[np.int64]], npt.NDArray[np.int64]]:
        """The ``integer_noise`` hook of secure aggregation's edge (``hierfl/secagg``): given
        the clipped update quantised with this scale (int64, not reduced), return it with this
        edge's Skellam share added (int64, not reduced: the caller reduces mod 2^32 and masks).

        The hook refuses (NormBoundError) a vector whose L2 norm is above
        :attr:`l2_sensitivity`: it was not rounded the way the accounting assumes (use
        ``rounding="nearest"`` for ``FixedPoint.quantize``, or :meth:`round_update`).
        Each call draws from a fresh :func:`csprng`.
        """
        def hook(quantised: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
            v = self._check_ints(quantised)
            f = v.astype(np.float64)
            norm = math.sqrt(float(f @ f))
            if norm > self.l2_sensitivity * (1.0 + 1e-12):
                raise NormBoundError(
                    f"quantised update has L2 norm {norm:.6g} > Delta_2 "
                    f"{self.l2_sensitivity:.6g} ({self.rounding} rounding at scale "
                    f"{self.scale}): the noise would not cover it")
            return v + _skellam(self, csprng())

        return hook

    def _check_ints(self, int_vector: npt.ArrayLike) -> npt.NDArray[np.int64]:
        v = np.asarray(int_vector)
        if v.shape != (self.dim,):
            raise _bad(f"int_vector has shape {v.shape}, the region's dim is ({self.dim},)")
        if not np.issubdtype(v.dtype, np.integer):
            raise _bad(f"int_vector must hold integers (the rounded update), got {v.dtype}")
        v = v.astype(np.int64)
        bound = math.ceil(self.clip_norm * self.scale + 0.5)
        if v.size and int(np.abs(v).max()) > bound:
            raise _bad(f"int_vector has a coordinate beyond ceil(C s + 1/2) = {bound}: not a "
                       "rounded update of this region's parameters")
        return v

    # --- the fog's side -----------------------------------------------------------------

    @staticmethod
    def decode_integers(total: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The modular sum as signed integers (two's complement int32), widened to int64."""
        return np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.int64)

    def decode_sum(self, total: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The unmasked modular sum (uint32) of the surviving edges as floats (exact)."""
        t = np.asarray(total)
        if t.shape != (self.dim,):
            raise _bad(f"sum has shape {t.shape}, the region's dim is ({self.dim},)")
        return self.decode_integers(t).astype(np.float64) / self.scale

    def rdp(self, surviving: int) -> npt.NDArray[np.float64]:
        """RDP at :data:`RDP_ORDERS` of one release whose sum holds ``surviving`` shares."""
        if isinstance(surviving, bool) or not isinstance(surviving, int) or surviving < 1:
            raise _bad(f"surviving edges must be an integer >= 1, got {surviving!r}: a sum "
                       "without a noise share carries no noise and must not be released")
        return skellam_rdp(self.mu_per_edge * surviving, self.l2_sensitivity,
                           self.l1_sensitivity)


def add_noise_share(int_vector: npt.ArrayLike, params: DistributedDP, *,
                    rng: np.random.Generator | None = None) -> npt.NDArray[np.uint32]:
    """Add one edge's Skellam noise share and reduce modulo 2^32.

    Args:
        int_vector: the edge's rounded update (integers, shape ``(dim,)``), normally
            :meth:`DistributedDP.round_update`'s output.
        params: the region's :class:`DistributedDP`.
        rng: None: :func:`csprng` (production); a seeded generator only in tests.

    Returns:
        uint32 vector ``(int_vector + Poisson(mu) - Poisson(mu)) mod 2^32`` per coordinate,
        ``mu = params.mu_per_edge``: ready to be masked.

    Raises:
        ConfigError: wrong shape, non-integer values, or a coordinate beyond
            ``ceil(C s + 1/2)``.
    """
    v = params._check_ints(int_vector)
    noise = _skellam(params, rng if rng is not None else csprng())
    return np.mod(v + noise, _MODULUS).astype(np.uint32)


def _skellam(params: DistributedDP, gen: np.random.Generator) -> npt.NDArray[np.int64]:
    """One share: ``Poisson(mu) - Poisson(mu)`` per coordinate (exact Skellam)."""
    mu = params.mu_per_edge
    return np.asarray(gen.poisson(mu, params.dim).astype(np.int64)
                      - gen.poisson(mu, params.dim), dtype=np.int64)


def skellam_rdp(mu: float, l2: float, l1: float,
                orders: Sequence[int] = RDP_ORDERS) -> npt.NDArray[np.float64]:
    """RDP of the multi-dimensional Skellam mechanism ``Sk(mu, mu)`` per coordinate.

    Agarwal, Kairouz, Liu 2021, Theorem 3.5: for integer ``alpha > 1`` and sensitivities
    ``Delta_2``, ``Delta_1`` (integers),
    ``eps(alpha) = alpha Delta_2^2 / (4 mu) + min(((2 alpha - 1) Delta_2^2 + 6 Delta_1) /
    (16 mu^2), 3 Delta_1 / (4 mu))``. The first term is the Gaussian's with variance ``2 mu``.
    """
    if not (math.isfinite(mu) and mu > 0):
        raise _bad(f"Skellam mu must be > 0, got {mu}")
    a = np.asarray(orders, dtype=np.float64)
    gauss = a * l2 * l2 / (4.0 * mu)
    extra = np.minimum(((2.0 * a - 1.0) * l2 * l2 + 6.0 * l1) / (16.0 * mu * mu),
                       3.0 * l1 / (4.0 * mu))
    return np.asarray(gauss + extra, dtype=np.float64)


def _epsilon_from_rdp(rdp: npt.NDArray[np.float64], delta: float) -> float:
    # Lazy: dp_accounting imports scipy (~1 s); only a DP federation pays it.
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon  # noqa: PLC0415

    eps, _ = compute_epsilon(RDP_ORDERS, list(map(float, rdp)), delta)
    return float(eps)


def epsilon_distributed(params: DistributedDP, surviving: Sequence[int], *,
                        delta: float) -> float:
    """Epsilon at ``delta`` of releases whose sums held ``surviving[i]`` shares each.

    RDP composes by addition over releases (Mironov 2017, Proposition 1); the conversion to
    (epsilon, delta) is dp-accounting's ``compute_epsilon`` (Canonne, Kamath, Steinke 2020).

    Raises:
        ConfigError: delta outside (0, 1) or a count below 1.
    """
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        raise _bad(f"delta must be in (0, 1), got {delta}")
    if not surviving:
        return 0.0
    total = np.zeros(len(RDP_ORDERS))
    for k in surviving:
        total += params.rdp(k)
    return _epsilon_from_rdp(total, delta)


class DistributedLedger:
    """The persisted account of one region's distributed-DP releases, with their survivors.

    Releases are grouped by ``(mu per share, Delta_2, Delta_1, surviving shares)``; the file
    (``version`` 1) holds ``{"groups": [{"mu", "l2", "l1", "shares", "releases"}], ...}``.
    A restart reads it back and never resets spent budget; a file that is not a ledger of
    ``population`` raises :class:`~hierfl.privacy.ledger.LedgerCorruptError`.

    Args:
        path: the JSON file (None: memory only).
        population: the region (fog id); checked on load.
        params: the region's current parameters.
        delta: the delta epsilon is reported at, in (0, 1).

    Raises:
        ConfigError: delta outside (0, 1).
        LedgerCorruptError: ``path`` exists and is not this region's distributed ledger.
    """

    def __init__(self, path: Path | None, *, population: str, params: DistributedDP,
                 delta: float) -> None:
        if not (math.isfinite(delta) and 0.0 < delta < 1.0):
            raise _bad(f"delta must be in (0, 1), got {delta}")
        self.path = path
        self.population = population
        self.params = params
        self.delta = float(delta)
        self.last_surviving = 0
        # [mu, l2, l1, shares, releases]
        self._groups: list[list[Any]] = []
        if path is not None and path.exists():
            self._load(path)

    @property
    def releases(self) -> int:
        """Every release accounted."""
        return sum(int(g[4]) for g in self._groups)

    def _rdp_total(self) -> npt.NDArray[np.float64]:
        total = np.zeros(len(RDP_ORDERS))
        for mu, l2, l1, shares, n in self._groups:
            total += n * skellam_rdp(mu * shares, l2, l1)
        return total

    def epsilon(self, surviving: int | None = None, releases: int = 1) -> float:
        """Epsilon after the releases so far (plus ``releases`` more whose sums hold
        ``surviving`` shares each)."""
        total = self._rdp_total()
        if surviving is not None:
            total = total + releases * self.params.rdp(surviving)
        if not total.any():
            return 0.0
        return _epsilon_from_rdp(total, self.delta)

    def would_exceed(self, target_epsilon: float | None, surviving: int) -> bool:
        """Whether one more release with ``surviving`` shares would exceed the budget."""
        if target_epsilon is None:
            return False
        return self.epsilon(surviving) > target_epsilon

    def spend(self, surviving: int) -> float:
        """Account one release whose sum holds ``surviving`` noise shares; persist it before
        the release leaves; return the new epsilon.

        Raises:
            ConfigError: ``surviving`` < 1 or above ``expected_edges`` (the scale's headroom
                was sized for at most ``expected_edges`` summands).
            StoreError: the ledger cannot be written (the release must not go out then).
        """
        p = self.params
        p.rdp(surviving)  # validates
        if surviving > p.expected_edges:
            raise _bad(f"{surviving} surviving edges exceed expected_edges "
                       f"{p.expected_edges}: the sum may have wrapped")
        key = [p.mu_per_edge, p.l2_sensitivity, p.l1_sensitivity, int(surviving)]
        for g in self._groups:
            if g[:4] == key:
                g[4] += 1
                break
        else:
            self._groups.append([*key, 1])
        self.last_surviving = int(surviving)
        eps = self.epsilon()
        if self.path is not None:
            write_json_atomic(self.path, {
                "version": _FORMAT, "kind": "distributed-skellam",
                "population": self.population, "delta": self.delta,
                "groups": [{"mu": m, "l2": a, "l1": b, "shares": int(s), "releases": int(n)}
                           for m, a, b, s, n in self._groups],
                "last_surviving": self.last_surviving,
                "epsilon": eps if math.isfinite(eps) else None, "updated_at": time.time(),
            })
        return eps

    def metrics(self) -> dict[str, float]:
        """The account as ``dp.*`` metrics (what each release and model records)."""
        eps = self.epsilon()
        k = self.last_surviving
        p = self.params
        return {
            "dp.epsilon": eps if math.isfinite(eps) else 1e300,
            "dp.delta": self.delta,
            "dp.releases": float(self.releases),
            "dp.noise_multiplier": p.noise_multiplier,
            "dp.clip_norm": p.clip_norm,
            "dp.expected_edges": float(p.expected_edges),
            "dp.surviving_edges": float(k),
            # the noise the last sum actually carried, over the rounded update's sensitivity
            "dp.effective_noise_multiplier": (
                math.sqrt(2.0 * p.mu_per_edge * k) / p.l2_sensitivity if k else 0.0),
        }

    def _load(self, path: Path) -> None:
        import json  # noqa: PLC0415

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerCorruptError(
                f"privacy ledger {path} cannot be read ({exc}); it holds the spent budget and "
                "is never reset silently: restore it, or delete it knowingly") from exc
        try:
            if not isinstance(data, dict) or data.get("version") != _FORMAT \
                    or data.get("kind") != "distributed-skellam":
                raise ValueError("not a version-1 distributed-DP ledger")
            if data.get("population") != self.population:
                raise ValueError(f"it is the ledger of {data.get('population')!r}, "
                                 f"not of {self.population!r}")
            parsed: list[list[Any]] = []
            for g in data["groups"]:
                mu, l2, l1 = float(g["mu"]), float(g["l2"]), float(g["l1"])
                s, n = g["shares"], g["releases"]
                if (not all(math.isfinite(v) and v > 0 for v in (mu, l2, l1))
                        or not isinstance(s, int) or s < 1 or not isinstance(n, int) or n < 0):
                    raise ValueError(f"bad release group {g!r}")
                parsed.append([mu, l2, l1, s, n])
            last = int(data.get("last_surviving", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerCorruptError(
                f"privacy ledger {path} is malformed ({exc}); it is never reset silently: "
                "restore it, or delete it knowingly") from exc
        self._groups = parsed
        self.last_surviving = last


def params_from_settings(privacy: Any, *, expected_edges: int, dim: int) -> DistributedDP:
    """The region's parameters from a tier's ``[privacy]`` settings (``untrusted_fog`` with
    secure aggregation): ``clip_norm`` and ``noise_multiplier`` from them, nearest rounding
    (secure aggregation's ``FixedPoint.quantize``), the largest scale that fits
    (:meth:`DistributedDP.for_region`). Edges and fog call it with the same arguments.

    Raises:
        ConfigError: DP is not in ``untrusted_fog`` mode, or the parameters make no sense.
    """
    if getattr(privacy, "mode", "off") != "untrusted_fog":
        raise _bad(f"distributed DP needs privacy.mode = 'untrusted_fog', got "
                   f"{getattr(privacy, 'mode', None)!r}")
    return DistributedDP.for_region(expected_edges=expected_edges,
                                    clip_norm=float(privacy.clip_norm),
                                    noise_multiplier=float(privacy.noise_multiplier), dim=dim,
                                    rounding="nearest")


def ledger_from_settings(privacy: Any, fog_id: str, params: DistributedDP,
                         *fallbacks: Path | None) -> DistributedLedger:
    """The fog's distributed-DP ledger: :data:`DISTRIBUTED_LEDGER_FILE` in
    ``privacy.ledger_dir`` (else the first fallback that is set, e.g. the fog's ``spool_dir``
    then ``security.state_dir``; memory only without any), at ``privacy.delta``.

    Raises:
        ConfigError: a nonsense delta.
        LedgerCorruptError: the file exists and is not this region's ledger.
    """
    folder = privacy.ledger_folder(*fallbacks)
    return DistributedLedger(None if folder is None else folder / DISTRIBUTED_LEDGER_FILE,
                             population=fog_id, params=params, delta=float(privacy.delta))
