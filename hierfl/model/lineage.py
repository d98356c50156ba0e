"""Audit a model store: every version's weights, its hash-chained record and signed lineage.

A version's record (:mod:`hierfl.model.store`) holds ``lineage``: the aggregates the cloud
combined into it, each with the fog's signature block and the proofs of the edge updates
behind it (:class:`~hierfl.wire.frames.EdgeProof`)::

    {"signed": true, "aggregates": [{"fog": "north", "sig": {SigBlock.to_json()},
                                     "edges": [{"edge": "n0", "base": 6, "seq": 12,
                                                "ctr": ..., "h": "<hex>", "sig": "<hex>"}]}]}

:func:`verify_store` checks, version by version: the weights against the record's sha256,
the record against its ``record_hash``, the chain to the previous version, and, given a
trust bundle, every aggregate and edge signature and the cloud's signature of the record
(``record_sig`` over ``record_hash``: a hash chain alone could be rewritten whole, from any
version on, by anyone with write access to the store; signed records cannot be rewritten
without the cloud's key). What it cannot check: the signed hashes cover the frames, which the
store does not keep, so it proves *who* contributed to a version, not that the weights are the
aggregate of exactly those frames; and deleting the newest versions leaves a valid, shorter
store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from hierfl.errors import ConfigError, HierflError, SignatureError, SignerError, StoreError
from hierfl.model.store import ModelStore, record_hash, weights_sha256
from hierfl.security.trust import TrustStore, cloud_party, edge_party, fog_party
from hierfl.wire.frames import EdgeProof
from hierfl.wire.signing import RECORD_DOMAIN, SigBlock, _allowed, verify_proof

__all__ = ["AuditReport", "VersionAudit", "edge_proof_of", "verify_store"]


@dataclass(frozen=True, slots=True)
class VersionAudit:
    """The audit of one version.

    Args:
        version: the version.
        ok: whether every check passed.
        reason: why not (None when ok).
        aggregates: how many fog aggregates its lineage names.
        edge_updates: how many edge updates those aggregates carry.
        signers: the aggregates' signers, sorted.
        signed: whether the lineage says the federation signed its frames.
        verified: whether signatures were checked against a trust bundle.
        revoked: signers (fogs or edges) revoked since; their signatures still verify as
            historical records.
        chain_start: the first version present (no parent in the store to check against).
    """

    version: int
    ok: bool
    reason: str | None = None
    aggregates: int = 0
    edge_updates: int = 0
    signers: tuple[str, ...] = ()
    signed: bool = False
    verified: bool = False
    revoked: tuple[str, ...] = ()
    chain_start: bool = False

    def line(self) -> str:
        """One human-readable line, e.g. ``v3 ok: 2 aggregates, 6 edge updates, signed by ...``."""
        if not self.ok:
            return f"v{self.version} BAD: {self.reason}"
        text = f"v{self.version} ok: {self.aggregates} aggregates, {self.edge_updates} edge updates"
        if self.signers:
            text += f", signed by {', '.join(self.signers)}"
        notes = []
        if self.aggregates and not self.signed:
            notes.append("unsigned")
        elif self.signed and not self.verified:
            notes.append("signatures not checked: no trust bundle")
        if self.revoked:
            notes.append(f"revoked since: {', '.join(self.revoked)}")
        if self.chain_start:
            notes.append("chain starts here")
        return text + (f" ({'; '.join(notes)})" if notes else "")


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The audit of a store: one :class:`VersionAudit` per version, ascending."""

    store: Path
    federation: str | None
    versions: tuple[VersionAudit, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """Whether every version passed."""
        return all(v.ok for v in self.versions)

    @property
    def first_bad(self) -> VersionAudit | None:
        """The first version that failed, or None."""
        return next((v for v in self.versions if not v.ok), None)


class _Bad(Exception):
    """A failed check inside one version's audit (never leaves this module)."""


def edge_proof_of(entry: dict[str, Any]) -> EdgeProof:
    """The :class:`EdgeProof` of one ``lineage.aggregates[i].edges[j]`` entry.

    Raises:
        SignatureError: if the entry is malformed.
    """
    try:
        return EdgeProof(
            entry["edge"],
            int(entry["base"]),
            int(entry["seq"]),
            int(entry["ctr"]),
            bytes.fromhex(entry["h"]),
            bytes.fromhex(entry["sig"]),
        )
    except (KeyError, TypeError, ValueError, HierflError) as exc:
        raise SignatureError(f"malformed edge proof {entry!r:.80}: {exc}") from exc


def _historical(trust: TrustStore) -> TrustStore:
    """``trust`` without its revocations: a signature made before a revocation stays valid."""
    # TrustStore has no accessor for its parties yet; the audit is their only outside reader.
    parties = {pid: p.public_key for pid, p in trust.parties().items()}
    return TrustStore.from_parties(parties, trust.federation)


class _Auditor:
    """Walks a store's versions ascending, carrying the previous record."""

    def __init__(self, store: ModelStore, trust: TrustStore | None, federation: str | None) -> None:
        self.store = store
        self.trust = trust
        self.history = _historical(trust) if trust is not None else None
        self.federation = federation
        self.prev: tuple[int, dict[str, Any]] | None = None

    def audit(self, version: int) -> VersionAudit:
        chain_start = self.prev is None
        try:
            record = self.store.read_record(version)
        except StoreError as exc:
            return VersionAudit(version, ok=False, reason=str(exc), chain_start=chain_start)
        try:
            self._record(version, record)
            found = self._lineage(version, record)
            self._record_sig(record)  # last: the reasons above say more about an edit
        except (_Bad, HierflError) as exc:
            found = VersionAudit(version, ok=False, reason=str(exc))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            found = VersionAudit(version, ok=False, reason=f"malformed record: {exc!r}")
        finally:
            self.prev = (version, record)
        return VersionAudit(
            version,
            ok=found.ok,
            reason=found.reason,
            aggregates=found.aggregates,
            edge_updates=found.edge_updates,
            signers=found.signers,
            signed=found.signed,
            verified=found.verified,
            revoked=found.revoked,
            chain_start=chain_start,
        )

    def _record(self, version: int, record: dict[str, Any]) -> None:
        """Record hash, weights hash and chain."""
        if record.get("version") != version:
            raise _Bad(f"record names version {record.get('version')!r}")
        if "record_hash" not in record:
            raise _Bad("record has no record_hash (written before records were chained)")
        if record_hash(record) != record["record_hash"]:
            raise _Bad("record was edited: its record_hash does not match its content")
        weights = self.store.read_weights(version, record)
        if weights_sha256(weights) != record.get("sha256"):
            raise _Bad("checkpoint file changed: its weights fail the record's sha256")
        if self.prev is None:
            return
        pv, parent = self.prev
        if pv != version - 1:
            raise _Bad(f"parent v{version - 1} is missing from the store (chain broken)")
        if record.get("parent_record") != parent.get("record_hash"):
            raise _Bad(f"chain broken: parent_record is not the record hash of v{pv}")
        if record.get("parent_sha256") != parent.get("sha256"):
            raise _Bad(f"chain broken: parent_sha256 is not the weights sha256 of v{pv}")

    def _record_sig(self, record: dict[str, Any]) -> None:
        """With a trust bundle, a signed federation's record must carry the cloud's signature
        of its ``record_hash``."""
        if self.history is None:
            return
        lineage = record.get("lineage")
        sig = record.get("record_sig")
        if sig is None:
            if isinstance(lineage, dict) and lineage.get("signed") is True:
                raise _Bad("record of a signed federation has no record_sig")
            return
        if not isinstance(sig, dict) or sig.get("signer") != cloud_party():
            raise _Bad(f"record_sig is not the cloud's: {sig!r}"[:200])
        try:
            key = self.history.get(cloud_party()).public_key
            key.verify(bytes.fromhex(sig["sig"]),
                       RECORD_DOMAIN + bytes.fromhex(record["record_hash"]))
        except (InvalidSignature, ValueError, KeyError, TypeError) as exc:
            raise _Bad("record_sig does not verify with the cloud's key (record rewritten?)"
                       ) from exc

    def _lineage(self, version: int, record: dict[str, Any]) -> VersionAudit:
        lineage = record.get("lineage")
        if lineage is None:
            if self.trust is not None and version > 0:
                raise _Bad("no lineage in the record, but a trust bundle was given")
            return VersionAudit(version, ok=True)
        signed = lineage["signed"] is True
        aggs = lineage["aggregates"]
        if not isinstance(aggs, list):
            raise _Bad("lineage.aggregates is not a list")
        if self.trust is not None and aggs and not signed:
            raise _Bad("lineage is unsigned, but a trust bundle was given")
        fogs_meta = record.get("fogs")
        names = [a["fog"] for a in aggs]
        if len(set(names)) != len(names):
            raise _Bad(f"a fog appears twice among the aggregates: {sorted(names)}")
        if isinstance(fogs_meta, dict) and aggs and set(names) != set(fogs_meta):
            raise _Bad(f"lineage names fogs {sorted(names)}, the record {sorted(fogs_meta)}")
        signers: list[str] = []
        revoked: set[str] = set()
        edges = 0
        for agg in aggs:
            fog = agg["fog"]
            meta = fogs_meta.get(fog, {}) if isinstance(fogs_meta, dict) else {}
            edges += len(agg["edges"])
            if signed:
                signers.append(self._aggregate(version, fog, agg["sig"], meta, revoked))
            self._edges(fog, agg["edges"], meta, revoked, signed=signed)
        return VersionAudit(
            version,
            ok=True,
            aggregates=len(aggs),
            edge_updates=edges,
            signers=tuple(sorted(signers)),
            signed=signed and bool(aggs),
            verified=self.trust is not None,
            revoked=tuple(sorted(revoked)),
        )

    def _aggregate(
        self, version: int, fog: str, sig: Any, meta: dict[str, Any], revoked: set[str]
    ) -> str:
        if not isinstance(sig, dict):
            raise _Bad(f"aggregate of fog {fog!r} has no signature in a signed lineage")
        sb = SigBlock.from_json(sig)
        if sb.kind != "aggregate":
            raise _Bad(f"aggregate of fog {fog!r} carries a {sb.kind!r} signature")
        if sb.signer != fog_party(fog) or sb.fog != fog:
            raise _Bad(f"aggregate of fog {fog!r} signed by {sb.signer} (for fog {sb.fog!r})")
        if self.federation is not None and sb.federation != self.federation:
            raise _Bad(f"aggregate of fog {fog!r} signed for federation {sb.federation!r}")
        if sb.base != version - 1:
            raise _Bad(f"aggregate of fog {fog!r} is based on v{sb.base}, not v{version - 1}")
        if "fog_rounds" in meta and sb.seq != meta["fog_rounds"]:
            raise _Bad(f"aggregate of fog {fog!r}: signed fog_rounds {sb.seq} != the record's")
        if self.trust is None or self.history is None:
            return sb.signer
        party = self.history.get(sb.signer)  # SignerError: not in the bundle
        if not _allowed(party.role, party.fog, sb.kind, sb.fog):
            raise SignerError(f"{sb.signer} ({party.role}) may not sign an aggregate of {fog}")
        try:
            party.public_key.verify(sb.signature, sb.message())
        except InvalidSignature as exc:
            raise _Bad(f"aggregate signature of {sb.signer} does not verify") from exc
        if self.trust.is_revoked(sb.signer):
            revoked.add(sb.signer)
        return sb.signer

    def _edges(
        self,
        fog: str,
        entries: list[dict[str, Any]],
        meta: dict[str, Any],
        revoked: set[str],
        *,
        signed: bool,
    ) -> None:
        ids = [e["edge"] for e in entries]
        if len(set(ids)) != len(ids):
            raise _Bad(f"an edge of fog {fog!r} appears twice: {sorted(ids)}")
        if (
            (signed or ids)
            and "contributors" in meta
            and sorted(meta["contributors"]) != sorted(ids)
        ):
            raise _Bad(
                f"fog {fog!r}: edge proofs for {sorted(ids)}, record contributors "
                f"{sorted(meta['contributors'])}"
            )
        if not signed:
            return
        for entry in entries:
            proof = edge_proof_of(entry)
            if self.trust is None or self.history is None:
                continue
            try:
                verify_proof(self.history, self.trust.federation, fog, proof)
            except SignatureError as exc:
                raise _Bad(f"edge update of {edge_party(fog, proof.edge_id)}: {exc}") from exc
            if self.trust.is_revoked(edge_party(fog, proof.edge_id)):
                revoked.add(edge_party(fog, proof.edge_id))


def verify_store(
    store_dir: Path, trust: TrustStore | None, federation: str | None = None
) -> AuditReport:
    """Audit every version of the store at ``store_dir``, ascending.

    Each version's weights must match its record's sha256, its record its ``record_hash``,
    and its ``parent_record``/``parent_sha256`` the previous version's (the oldest version
    present starts the chain: older ones may have been pruned). Given ``trust``, each
    aggregate's signature must verify under its fog's key (signer ``fog/<fog>``, role rule
    of :mod:`hierfl.wire.signing`, base ``version - 1``) and each edge proof under the key of
    an edge of that fog. A party revoked since still verifies (a signature made before its
    revocation is a valid historical record) and is listed in :attr:`VersionAudit.revoked`.

    Args:
        store_dir: the store directory.
        trust: the trust bundle, or None to check hashes and the chain only.
        federation: the federation the signatures must name (default: the bundle's).

    Returns:
        The report; :attr:`AuditReport.first_bad` names the first failing version.

    Raises:
        StoreError: if ``store_dir`` is not a directory.
        ConfigError: if ``federation`` differs from the trust bundle's.
    """
    store = ModelStore(store_dir, create=False)
    if trust is not None:
        if federation is not None and federation != trust.federation:
            raise ConfigError(
                f"federation {federation!r} differs from the trust bundle's {trust.federation!r}"
            )
        federation = trust.federation
    auditor = _Auditor(store, trust, federation)
    return AuditReport(store_dir, federation, tuple(auditor.audit(v) for v in store.versions()))
