"""A tier's security from its settings: its signer, its verifier, and the loud warning when off."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hierfl.config import SecuritySettings
from hierfl.errors import ConfigError, HierflError
from hierfl.security.trust import TrustStore, load_signing_key
from hierfl.wire.codec import DEFAULT_LIMITS, DecodeLimits, decode_frame
from hierfl.wire.signing import ReplayGuard, Signer, Verified, Verifier

__all__ = ["TierSecurity", "tier_security"]

log = logging.getLogger(__name__)

_OFF_BANNER = (
    "%s: FRAME SIGNATURES ARE OFF (security.signing = \"off\"). Any client of the brokers can "
    "forge updates, aggregates and global models of this federation. Use this only for an "
    "unprovisioned local run; provision with `hierfl provision` (docs/security.md)."
)


@dataclass(frozen=True, slots=True)
class TierSecurity:
    """What a tier signs with and verifies against (both None when signatures are off)."""

    party_id: str
    signer: Signer | None
    verifier: Verifier | None

    @property
    def enabled(self) -> bool:
        """Whether signatures are on."""
        return self.verifier is not None

    @property
    def trust(self) -> TrustStore | None:
        """The trust store (None when off)."""
        return None if self.verifier is None else self.verifier.trust

    def decode(self, data: bytes | memoryview, *, limits: DecodeLimits = DEFAULT_LIMITS,
               replay: bool = True) -> Verified:
        """Verify (when on) and decode a frame from the wire.

        Raises:
            WireFormatError: a subclass naming the problem.
        """
        if self.verifier is None:
            return Verified(decode_frame(data, limits=limits), None)
        return self.verifier.decode(data, limits=limits, replay=replay)


def tier_security(sec: SecuritySettings, *, federation: str, party_id: str, tier: str,
                  replay_file: str | None = "replay.json", autosave: bool = True,
                  deferred: frozenset[str] = frozenset()) -> TierSecurity:
    """Build a tier's signer and verifier from its settings.

    Args:
        sec: the tier's ``security`` settings.
        federation: the federation id.
        party_id: this tier's party id (``cloud``, ``fog/<F>``, ``edge/<F>/<E>``).
        tier: for messages.
        replay_file: name of the replay-counter file under ``state_dir`` (None: memory).
        autosave: persist replay counters on every new one (see :class:`ReplayGuard`).
        deferred: frame kinds whose counters persist only once committed (see
            :class:`ReplayGuard`).

    Raises:
        ConfigError: if signatures are required and a key or the bundle is missing or bad,
            or if this party is not in the bundle with this key.
    """
    if not sec.enabled:
        log.warning(_OFF_BANNER, tier)
        return TierSecurity(party_id, None, None)
    sec.require_complete(tier)
    assert sec.key_file is not None
    assert sec.trust_bundle is not None
    key = load_signing_key(sec.key_file)
    trust = TrustStore(sec.trust_bundle, federation, revoked=sec.revocation_list)
    try:
        me = trust.get(party_id)
    except HierflError as exc:
        raise ConfigError(f"{tier}: {exc} ({sec.trust_bundle})") from exc
    if me.public_key.public_bytes_raw() != key.public_key().public_bytes_raw():
        raise ConfigError(f"{tier}: {sec.key_file} is not the key the trust bundle holds for "
                          f"{party_id}")
    state: Path | None = sec.state_dir
    guard = ReplayGuard(state / replay_file if state and replay_file else None,
                        autosave=autosave, deferred=deferred)
    signer = Signer(party_id, key, federation,
                    state_path=state / "counter" if state is not None else None)
    log.info("%s: signing as %s; verifying frames against %s", tier, party_id,
             sec.trust_bundle)
    return TierSecurity(party_id, signer, Verifier(trust, federation, replay=guard))
