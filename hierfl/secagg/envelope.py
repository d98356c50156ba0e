"""Signed envelopes: how a SecAgg+ message travels over MQTT in the trust layer's signatures.

Every secure-aggregation message (docs/secure-aggregation.md) is the msgpack body of an
envelope signed with the sender's provisioned Ed25519 key, the same keys, trust bundle and
revocation list as the update frames (docs/security.md)::

    {"f": "hierfl-secagg/1", "body": <msgpack of the message's wire dict>,
     "signer": "edge/north/n0", "ctr": 1733456789123456, "sig": <64 bytes>}

The signature covers :func:`hierfl.wire.signing.signed_message` with kind
``"secagg.<message kind>"``, the signer's region as ``fog``, the round as ``base``, ``0`` as
``seq``, the signer's monotonic counter and the BLAKE3 hash of ``body``. The one exception is
the masked input: it is the edge's update, so it is signed as one, kind ``"update"`` with the
fog model ``(version, seq)`` the round belongs to (:func:`split_round_id`) as ``base`` and
``seq``; the fog forwards those claims as the aggregate's provenance
(:class:`~hierfl.wire.frames.EdgeProof`) and the cloud checks them like any update's.

The receiver checks, in this order and before it unpacks the body: the envelope's shape,
the signer in the trust
bundle and not revoked, the signer's role (edge messages are signed by ``edge/<fog>/<sender>``,
fog messages by ``fog/<fog>``), the signature, then the body's kind and round against the
claims. Everything from the broker is hostile: each failure raises a typed error
(:class:`~hierfl.errors.SignatureError` or a subclass, or
:class:`~hierfl.secagg.errors.SecAggMessageError`), which the drivers count by ``reason``.

The consistency check's signatures (:func:`sign_consistency`) are a second, inner signature
with the same identity key: kind ``"secagg.consistency"``, the round as ``base``, the hash of
:func:`hierfl.secagg.messages.consistency_message` (region, round, U3) as the payload hash; an
8-byte counter travels in front of the 64-byte Ed25519 signature. The fog relays them to the
edges inside the unmasking request; each edge checks them with :func:`verify_consistency`.

Because each key advertisement carries its edge's signature, the fog relays the signed
advertisements themselves (``adverts``), not keys it could have replaced: a fog cannot
substitute its own key for a neighbour's (the man in the middle of an unsigned SecAgg).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
from blake3 import blake3
from cryptography.exceptions import InvalidSignature

from hierfl import topics
from hierfl.errors import ConfigError, HierflError, SignatureError, SignerError
from hierfl.secagg.errors import SecAggMessageError
from hierfl.security.trust import TrustStore, edge_party, fog_party
from hierfl.wire.signing import Signer, signed_message

__all__ = [
    "EDGE_KINDS",
    "ENVELOPE_FORMAT",
    "FOG_KINDS",
    "SEQ_BITS",
    "Opened",
    "open_envelope",
    "round_id",
    "seal",
    "sign_consistency",
    "split_round_id",
    "verify_consistency",
]

ENVELOPE_FORMAT = "hierfl-secagg/1"
#: message kinds an edge sends (hierfl.secagg.messages) and those a fog sends (``begin`` and
#: ``adverts`` are the transport's own: the round's opening and the relayed signed adverts)
EDGE_KINDS = frozenset({"advertise", "shares", "masked", "consistency", "reveal"})
FOG_KINDS = frozenset({"begin", "adverts", "forwarded", "check", "unmask"})
CONSISTENCY_KIND = "secagg.consistency"
_ENVELOPE_KEYS = frozenset({"f", "body", "signer", "ctr", "sig"})
SEQ_BITS = 20
ATTEMPT_BITS = 8


def round_id(version: int, seq: int, attempt: int = 0) -> int:
    """The SecAgg+ round id of the ``attempt``-th round for fog model ``(version, seq)``:
    ``version * 2^28 + (seq mod 2^20) * 2^8 + attempt mod 2^8``. A refused round is retried
    under the next attempt: a round id is never used twice."""
    seq_part = (seq & ((1 << SEQ_BITS) - 1)) << ATTEMPT_BITS
    return (version << (SEQ_BITS + ATTEMPT_BITS)) | seq_part | (attempt & 0xFF)


def split_round_id(rid: int) -> tuple[int, int]:
    """The fog model ``(version, seq mod 2^20)`` of a round id (:func:`round_id`)."""
    return rid >> (SEQ_BITS + ATTEMPT_BITS), (rid >> ATTEMPT_BITS) & ((1 << SEQ_BITS) - 1)


def _claims(kind: str, rnd: int) -> tuple[str, int, int]:
    """(kind, base, seq) a message's signature claims."""
    if kind == "masked":
        version, seq = split_round_id(rnd)
        return "update", version, seq
    return f"secagg.{kind}", rnd, 0


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified envelope: who signed it and its body, unpacked (still to be parsed)."""

    signer: str
    body: dict[str, Any]
    raw: bytes
    counter: int = 0
    payload_hash: bytes = b""
    signature: bytes = b""


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def seal(signer: Signer, fog: str, message: dict[str, Any]) -> bytes:
    """Sign a message's wire dict (it needs ``kind`` and ``round``) as ``signer``.

    Args:
        signer: the sender's signer (``edge/<fog>/<E>`` or ``fog/<fog>``).
        fog: the region.
        message: the wire dict (``Message.to_wire()`` or a transport message).

    Returns:
        The envelope's bytes.
    """
    body = _pack(message)
    kind, base, seq = _claims(message["kind"], int(message["round"]))
    sb = signer.sign(kind, fog, base, seq, blake3(body).digest())
    return _pack({"f": ENVELOPE_FORMAT, "body": body, "signer": sb.signer, "ctr": sb.counter,
                  "sig": sb.signature})


def _unpack(data: bytes, max_bytes: int, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_bytes,
                               max_str_len=4096, max_array_len=1_000_000,
                               max_map_len=1_000_000, max_ext_len=0)
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise SecAggMessageError(f"{what} is not valid msgpack: {exc}") from exc


def open_envelope(data: bytes, *, trust: TrustStore, federation: str, fog: str,
                  max_bytes: int = 1 << 30, edge: str | None = None) -> Opened:
    """Verify an envelope from the broker and unpack its body.

    Args:
        data: the payload as received (untrusted).
        trust: the trust bundle and revocation list.
        federation: the federation id every signature must name.
        fog: the region the message must belong to.
        max_bytes: largest body accepted.
        edge: for an edge message, the edge its topic names: the signer must be that edge.

    Returns:
        The signer and the unpacked body (a map with ``kind`` and ``round``).

    Raises:
        SignatureError: (or SignerError / RevokedError) for a bad shape, an unknown, revoked
            or misplaced signer, or a bad signature.
        SecAggMessageError: for a body that is not a message map.
    """
    env = _unpack(data, max_bytes, "envelope")
    if not isinstance(env, dict) or set(env) != _ENVELOPE_KEYS or env["f"] != ENVELOPE_FORMAT:
        raise SignatureError(f"not a {ENVELOPE_FORMAT} envelope")
    body, signer, ctr, sig = env["body"], env["signer"], env["ctr"], env["sig"]
    if not (isinstance(body, bytes) and isinstance(signer, str) and isinstance(sig, bytes)
            and len(sig) == 64 and isinstance(ctr, int) and not isinstance(ctr, bool)
            and 0 <= ctr < 2**63):
        raise SignatureError("envelope fields have the wrong types")
    msg = _unpack(body, max_bytes, "body")
    if not isinstance(msg, dict) or not isinstance(msg.get("kind"), str):
        raise SecAggMessageError("the body is not a message map")
    kind, rnd = msg["kind"], msg.get("round")
    if not isinstance(rnd, int) or isinstance(rnd, bool) or not 0 <= rnd < 2**63:
        raise SecAggMessageError("the body's round must be a non-negative integer")
    if kind in EDGE_KINDS:
        sender = msg.get("sender")
        if not isinstance(sender, str) or (edge is not None and sender != edge):
            raise SignerError(f"{kind} from {sender!r} on edge {edge!r}'s topic")
        try:
            want = edge_party(fog, topics.check_id("edge", sender))
        except ConfigError as exc:
            raise SignerError(f"{sender!r} cannot be an edge of {fog}") from exc
    elif kind in FOG_KINDS:
        want = fog_party(fog)
    else:
        raise SecAggMessageError(f"unknown message kind {kind!r}")
    if signer != want:
        raise SignerError(f"a {kind} of region {fog} signed by {signer!r}, not {want!r}")
    party = trust.get(signer)  # SignerError / RevokedError
    claim_kind, base, seq = _claims(kind, rnd)
    h = blake3(body).digest()
    claims = signed_message(federation, claim_kind, signer, fog, base, seq, ctr, h)
    try:
        party.public_key.verify(sig, claims)
    except InvalidSignature as exc:
        raise SignatureError(f"bad signature on a secagg {kind} claimed by {signer}") from exc
    return Opened(signer, msg, bytes(data), ctr, h, sig)


def sign_consistency(signer: Signer, fog: str, rnd: int, message: bytes) -> bytes:
    """An edge's consistency signature on ``message`` (:func:`consistency_message`) for round
    ``rnd``: the 8-byte big-endian counter, then the Ed25519 signature of the claims."""
    sb = signer.sign(CONSISTENCY_KIND, fog, rnd, 0, blake3(message).digest())
    return sb.counter.to_bytes(8, "big") + sb.signature


def verify_consistency(trust: TrustStore, federation: str, fog: str, rnd: int, edge: str,
                       message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (:func:`sign_consistency`) is edge ``edge`` of region ``fog``'s
    on ``message`` for round ``rnd``; an unknown or revoked signer, a bad id or a malformed
    signature is False (the state machine raises the typed refusal)."""
    if len(signature) != 8 + 64:
        return False
    try:
        party_id = edge_party(fog, topics.check_id("edge", edge))
        party = trust.get(party_id)
    except (ConfigError, HierflError):
        return False
    ctr = int.from_bytes(signature[:8], "big")
    claims = signed_message(federation, CONSISTENCY_KIND, party_id, fog, rnd, 0, ctr,
                            blake3(message).digest())
    try:
        party.public_key.verify(signature[8:], claims)
    except InvalidSignature:
        return False
    return True
