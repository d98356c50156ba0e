"""A fog region's privacy: its ledger, its budget stop, its sample of edges per fog round.

Regions are disjoint populations (an edge reports to one fog), so each fog accounts for its own
region (parallel composition across regions; the federation's epsilon is the worst region's).
Every fog round that closes is one release: the fog model published to the edges between cloud
rounds (k2 > 1) and the aggregate forwarded to the cloud are both computed from it.

Pure logic (no I/O but the ledger's file): :class:`~hierfl.fog.round.FogRound` calls it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hierfl.errors import PrivacyBudgetExhaustedError, ValidationError
from hierfl.privacy.accountant import fixed_sample_size
from hierfl.privacy.ledger import PrivacyLedger
from hierfl.privacy.mechanisms import csprng

__all__ = ["DP_METRIC_PREFIX", "NotSampledError", "RegionPrivacy", "dp_metrics"]

log = logging.getLogger(__name__)

#: model and aggregate metrics under this prefix carry the privacy account (not averaged)
DP_METRIC_PREFIX = "dp."


class NotSampledError(ValidationError):
    """The edge is not in this fog round's random sample (privacy sampling)."""

    reason = "validation.not_sampled"


def dp_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The ``dp.*`` entries of a metrics map."""
    return {k: v for k, v in metrics.items() if k.startswith(DP_METRIC_PREFIX)}


@dataclass
class RegionPrivacy:
    """The privacy state of one fog's region.

    Args:
        ledger: the region's persisted ledger (its sigma and q are the current ones).
        clip_norm: C (reported with each release).
        target_epsilon: the budget (None: account only).
        k2: releases per cloud round.
        population: the region's edges, to sample from when ``sample_rate < 1``.
        rng: the sampling generator; None (production): a fresh :func:`csprng` per draw
            (the sample is secret: amplification by sampling assumes nobody can predict it).
    """

    ledger: PrivacyLedger
    clip_norm: float
    target_epsilon: float | None
    k2: int = 1
    population: Sequence[str] = ()
    rng: np.random.Generator | None = None
    exhausted: bool = False
    sampled: frozenset[str] | None = None

    @property
    def sample_rate(self) -> float:
        """q of the current releases."""
        return self.ledger.sample_rate

    def can_start(self, releases: int) -> bool:
        """Whether ``releases`` more releases stay within the budget; when not, the region is
        marked exhausted (logged once)."""
        if self.exhausted:
            return False
        if self.ledger.would_exceed(self.target_epsilon, releases):
            self.exhausted = True
            log.warning(
                "privacy: region %s stops releasing: %d more release(s) would take epsilon "
                "from %.4g to %.4g, above target_epsilon %s (delta %g, %d releases so far)",
                self.ledger.population, releases, self.ledger.epsilon(),
                self.ledger.epsilon(releases), self.target_epsilon, self.ledger.delta,
                self.ledger.releases,
            )
            return False
        return True

    def check_release(self) -> None:
        """Refuse to start a release that would exceed the budget.

        Raises:
            PrivacyBudgetExhaustedError: the release must not be made.
        """
        if not self.can_start(1):
            raise PrivacyBudgetExhaustedError(
                f"region {self.ledger.population}: one more release would exceed "
                f"target_epsilon {self.target_epsilon} (epsilon {self.ledger.epsilon():.4g} "
                f"after {self.ledger.releases} releases)"
            )

    def spend(self) -> float:
        """Account one release (persisted before it leaves); return the new epsilon."""
        return self.ledger.spend(1)

    def draw_sample(self) -> frozenset[str] | None:
        """Draw the edges of the next fog round (Poisson: each with probability q; fixed-size:
        exactly round(q N) of the N, uniformly without replacement); None when every edge is
        in (q = 1)."""
        q = self.sample_rate
        rng = self.rng if self.rng is not None else csprng()
        if q >= 1.0 or not self.population:
            self.sampled = None
        elif self.ledger.fixed_from:
            m = fixed_sample_size(q, len(self.population))
            chosen = rng.choice(len(self.population), size=m, replace=False)
            self.sampled = frozenset(self.population[int(i)] for i in chosen)
        else:
            pick = rng.random(len(self.population)) < q
            self.sampled = frozenset(e for e, p in zip(self.population, pick, strict=True) if p)
        return self.sampled

    def check_sampled(self, edge: str) -> None:
        """Raises NotSampledError when ``edge`` is not in the current round's sample."""
        if self.sampled is not None and edge not in self.sampled:
            raise NotSampledError(f"edge {edge} is not in this fog round's privacy sample")

    def metrics(self) -> dict[str, float]:
        """The account as ``dp.*`` metrics: what each release and model records."""
        eps = self.ledger.epsilon()
        return {
            "dp.epsilon": eps if math.isfinite(eps) else 1e300,
            "dp.delta": self.ledger.delta,
            "dp.releases": float(self.ledger.releases),
            "dp.noise_multiplier": self.ledger.noise_multiplier,
            "dp.clip_norm": float(self.clip_norm),
            "dp.sample_rate": self.sample_rate,
            "dp.k2": float(self.k2),
            **({"dp.fixed_from": float(self.ledger.fixed_from)} if self.ledger.fixed_from
               else {}),
            "dp.target_epsilon": (float(self.target_epsilon)
                                  if self.target_epsilon is not None else 0.0),
        }
