"""The trust bundle (who may sign what) and the revocation list, re-read when they change.

Party ids name every signer: ``cloud``, ``fog/<F>``, ``edge/<F>/<E>``. The bundle
(``trust.json``, written by ``hierfl provision``) maps each id to its role and Ed25519 public
key; the revocation list (``revoked.json``) names parties whose frames are refused from the
moment the file changes, without a restart. File formats: docs/security.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hierfl import topics
from hierfl.errors import ConfigError, RevokedError, SignerError

__all__ = [
    "BUNDLE_FORMAT",
    "REVOKED_FORMAT",
    "Party",
    "TrustStore",
    "cloud_party",
    "edge_party",
    "fog_party",
    "load_signing_key",
    "parse_party",
]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "hierfl-trust/1"
REVOKED_FORMAT = "hierfl-revoked/1"
ROLES = ("cloud", "fog", "edge")


def cloud_party() -> str:
    """The cloud's party id."""
    return "cloud"


def fog_party(fog: str) -> str:
    """Fog ``fog``'s party id."""
    return f"fog/{fog}"


def edge_party(fog: str, edge: str) -> str:
    """Party id of edge ``edge`` of fog ``fog`` (edge ids are unique within a fog)."""
    return f"edge/{fog}/{edge}"


@dataclass(frozen=True, slots=True)
class Party:
    """One signer of the federation: its id, role, region and public key."""

    id: str
    role: str
    fog: str | None
    edge: str | None
    public_key: Ed25519PublicKey


def parse_party(pid: str) -> tuple[str, str | None, str | None]:
    """``"edge/F/E"`` -> ``("edge", "F", "E")``; ``"fog/F"`` -> ``("fog", "F", None)``.

    Raises:
        ConfigError: if ``pid`` is not a well-formed party id.
    """
    parts = pid.split("/")
    if parts == ["cloud"]:
        return "cloud", None, None
    if len(parts) == 2 and parts[0] == "fog":
        return "fog", topics.check_id("fog", parts[1]), None
    if len(parts) == 3 and parts[0] == "edge":
        return "edge", topics.check_id("fog", parts[1]), topics.check_id("edge", parts[2])
    raise ConfigError(f"{pid!r} is not a party id (cloud, fog/<F> or edge/<F>/<E>)")


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read a party's Ed25519 private key (PEM, PKCS8, unencrypted).

    Raises:
        ConfigError: if the file is missing, readable by group or others (like ssh, a
            private key anyone else can read is refused), or not an Ed25519 key.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"signing key {path}: {exc.strerror or exc}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"signing key {path} is accessible by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"signing key {path} cannot be read as a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path} is not an Ed25519 key")
    return key


def _read_json(path: Path, what: str) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{what} {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a JSON object")
    return data


def _parse_bundle(data: dict[str, object], path: Path, federation: str) -> dict[str, Party]:
    if data.get("format") != BUNDLE_FORMAT:
        raise ConfigError(f"trust bundle {path}: format is not {BUNDLE_FORMAT!r}")
    if data.get("federation") != federation:
        raise ConfigError(
            f"trust bundle {path} is for federation {data.get('federation')!r}, "
            f"not {federation!r}"
        )
    raw = data.get("parties")
    if not isinstance(raw, dict):
        raise ConfigError(f"trust bundle {path}: 'parties' must be an object")
    parties: dict[str, Party] = {}
    for pid, entry in raw.items():
        role, fog, edge = parse_party(pid)
        if not isinstance(entry, dict) or entry.get("role") != role:
            raise ConfigError(f"trust bundle {path}: {pid}: role must be {role!r}")
        if entry.get("fog") != fog or entry.get("edge") != edge:
            raise ConfigError(f"trust bundle {path}: {pid}: fog/edge fields disagree with the id")
        try:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(entry["ed25519"],
                                                                      validate=True))
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ConfigError(f"trust bundle {path}: {pid}: bad ed25519 public key") from exc
        parties[pid] = Party(pid, role, fog, edge, key)
    return parties


