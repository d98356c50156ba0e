"""The edge's side of device-level DP: clip its update, and in untrusted_fog mode noise it.

- ``trusted_fog``: the edge clips its update to L2 norm ``C`` (the fog clips again whatever
  arrives and adds the noise; the edge's clipping only keeps an honest edge's update from being
  scaled down further there).
- ``untrusted_fog``: the edge also adds ``N(0, sigma^2 C^2 / n)`` per coordinate, its share of
  the region's noise (``n`` = ``expected_updates`` edges per round), so the fog's sum carries
  ``sigma C`` without the fog ever seeing an un-noised update. Against the fog alone, each edge
  is protected only by its own share: local DP with noise multiplier ``sigma / sqrt(n)`` per
  update, which is what the edge's own ledger accounts (honestly: it is much weaker than the
  region's guarantee; with secure aggregation, hiding the individual noised updates, it becomes
  distributed DP with the region's epsilon). The edge stops sending once its budget is spent.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hierfl.errors import PrivacyBudgetExhaustedError
from hierfl.privacy.ledger import PrivacyLedger
from hierfl.privacy.mechanisms import clip_vector, csprng, gaussian_noise
from hierfl.types import Float32Vector

__all__ = ["EdgePrivacy"]

log = logging.getLogger(__name__)


@dataclass
class EdgePrivacy:
    """Clip (and in untrusted_fog mode, noise and account) one edge's updates.

    Args:
        mode: ``trusted_fog`` or ``untrusted_fog``.
        clip_norm: C.
        noise_multiplier: sigma, the region's.
        shares: n, the edges whose shares make up the region's noise.
        ledger: the edge's own ledger (untrusted_fog), whose noise multiplier is
            ``sigma / sqrt(n)``.
        target_epsilon: the edge's budget (None: account only).
        rng: the noise generator; None (production): a fresh :func:`csprng` per update. A
            fixed seed is for tests only.
        distributed: untrusted_fog behind a secure fog (distributed DP): only clip; the
            edge's noise share is an integer Skellam share added inside the SecAgg+ round
            (hierfl/secagg/ddp.py) and the fog's ledger accounts the region's sum.
    """

    mode: str
    clip_norm: float
    noise_multiplier: float
    shares: int = 1
    ledger: PrivacyLedger | None = None
    target_epsilon: float | None = None
    rng: np.random.Generator | None = None
    clipped: int = 0
    distributed: bool = False

    @classmethod
    def local_ledger(cls, folder: Path | None, edge: str, *, noise_multiplier: float,
                     shares: int, delta: float, method: str) -> PrivacyLedger:
        """The edge's own ledger in ``folder`` (memory only without one)."""
        from hierfl.privacy.ledger import LEDGER_FILE  # noqa: PLC0415

        return PrivacyLedger(None if folder is None else folder / LEDGER_FILE,
                             population=edge,
                             noise_multiplier=noise_multiplier / math.sqrt(shares),
                             sample_rate=1.0, delta=delta,
                             method="pld" if method == "pld" else "rdp")

    def check_budget(self) -> None:
        """Raises PrivacyBudgetExhaustedError when one more update would exceed the edge's
        own budget (untrusted_fog; checked before training, so nothing is wasted)."""
        ledger = self.ledger
        if self.mode == "untrusted_fog" and ledger is not None \
                and ledger.would_exceed(self.target_epsilon, 1):
            raise PrivacyBudgetExhaustedError(
                f"edge {ledger.population}: one more noised update would take its local "
                f"epsilon from {ledger.epsilon():.4g} to {ledger.epsilon(1):.4g}, above "
                f"{self.target_epsilon}"
            )

    def process(self, delta: Float32Vector) -> Float32Vector:
        """The update as it may leave the edge.

        Raises:
            PrivacyBudgetExhaustedError: untrusted_fog, and one more update would take the
                edge's own epsilon above its target (nothing is sent).
            StoreError: the ledger cannot be written (nothing is sent).
        """
        out, norm = clip_vector(delta, self.clip_norm)
        if norm > self.clip_norm:
            self.clipped += 1
        if self.mode != "untrusted_fog" or self.distributed:
            return out
        self.check_budget()
        ledger = self.ledger
        noisy = out.astype(np.float64) + gaussian_noise(
            out.size, noise_multiplier=self.noise_multiplier, clip_norm=self.clip_norm,
            rng=self.rng if self.rng is not None else csprng(), share=self.shares)
        if ledger is not None:
            ledger.spend(1)  # on disk before the update leaves
        return noisy.astype(np.float32)

    def metrics(self) -> dict[str, float]:
        """The edge's own account (untrusted_fog), as ``dp.*`` metrics for its update."""
        if self.ledger is None or self.mode != "untrusted_fog":
            return {}
        return {"dp.local_epsilon": self.ledger.epsilon()}
