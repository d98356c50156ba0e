"""Distributed DP through secure aggregation: ``privacy.mode = "untrusted_fog"`` with
``secagg.mode = "secure"`` (docs/privacy.md, docs/secure-aggregation.md).

The math is :mod:`hierfl.privacy.distributed` (Skellam shares, its ledger); this module wires
it into the secure rounds:

- **Settings** (:func:`secure_ddp_secagg`, called by the tier settings' validators): the masked
  vector is the clipped update alone (``secagg.weighted`` is forced to false when left at its
  default, refused when set true: a claimed sample weight inside the sum would scale one
  edge's contribution past the clip norm the noise is calibrated to); the codec's clip norm is
  ``privacy.clip_norm`` (a different ``secagg.clip_norm`` is refused); the fixed-point scale
  comes from :meth:`DistributedDP.for_region` (a ``secagg.scale`` is refused); every edge of
  the region is in every round (``privacy.sample_rate < 1`` is refused: no amplification by
  sampling is claimed for Skellam).
- **Both sides, each round** (:func:`round_params`): ``params_from_settings(privacy,
  expected_edges=len(roster), dim=dim)`` and ``check_codec`` of the round's codec. The fog
  announces that scale in its signed ``begin``; an edge recomputes the parameters from its own
  settings and the announced roster and dimension, and refuses a round whose codec differs
  (:func:`edge_noise_for`), so a fog cannot shrink the noise by announcing another scale.
- **The edge** adds no continuous Gaussian share (EdgePrivacy only clips); its Skellam share
  is added to the quantised update inside the SecAgg+ round (``DistributedDP.secagg_hook``).
- **The fog** (:class:`DistributedRegion`, in place of RegionPrivacy in the fog round) accounts
  each release with :class:`DistributedLedger` by the survivors whose noised input is in the
  sum, persists it before the release leaves, records ``dp.*`` metrics and stops the region at
  ``target_epsilon`` like the other DP modes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hierfl.errors import PrivacyBudgetExhaustedError, StateError
from hierfl.privacy.distributed import (
    DistributedDP,
    DistributedLedger,
    ledger_from_settings,
    params_from_settings,
)
from hierfl.secagg.encoding import FixedPoint

if TYPE_CHECKING:
    from hierfl.config import FogSettings, PrivacySettings, SecAggSettings
    from hierfl.secagg.driver import BeginRound, IntegerNoise

__all__ = ["DistributedRegion", "distributed_region", "edge_noise_for", "round_params",
           "secure_ddp", "secure_ddp_secagg"]

log = logging.getLogger(__name__)


def secure_ddp(privacy: Any, secagg: Any) -> bool:
    """Whether a tier runs distributed DP through secure aggregation."""
    return (getattr(privacy, "mode", "off") == "untrusted_fog"
            and getattr(secagg, "mode", "robust") == "secure")


def secure_ddp_secagg(privacy: PrivacySettings, secagg: SecAggSettings) -> SecAggSettings:
    """The ``[secagg]`` section distributed DP runs with (unchanged outside it).

    ``weighted`` left at its default is forced to false (logged); ``clip_norm`` left at its
    default becomes ``privacy.clip_norm``.

    Raises:
        ValueError: ``weighted = true``, a ``clip_norm`` other than ``privacy.clip_norm``, a
            ``scale``, or ``privacy.sample_rate < 1`` (each message says why).
    """
    if not secure_ddp(privacy, secagg):
        return secagg
    given = secagg.model_fields_set
    why = ("privacy.mode = 'untrusted_fog' with secagg.mode = 'secure' (distributed DP, "
           "docs/privacy.md)")
    if secagg.weighted and "weighted" in given:
        raise ValueError(
            f"{why} needs secagg.weighted = false: a weighted edge masks (w x, w) with a sample "
            "count w it claims, so one edge could move the region's sum by w times the clip "
            "norm, and the noise shares are calibrated to one clip norm per edge")
    if "clip_norm" in given and secagg.clip_norm != privacy.clip_norm:
        raise ValueError(
            f"{why}: secagg.clip_norm ({secagg.clip_norm}) must equal privacy.clip_norm "
            f"({privacy.clip_norm}), the bound the noise is calibrated to (or leave it unset)")
    if secagg.scale is not None:
        raise ValueError(
            f"{why}: leave secagg.scale unset; the fixed-point scale is the one "
            "DistributedDP.for_region sizes for the noise (both edges and fog compute it)")
    if privacy.sample_rate < 1.0:
        raise ValueError(
            f"{why}: privacy.sample_rate must be 1 (every edge of the region is in every secure "
            "round; no amplification by sampling is accounted for Skellam noise)")
    if secagg.weighted:
        log.info("%s: secagg.weighted forced to false (each survivor counts once)", why)
    return secagg.model_copy(update={"weighted": False, "clip_norm": privacy.clip_norm})


def round_params(privacy: Any, *, roster_size: int, dim: int,
                 codec: FixedPoint | None = None) -> DistributedDP:
    """One secure round's Skellam parameters (the same on edges and fog), its codec checked.

    Args:
        privacy: the tier's ``[privacy]`` settings (``untrusted_fog``).
        roster_size: the round's roster, n: the noise shares the scale is sized for.
        dim: the masked vector's length.
        codec: the round's fixed-point codec (None: the one these parameters imply).

    Raises:
        ConfigError: nonsense parameters, or a codec that does not encode with them.
    """
    params = params_from_settings(privacy, expected_edges=roster_size, dim=dim)
    params.check_codec(codec if codec is not None else FixedPoint(
        clip_norm=params.clip_norm, scale=params.scale, max_summands=roster_size))
    return params


def edge_noise_for(privacy: Any) -> Callable[[BeginRound], IntegerNoise]:
    """The edge's per-round noise hook factory: given the fog's signed ``begin``, the
    ``integer_noise`` hook of :class:`hierfl.secagg.client.EdgeSecAgg` with this edge's
    Skellam share.

    The returned callable raises ConfigError (the driver counts it and the edge sits the round
    out) when the announced codec differs from the one the edge's own settings give for that
    roster and dimension.

    Raises:
        ConfigError: at start, when the settings give no valid parameters and codec at all.
    """
    round_params(privacy, roster_size=1, dim=1)  # checked at start, codec included

    def for_round(begin: BeginRound) -> IntegerNoise:
        params = round_params(privacy, roster_size=len(begin.roster), dim=begin.dim,
                              codec=begin.params().codec)
        return params.secagg_hook()

    return for_round


@dataclass
class DistributedRegion:
    """The fog round's privacy state under distributed DP (in place of
    :class:`~hierfl.privacy.region.RegionPrivacy`, same calls).

    Each closed fog round is one release whose sum carries the Skellam shares of the edges
    whose masked input survived: :meth:`note_secure_sum` tells it which round's parameters
    and survivors the next :meth:`spend` accounts.

    Args:
        ledger: the region's persisted :class:`DistributedLedger`.
        privacy: the fog's ``[privacy]`` settings.
        expected_edges: the roster size a round is planned with before one ran.
        target_epsilon: the budget (None: account only).
        k2: releases per cloud round.
    """

    ledger: DistributedLedger
    privacy: Any
    expected_edges: int
    target_epsilon: float | None
    k2: int = 1
    exhausted: bool = False
    sampled: frozenset[str] | None = None
    pending: int | None = None
    planned: bool = False

    @property
    def sample_rate(self) -> float:
        """q: every edge of the region is in every round."""
        return 1.0

    def _epsilon_after(self, releases: int, surviving: int) -> float:
        return self.ledger.epsilon(surviving, releases=releases)

    def plan(self, dim: int) -> None:
        """The update's dimension, from the fog's first (or resumed) global model: until a
        secure round ran, the budget is checked with the parameters of ``expected_edges``
        edges at that dimension (the noise a sum of all shares carries does not depend on
        the count, only the scale does)."""
        if not self.planned:
            self.ledger.params = params_from_settings(
                self.privacy, expected_edges=self.expected_edges, dim=dim)
            self.planned = True

    def can_start(self, releases: int) -> bool:
        """Whether ``releases`` more releases stay within the budget: with the survivors of
        the sum at hand (when closing), else with every expected edge (a fog round about to
        open; dropouts there are caught when it closes). Marks the region exhausted (logged
        once) when not."""
        if self.exhausted:
            return False
        if self.target_epsilon is None or releases < 1:
            return True
        if not self.planned and self.pending is None:
            return True  # no round ran: the update's dimension (hence the scale) is unknown
        k = self.pending if self.pending is not None else self.ledger.params.expected_edges
        after = self._epsilon_after(releases, k)
        if after > self.target_epsilon:
            self.exhausted = True
            log.warning(
                "privacy: region %s stops releasing: %d more release(s) with %d noise share(s) "
                "would take epsilon from %.4g to %.4g, above target_epsilon %s (delta %g, %d "
                "releases so far; distributed DP)", self.ledger.population, releases, k,
                self.ledger.epsilon(), after, self.target_epsilon, self.ledger.delta,
                self.ledger.releases)
            return False
        return True

    def check_release(self) -> None:
        """Raises PrivacyBudgetExhaustedError when the next release would exceed the budget."""
        if not self.can_start(1):
            raise PrivacyBudgetExhaustedError(
                f"region {self.ledger.population}: one more release would exceed "
                f"target_epsilon {self.target_epsilon} (epsilon {self.ledger.epsilon():.4g})")

    def note_secure_sum(self, result: Any) -> None:
        """The secure round whose sum closes the fog round next: its parameters and the
        number of edges whose masked (noised) input is in the sum."""
        params = getattr(result, "dp_params", None)
        if isinstance(params, DistributedDP):
            self.ledger.params = params
            self.planned = True
        self.pending = len(result.survivors)

    def spend(self) -> float:
        """Account the release of the noted sum (persisted before it leaves).

        Raises:
            StateError: no secure sum was noted (a secure fog closes only with one).
            StoreError: the ledger cannot be written (nothing leaves).
        """
        if self.pending is None:
            raise StateError(f"region {self.ledger.population}: a release without a secure "
                             "sum cannot be accounted under distributed DP")
        k, self.pending = self.pending, None
        eps = self.ledger.spend(k)
        log.info("privacy: region %s released a sum of %d/%d noise shares: epsilon %.4g after "
                 "%d releases (distributed DP)", self.ledger.population, k,
                 self.ledger.params.expected_edges, eps, self.ledger.releases)
        return eps

    def draw_sample(self) -> frozenset[str] | None:
        """Every edge is in every round (no sampling)."""
        self.sampled = None
        return None

    def check_sampled(self, edge: str) -> None:
        """Nothing to check: no sampling."""

    def metrics(self) -> dict[str, float]:
        """``dp.*`` metrics: the ledger's (``dp.expected_edges``, ``dp.surviving_edges``,
        ``dp.effective_noise_multiplier``, ``dp.epsilon``...), the budget, and
        ``dp.next_epsilon``: epsilon after one more cloud round (``k2`` releases) with every
        expected edge, which the cloud's budget stop reads (hierfl/privacy/federation.py)."""
        out = self.ledger.metrics()
        out["dp.sample_rate"] = 1.0
        out["dp.k2"] = float(self.k2)
        out["dp.target_epsilon"] = (float(self.target_epsilon)
                                    if self.target_epsilon is not None else 0.0)
        out["dp.distributed"] = 1.0
        if self.planned:
            nxt = self._epsilon_after(self.k2, self.ledger.params.expected_edges)
            out["dp.next_epsilon"] = nxt if math.isfinite(nxt) else 1e300
        return out


def distributed_region(s: FogSettings) -> DistributedRegion:
    """The fog's :class:`DistributedRegion` with its ledger (``privacy-ledger-distributed.json``
    in the ledger folder).

    Raises:
        LedgerCorruptError: the ledger on disk is unreadable (never reset silently).
    """
    p = s.privacy
    expected = max(len(s.allowed_edges), p.population or 0, 1)
    # placeholder parameters until the first round's roster and dimension are known: the
    # ledger stores every release's own parameters, so nothing is accounted with these
    params = round_params(p, roster_size=expected, dim=1)  # checked at start, codec included
    ledger = ledger_from_settings(p, s.fog_id, params, s.spool_dir, s.security.state_dir)
    return DistributedRegion(ledger, p, expected, p.target_epsilon, k2=s.k2)