def _parse_revoked(data: dict[str, object], path: Path, federation: str) -> frozenset[str]:
    if data.get("format") != REVOKED_FORMAT:
        raise ConfigError(f"revocation list {path}: format is not {REVOKED_FORMAT!r}")
    if data.get("federation") != federation:
        raise ConfigError(f"revocation list {path} is for federation {data.get('federation')!r}")
    items = data.get("revoked")
    if not isinstance(items, list):
        raise ConfigError(f"revocation list {path}: 'revoked' must be a list")
    out = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("party"), str):
            raise ConfigError(f"revocation list {path}: entries need a 'party' id")
        out.add(item["party"])
    return frozenset(out)


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TrustStore:
    """The parties a tier trusts, kept current with its files.

    Both files are re-read when their modification stamp changes (checked at most every
    ``check_every_s``): ``hierfl provision add-edge`` and ``revoke`` take effect on running
    fogs and clouds without a restart. A file that becomes unreadable or invalid keeps the
    last good state and logs an error (a half-written copy must not open the gates), except
    that revocations are never forgotten.

    Args:
        bundle: ``trust.json``.
        federation: the federation id the files must name.
        revoked: ``revoked.json`` (optional).
        check_every_s: how often to look for changed files.

    Raises:
        ConfigError: if a file is missing or invalid at construction.
    """

    def __init__(self, bundle: Path, federation: str, *, revoked: Path | None = None,
                 check_every_s: float = 1.0) -> None:
        self.bundle_path = bundle
        self.revoked_path = revoked
        self.federation = federation
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._parties = _parse_bundle(_read_json(bundle, "trust bundle"), bundle, federation)
        self._revoked: frozenset[str] = frozenset()
        if revoked is not None:
            self._revoked = _parse_revoked(_read_json(revoked, "revocation list"), revoked,
                                           federation)
        self._stamps = (_stamp(bundle), _stamp(revoked))
        self._checked = time.monotonic()

    @classmethod
    def from_parties(cls, parties: dict[str, Ed25519PublicKey], federation: str) -> TrustStore:
        """An in-memory store (tests, tools): party id -> public key."""
        self = cls.__new__(cls)
        self.bundle_path = Path("<memory>")
        self.revoked_path = None
        self.federation = federation
        self.check_every_s = float("inf")
        self._lock = threading.Lock()
        self._parties = {}
        for pid, key in parties.items():
            role, fog, edge = parse_party(pid)
            self._parties[pid] = Party(pid, role, fog, edge, key)
        self._revoked = frozenset()
        self._stamps = (None, None)
        self._checked = time.monotonic()
        return self

    def revoke(self, pid: str) -> None:
        """Revoke ``pid`` in memory (the file is the durable way: ``hierfl provision revoke``)."""
        with self._lock:
            self._revoked = self._revoked | {pid}

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the files if they changed (at most every ``check_every_s``)."""
        now = time.monotonic()
        if not force and now - self._checked < self.check_every_s:
            return
        with self._lock:
            self._checked = now
            stamps = (_stamp(self.bundle_path), _stamp(self.revoked_path))
            if stamps == self._stamps:
                return
            try:
                parties = _parse_bundle(_read_json(self.bundle_path, "trust bundle"),
                                        self.bundle_path, self.federation)
                revoked = self._revoked
                if self.revoked_path is not None:
                    revoked = revoked | _parse_revoked(
                        _read_json(self.revoked_path, "revocation list"), self.revoked_path,
                        self.federation)
            except ConfigError as exc:
                log.error("trust: keeping the previous trust state: %s", exc)
                return
            added = len(parties) - len(self._parties)
            newly = revoked - self._revoked
            self._parties, self._revoked, self._stamps = parties, revoked, stamps
        log.warning("trust: reloaded (%+d parties, %d newly revoked%s)", added, len(newly),
                    f": {', '.join(sorted(newly))}" if newly else "")

    def get(self, pid: str) -> Party:
        """The party ``pid``.

        Raises:
            SignerError: if the bundle does not know it.
            RevokedError: if it is revoked.
        """
        self.refresh()
        party = self._parties.get(pid)
        if party is None:
            raise SignerError(f"signer {pid!r} is not in the trust bundle")
        if pid in self._revoked:
            raise RevokedError(f"signer {pid!r} is revoked")
        return party

    def parties(self) -> dict[str, Party]:
        """Every party of the bundle, revoked ones included (a signature made before a
        revocation stays verifiable history: ``hierfl audit``)."""
        self.refresh()
        return dict(self._parties)

    def revoked(self) -> frozenset[str]:
        """Party ids on the revocation list."""
        self.refresh()
        return self._revoked

    def is_revoked(self, pid: str) -> bool:
        """Whether ``pid`` is on the revocation list."""
        self.refresh()
        return pid in self._revoked

    def edges_of(self, fog: str) -> frozenset[str]:
        """Edge ids of fog ``fog`` in the bundle, revoked ones excluded."""
        self.refresh()
        return frozenset(p.edge for p in self._parties.values()
                         if p.role == "edge" and p.fog == fog and p.edge is not None
                         and p.id not in self._revoked)

    def fogs(self) -> frozenset[str]:
        """Fog ids in the bundle."""
        self.refresh()
        return frozenset(p.fog for p in self._parties.values() if p.role == "fog" and p.fog)
