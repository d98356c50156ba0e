"""The round's messages as frozen dataclasses, and their wire form: plain dicts of str, int,
bytes, lists and str-keyed maps that msgpack carries as they are (no pickle).

Four exchanges, each an edge-to-fog message answered by fog-to-edge messages (the fog relays
everything; edges never talk directly)::

    edge -> fog                    fog -> each edge
    AdvertiseKeys   (stage 0)      KeyRoster        neighbours' public keys
    ShareKeys       (stage 1)      ForwardedShares  shares encrypted to this edge
    MaskedInput     (stage 2)      ConsistencyCheck the survivor set U3 (malicious-fog mode)
    ConsistencySignature (2b)      UnmaskRequest    whose self-mask / secret-key shares to reveal,
                                                    with the neighbours' signatures on U3
    UnmaskResponse  (stage 3)      -                the fog now computes the sum

In the semi-honest mode (a state machine built without identity keys) the fog answers the
masked inputs with the unmasking request directly; an edge built with keys
(:class:`~hierfl.secagg.client.EdgeSecAgg` ``sign``/``verify``, as every wired edge is)
insists on the consistency check (Bonawitz et al. 2017, round 3) first.

:func:`parse` turns an untrusted dict back into a message and raises
:class:`~hierfl.secagg.errors.SecAggMessageError` for anything else (missing or extra fields,
wrong types, oversized maps, a wrong-sized key or share); what it cannot know (the round's
roster, the update's length) the state machines check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from hierfl.secagg.crypto import KEY_BYTES, NONCE_BYTES
from hierfl.secagg.errors import SecAggMessageError
from hierfl.secagg.shamir import SHARE_BYTES

__all__ = [
    "CONSISTENCY_DOMAIN",
    "MAX_SIGNATURE_BYTES",
    "SHARE_CIPHERTEXT_BYTES",
    "AdvertiseKeys",
    "ConsistencyCheck",
    "ConsistencySignature",
    "ForwardedShares",
    "KeyRoster",
    "MaskedInput",
    "Message",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "consistency_message",
    "parse",
]

# nonce || ChaCha20-Poly1305(self-mask-seed share || secret-key share) || tag
SHARE_CIPHERTEXT_BYTES = NONCE_BYTES + 2 * SHARE_BYTES + 16
_MAX_ENTRIES = 100_000
_MAX_ID = 128
#: a consistency signature is opaque to the protocol (the transport's: counter || Ed25519)
MAX_SIGNATURE_BYTES = 128
CONSISTENCY_DOMAIN = b"hierfl-secagg/consistency/1"


def consistency_message(region: str, rnd: int, survivors: Iterable[str]) -> bytes:
    """The bytes an edge signs in the consistency check: the domain, the region, the round and
    the survivor set U3 (sorted, so every edge shown the same set signs the same bytes)."""
    body = msgpack.packb([region, rnd, sorted(survivors)], use_bin_type=True)
    return CONSISTENCY_DOMAIN + b"\x00" + body


def _field(d: Mapping[str, Any], name: str) -> Any:
    try:
        return d[name]
    except KeyError:
        raise SecAggMessageError(f"field {name!r} is missing") from None


def _str(d: Mapping[str, Any], name: str) -> str:
    v = _field(d, name)
    if not isinstance(v, str) or not 0 < len(v) <= _MAX_ID:
        raise SecAggMessageError(f"field {name!r} must be a non-empty string of <= {_MAX_ID}")
    return v


def _int(d: Mapping[str, Any], name: str) -> int:
    v = _field(d, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise SecAggMessageError(f"field {name!r} must be a non-negative integer")
    return v


def _bytes(v: Any, name: str, size: int | None) -> bytes:
    if not isinstance(v, bytes | bytearray | memoryview):
        raise SecAggMessageError(f"field {name!r} must be bytes")
    b = bytes(v)
    if size is not None and len(b) != size:
        raise SecAggMessageError(f"field {name!r} must be {size} bytes, got {len(b)}")
    return b


def _ids(d: Mapping[str, Any], name: str) -> tuple[str, ...]:
    v = _field(d, name)
    if not isinstance(v, list | tuple) or len(v) > _MAX_ENTRIES:
        raise SecAggMessageError(f"field {name!r} must be a list of ids")
    if not all(isinstance(i, str) and 0 < len(i) <= _MAX_ID for i in v):
        raise SecAggMessageError(f"field {name!r} must hold non-empty string ids")
    if len(set(v)) != len(v):
        raise SecAggMessageError(f"field {name!r} repeats an id")
    return tuple(v)


def _bytes_map(d: Mapping[str, Any], name: str, size: int | None) -> dict[str, bytes]:
    v = _field(d, name)
    if not isinstance(v, Mapping) or len(v) > _MAX_ENTRIES:
        raise SecAggMessageError(f"field {name!r} must be a map of id to bytes")
    out: dict[str, bytes] = {}
    for k, b in v.items():
        if not isinstance(k, str) or not 0 < len(k) <= _MAX_ID:
            raise SecAggMessageError(f"field {name!r} has a key that is not an id")
        out[k] = _bytes(b, f"{name}[{k}]", size)
        if size is None:
            _signature_size(out[k], f"{name}[{k}]")
    return out


def _signature_size(b: bytes, name: str) -> bytes:
    if not 0 < len(b) <= MAX_SIGNATURE_BYTES:
        raise SecAggMessageError(f"field {name!r} must be 1 to {MAX_SIGNATURE_BYTES} bytes")
    return b


@dataclass(frozen=True, slots=True)
class _Base:
    kind: ClassVar[str] = ""
    region: str
    round: int

    def to_wire(self) -> dict[str, Any]:
        """The message as a msgpack-ready dict (``kind`` names the type)."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True, slots=True)
