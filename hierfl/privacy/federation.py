"""The federation's privacy account at the cloud: the worst region's, and the budget stop.

Each fog reports its region's account with its aggregate (``dp.*`` metrics: releases so far,
sigma, q, C, k2). Regions are disjoint populations, so the federation is as private as its
least private region: its epsilon is the worst region's. The account is kept in each
checkpoint's metadata (``privacy``), so a restarted cloud resumes it; a region that did not
report in a round keeps its last account.

Budget stop: after a version is saved, the cloud checks every region against the next cloud
round (``k2`` more releases). If one would exceed ``target_epsilon`` the federation stops there:
that version is the final model, its status ``stopped: privacy budget``. In record mode (each
edge accounts for itself) the federation stops the same way once every region it knows has
reported ``dp.region_spent`` (no edge of it will send again: hierfl/privacy/record.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from hierfl.errors import ConfigError
from hierfl.privacy.accountant import Method, epsilon_for
from hierfl.privacy.record import REGION_SPENT_METRIC

__all__ = ["STOPPED", "FederationPrivacy"]

log = logging.getLogger(__name__)

STOPPED = "stopped: privacy budget"


@dataclass
class FederationPrivacy:
    """The cloud's view of every region's privacy account.

    Args:
        mode: the federation's DP mode (for the metadata).
        delta: the delta epsilon is reported at.
        target_epsilon: the budget (None: a region's own reported target, if any).
        method: the accountant's method.
        regions: fog id -> last reported account (``releases``, ``noise_multiplier``,
            ``sample_rate``, ``clip_norm``, ``k2``, ``epsilon``).
        status: ``running`` or :data:`STOPPED`.
    """

    mode: str
    delta: float
    target_epsilon: float | None
    method: Method = "rdp"
    regions: dict[str, dict[str, float]] = field(default_factory=dict)
    status: str = "running"

    @classmethod
    def restore(cls, meta: dict[str, Any] | None, **params: Any) -> FederationPrivacy:
        """Resume from a checkpoint's ``privacy`` metadata (or start empty)."""
        fed = cls(**params)
        if isinstance(meta, dict):
            regions = meta.get("regions")
            if isinstance(regions, dict):
                fed.regions = {str(k): {kk: float(vv) for kk, vv in v.items()}
                               for k, v in regions.items() if isinstance(v, dict)}
            if meta.get("status") == STOPPED:
                fed.status = STOPPED
        return fed

    @property
    def stopped(self) -> bool:
        """Whether the federation stopped on its privacy budget."""
        return self.status == STOPPED

    def observe(self, fogs: dict[str, dict[str, Any]]) -> None:
        """Take the accounts the fogs of a closed round reported (their ``dp.*`` metrics)."""
        for fog, info in fogs.items():
            m = info.get("metrics") or {}
            if "dp.releases" not in m:
                if "dp.epsilon" in m:  # record mode: the worst edge's own epsilon
                    self.regions[fog] = {"epsilon": float(m["dp.epsilon"])}
                if float(m.get(REGION_SPENT_METRIC, 0.0)) >= 1.0:
                    # record mode: no edge of the region will send again (record.py)
                    self.regions.setdefault(fog, {})["region_spent"] = 1.0
                continue
            self.regions[fog] = {
                "releases": float(m["dp.releases"]),
                "noise_multiplier": float(m.get("dp.noise_multiplier", 0.0)),
                "sample_rate": float(m.get("dp.sample_rate", 1.0)),
                "clip_norm": float(m.get("dp.clip_norm", 0.0)),
                "k2": float(m.get("dp.k2", 1.0)),
                "epsilon": float(m.get("dp.epsilon", 0.0)),
                "target_epsilon": float(m.get("dp.target_epsilon", 0.0)),
                "delta": float(m.get("dp.delta", self.delta)),
                "fixed_from": float(m.get("dp.fixed_from", 0.0)),
            }
            if float(m.get("dp.distributed", 0.0)) >= 1.0:
                # distributed DP (hierfl/secagg/ddp.py): Skellam shares counted by survivors;
                # the region's own account (now, and after its next cloud round) is the figure
                self.regions[fog]["distributed"] = 1.0
                self.regions[fog]["next_epsilon"] = float(
                    m.get("dp.next_epsilon", m.get("dp.epsilon", 0.0)))
            if "dp.local_epsilon" in m:
                # untrusted_fog: the worst edge's local DP, its guarantee against its own fog
                self.regions[fog]["local_epsilon"] = float(m["dp.local_epsilon"])

    def _epsilon(self, r: dict[str, float], extra: int = 0) -> float:
        if "releases" not in r:
            return r.get("epsilon", 0.0)
        if r.get("distributed"):  # no Gaussian formula applies to Skellam sums
            return r.get("next_epsilon", math.inf) if extra else r.get("epsilon", 0.0)
        try:
            eps = epsilon_for(noise_multiplier=r["noise_multiplier"],
                              sample_rate=r["sample_rate"],
                              releases=int(r["releases"]) + extra, delta=self.delta,
                              method="rdp" if r.get("fixed_from") else self.method,
                              fixed_from=int(r.get("fixed_from", 0)))
        except ConfigError:
            return math.inf  # a region reporting nonsense is not private
        if r.get("delta") == self.delta:
            # the fog's own figure composes every parameter set its ledger holds (sigma
            # changed between restarts): never report less than it
            eps = max(eps, r.get("epsilon", 0.0))
        return eps

    def spent_regions(self) -> frozenset[str]:
        """Record mode: the regions that reported ``dp.region_spent`` (none will send again)."""
        return frozenset(f for f, r in self.regions.items() if r.get("region_spent"))

    def epsilon(self) -> float:
        """The federation's epsilon at ``delta``: the worst region's (0 before any)."""
        return max((self._epsilon(r) for r in self.regions.values()), default=0.0)

    def next_round_exceeds(self) -> str | None:
        """The first region (sorted) whose next cloud round (k2 releases) would exceed the
        budget, or None."""
        for fog in sorted(self.regions):
            r = self.regions[fog]
            target = self.target_epsilon
            if target is None and r.get("target_epsilon", 0.0) > 0:
                target = r["target_epsilon"]
            if target is None or "releases" not in r:
                continue
            if self._epsilon(r, int(r.get("k2", 1))) > target:
                return fog
        return None

    def close_round(self, fogs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Observe a closed round, decide the budget stop, and return the version's
        ``privacy`` metadata (sigma, C, q, releases and epsilon per region and overall)."""
        self.observe(fogs)
        if (self.mode == "record" and self.regions and not self.stopped
                and all(r.get("region_spent") for r in self.regions.values())):
            self.status = STOPPED
            log.warning("cloud: %s: every edge of every region (%d) has spent its own budget "
                        "(worst edge epsilon %.4g at delta %g); this version is the final "
                        "model", STOPPED, len(self.regions), self.epsilon(), self.delta)
        worst = self.next_round_exceeds()
        if worst is not None and not self.stopped:
            self.status = STOPPED
            log.warning("cloud: %s: region %s cannot pay for another cloud round (epsilon "
                        "%.4g at delta %g, target %s); this version is the final model",
                        STOPPED, worst, self.epsilon(), self.delta, self.target_epsilon)
        return self.meta()

    def meta(self) -> dict[str, Any]:
        """The account as checkpoint metadata."""
        eps = self.epsilon()
        return {
            "mode": self.mode,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "accountant": self.method,
            "epsilon": eps if math.isfinite(eps) else None,
            "releases": max((int(r.get("releases", 0)) for r in self.regions.values()),
                            default=0),
            "regions": {k: dict(v) for k, v in sorted(self.regions.items())},
            "status": self.status,
        }