class AdvertiseKeys(_Base):
    """Stage 0, edge -> fog: the edge's two fresh X25519 public keys."""

    kind: ClassVar[str] = "advertise"
    sender: str
    c_pk: bytes
    s_pk: bytes


@dataclass(frozen=True, slots=True)
class KeyRoster(_Base):
    """Stage 0, fog -> edge: the public keys of the recipient's neighbours that advertised,
    ``{id: [c_pk, s_pk]}`` (the recipient's own keys included, so it can check them)."""

    kind: ClassVar[str] = "roster"
    recipient: str
    keys: dict[str, list[bytes]]


@dataclass(frozen=True, slots=True)
class ShareKeys(_Base):
    """Stage 1, edge -> fog: one encrypted share pair per neighbour, ``{recipient: ct}``."""

    kind: ClassVar[str] = "shares"
    sender: str
    ciphertexts: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class ForwardedShares(_Base):
    """Stage 1, fog -> edge: the shares other edges encrypted to the recipient, ``{sender: ct}``."""

    kind: ClassVar[str] = "forwarded"
    recipient: str
    ciphertexts: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class MaskedInput(_Base):
    """Stage 2, edge -> fog: the masked update, ``dim`` little-endian uint32 words."""

    kind: ClassVar[str] = "masked"
    sender: str
    masked: bytes


@dataclass(frozen=True, slots=True)
class ConsistencyCheck(_Base):
    """Stage 2b, fog -> edge: the survivor set U3 (the edges whose masked input arrived), for
    the recipient to sign (Bonawitz et al. 2017, round 3)."""

    kind: ClassVar[str] = "check"
    recipient: str
    survivors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConsistencySignature(_Base):
    """Stage 2b, edge -> fog: the sender's identity-key signature on
    :func:`consistency_message` of the U3 it was shown (opaque bytes to the protocol)."""

    kind: ClassVar[str] = "consistency"
    sender: str
    signature: bytes


@dataclass(frozen=True, slots=True)
class UnmaskRequest(_Base):
    """Stage 3, fog -> edge: the edges whose masked input arrived (``survivors``), and, per
    neighbour, which share to reveal: the self-mask seed's (``self_mask_of``: it sent) or
    the secret key's (``secret_key_of``: it dropped). Never both for one edge. With the
    consistency check, ``signatures`` relays the recipient's neighbours' (and its own)
    signatures on ``survivors``, ``{signer: signature}``; empty in the semi-honest mode."""

    kind: ClassVar[str] = "unmask"
    recipient: str
    survivors: tuple[str, ...]
    self_mask_of: tuple[str, ...]
    secret_key_of: tuple[str, ...]
    signatures: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UnmaskResponse(_Base):
    """Stage 3, edge -> fog: the requested shares, ``{owner: 66-byte share}``."""

    kind: ClassVar[str] = "reveal"
    sender: str
    self_mask_shares: dict[str, bytes]
    secret_key_shares: dict[str, bytes]


Message = (
    AdvertiseKeys | KeyRoster | ShareKeys | ForwardedShares | MaskedInput | ConsistencyCheck
    | ConsistencySignature | UnmaskRequest | UnmaskResponse
)

_FIELDS: dict[str, frozenset[str]] = {
    cls.kind: frozenset({"kind", *cls.__dataclass_fields__})
    for cls in (
        AdvertiseKeys, KeyRoster, ShareKeys, ForwardedShares, MaskedInput, ConsistencyCheck,
        ConsistencySignature, UnmaskRequest, UnmaskResponse,
    )
}


def parse(obj: Any) -> Message:
    """Validate an untrusted dict (as msgpack unpacked it) and build its message.

    Raises:
        SecAggMessageError: if it is not exactly one of the nine messages, well-typed.
    """
    if isinstance(obj, _Base):
        obj = obj.to_wire()
    if not isinstance(obj, Mapping):
        raise SecAggMessageError(f"message must be a map, got {type(obj).__name__}")
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise SecAggMessageError(f"unknown message kind {kind!r}")
    keys = set(obj.keys())
    if keys != _FIELDS[kind]:
        raise SecAggMessageError(
            f"{kind}: fields {sorted(map(str, keys ^ _FIELDS[kind]))} missing or unexpected"
        )
    region, rnd = _str(obj, "region"), _int(obj, "round")
    if kind == "advertise":
        return AdvertiseKeys(
            region, rnd, _str(obj, "sender"), _bytes(obj["c_pk"], "c_pk", KEY_BYTES),
            _bytes(obj["s_pk"], "s_pk", KEY_BYTES),
        )
    if kind == "roster":
        raw = _field(obj, "keys")
        if not isinstance(raw, Mapping) or len(raw) > _MAX_ENTRIES:
            raise SecAggMessageError("field 'keys' must be a map of id to [c_pk, s_pk]")
        keys_out: dict[str, list[bytes]] = {}
        for k, pair in raw.items():
            if not isinstance(k, str) or not isinstance(pair, list | tuple) or len(pair) != 2:
                raise SecAggMessageError("field 'keys' must map ids to [c_pk, s_pk]")
            keys_out[k] = [_bytes(p, f"keys[{k}]", KEY_BYTES) for p in pair]
        return KeyRoster(region, rnd, _str(obj, "recipient"), keys_out)
    if kind == "shares":
        return ShareKeys(
            region, rnd, _str(obj, "sender"),
            _bytes_map(obj, "ciphertexts", SHARE_CIPHERTEXT_BYTES),
        )
    if kind == "forwarded":
        return ForwardedShares(
            region, rnd, _str(obj, "recipient"),
            _bytes_map(obj, "ciphertexts", SHARE_CIPHERTEXT_BYTES),
        )
    if kind == "masked":
        return MaskedInput(region, rnd, _str(obj, "sender"), _bytes(obj["masked"], "masked", None))
    if kind == "check":
        return ConsistencyCheck(region, rnd, _str(obj, "recipient"), _ids(obj, "survivors"))
    if kind == "consistency":
        return ConsistencySignature(
            region, rnd, _str(obj, "sender"),
            _signature_size(_bytes(_field(obj, "signature"), "signature", None), "signature"),
        )
    if kind == "unmask":
        return UnmaskRequest(
            region, rnd, _str(obj, "recipient"), _ids(obj, "survivors"),
            _ids(obj, "self_mask_of"), _ids(obj, "secret_key_of"),
            _bytes_map(obj, "signatures", None),
        )
    return UnmaskResponse(
        region, rnd, _str(obj, "sender"), _bytes_map(obj, "self_mask_shares", SHARE_BYTES),
        _bytes_map(obj, "secret_key_shares", SHARE_BYTES),
    )
