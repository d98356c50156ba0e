"""Frames <-> bytes: a fixed header, then a zstd-compressed msgpack map.

Layout (all integers little-endian)::

    offset 0   4 bytes  magic  b"HFLW"
    offset 4   u8       format version: 1, or 2 for a model_delta frame
    offset 5   u8       flags: bit 0 = body is zstd-compressed; bit 1 = signed;
                        other bits must be 0
    offset 6   u16      reserved, 0
    offset 8   u32      body length after decompression
    (version 3, flag bit 2) u32 meta length m, then m bytes: a plain msgpack map of
                        ``created_at`` and ``timing`` (the round's spans), outside the
                        compressed body, so a frame's size never depends on its clock
    offset 12  ...      body: zstd frame (flag set) or plain msgpack map
    (signed)   ...      signature block (msgpack map), then its length as u16: the last
                        two bytes of the frame (:mod:`hierfl.wire.signing`)

Decoding is strict and bounded: the frame length, then the declared body length, are
checked against :class:`DecodeLimits` before anything is decompressed, and the
decompressor never produces more than the declared length (a zstd bomb is refused). A
vector's declared length is checked against the receiver's model size
(``DecodeLimits.expected_params``) or ``max_params`` before anything is allocated, so a tiny
sparse frame cannot make the receiver allocate a huge vector of zeros.
Every failure raises a :class:`~hierfl.errors.WireFormatError` subclass naming the
problem, or :class:`~hierfl.errors.ShapeMismatchError` for a vector of the wrong length;
no other exception escapes :func:`decode_frame`.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import zstandard

from hierfl.errors import (
    DecompressionError,
    FrameFieldError,
    FrameTooLargeError,
    HierflError,
    SignatureError,
    UnsupportedVersionError,
    WireFormatError,
)
from hierfl.types import Float32Vector
from hierfl.wire.frames import (
    AggregateFrame,
    EdgeProof,
    Frame,
    LayoutEntry,
    ModelDeltaFrame,
    ModelFrame,
    TimingSpan,
    UpdateFrame,
)
from hierfl.wire.tensors import decode_vector, encode_vector

__all__ = [
    "DELTA_FORMAT_VERSION",
    "FLAG_META",
    "FLAG_SIGNED",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "META_FORMAT_VERSION",
    "DecodeLimits",
    "FrameSigner",
    "decode_frame",
    "encode_frame",
    "split_signed",
]

MAGIC = b"HFLW"
FORMAT_VERSION = 1
#: Version 2 is version 1 plus the ``model_delta`` kind. Each frame is written with the lowest
#: version that defines its kind, so v1 receivers keep decoding every frame they knew.
DELTA_FORMAT_VERSION = 2
#: Version 3 is version 2 plus the meta section (flag bit 2): an update or aggregate that
#: carries timing spans is written as version 3; every other frame as before.
META_FORMAT_VERSION = 3
_VERSIONS = (FORMAT_VERSION, DELTA_FORMAT_VERSION, META_FORMAT_VERSION)
FLAG_ZSTD = 0x01
FLAG_SIGNED = 0x02
FLAG_META = 0x04
_META_LEN = struct.Struct("<I")
MAX_META_BYTES = 4 << 20
_TRAILER_LEN = struct.Struct("<H")
MAX_SIG_BLOCK = 1024
_HEADER = struct.Struct("<4sBBHI")
HEADER_SIZE = _HEADER.size  # 12

_MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Upper bounds enforced while decoding untrusted bytes.

    Attributes:
        max_frame_bytes: largest encoded frame accepted (header included).
        max_body_bytes: largest body after decompression.
        max_params: largest vector length accepted.
        expected_params: the vector length the receiver's model has, once it knows it
            (a fog holding a global model, the cloud, an edge); a frame whose vector
            declares another length is refused with
            :class:`~hierfl.errors.ShapeMismatchError` before anything is allocated.
            ``None``: only ``max_params`` bounds it.
    """

    max_frame_bytes: int = 64 * _MiB
    max_body_bytes: int = 256 * _MiB
    max_params: int = 50_000_000
    expected_params: int | None = None


DEFAULT_LIMITS = DecodeLimits()


class FrameSigner(Protocol):
    """What :func:`encode_frame` needs of a signer (:class:`hierfl.wire.signing.Signer`)."""

    def signature_block(self, frame: Frame, header: bytes, body: bytes) -> bytes:
        """The signature block over ``header + body`` (the frame before the block)."""
        ...


def encode_frame(
    frame: Frame,
    *,
    codec: Any = None,
    level: int = 1,
    compress: bool = True,
    signer: FrameSigner | None = None,
    timing: Callable[[], tuple[TimingSpan, ...]] | None = None,
) -> bytes:
    """Serialise a frame to bytes.

    Args:
        frame: the frame to encode.
        codec: vector codec for the frame's delta/weights (``None`` = raw float32); see
            :mod:`hierfl.compression`.
        level: zstd level (1 is as small as 3 for float deltas and much faster).
        compress: zstd-compress the body (flag bit 0).
        signer: sign the frame (flag bit 1, a signature block after the body).
        timing: called once the body is compressed, for the frame's timing spans instead of
            ``frame.timing`` (an encode span that covers the compression: the sender's
            clock is read as late as it can be).

    Returns:
        The frame bytes.
    """
    fields = _to_map(frame, codec)
    with_meta = bool(timing is not None or getattr(frame, "timing", ()))
    created_at = fields.pop("created_at") if with_meta else None
    body = msgpack.packb(fields, use_bin_type=True)
    flags = 0
    payload = body
    if compress:
        payload = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(body)
        flags |= FLAG_ZSTD
    meta = b""
    if with_meta:
        # the clock readings go outside the compressed body: zstd's entropy coding would make
        # the frame's size depend on them (bytes must be the same run to run)
        spans = timing() if timing is not None else frame.timing  # type: ignore[union-attr]
        meta = msgpack.packb({"created_at": created_at, "timing": [
            [t.name, t.party, float(t.start), float(t.end)] for t in spans]}, use_bin_type=True)
        if len(meta) > MAX_META_BYTES:
            raise WireFormatError(f"meta section of {len(meta)} bytes exceeds {MAX_META_BYTES}")
    version = DELTA_FORMAT_VERSION if isinstance(frame, ModelDeltaFrame) else FORMAT_VERSION
    if meta:
        version = META_FORMAT_VERSION
        flags |= FLAG_META
        payload = b"".join((_META_LEN.pack(len(meta)), meta, payload))
    if signer is None:
        return _HEADER.pack(MAGIC, version, flags, 0, len(body)) + payload
    header = _HEADER.pack(MAGIC, version, flags | FLAG_SIGNED, 0, len(body))
    block = signer.signature_block(frame, header, payload)
    if len(block) > MAX_SIG_BLOCK:
        raise WireFormatError(f"signature block of {len(block)} bytes exceeds {MAX_SIG_BLOCK}")
    return b"".join((header, payload, block, _TRAILER_LEN.pack(len(block))))


def split_signed(data: bytes | memoryview) -> tuple[memoryview, memoryview | None]:
    """Split a frame into ``(header + body, signature block)``; the block is None when the
    frame is not signed (flag bit 1 clear). Checks only the framing, not the signature.

    Raises:
        WireFormatError: if the header is short, not a hierfl header (UnsupportedVersionError),
            or the signature block's length is not plausible (SignatureError).
    """
    view = memoryview(data)
    if len(view) < HEADER_SIZE:
        raise WireFormatError(f"frame of {len(view)} bytes is shorter than the header")
    if view[:4] != MAGIC:
        raise UnsupportedVersionError(f"bad magic {bytes(view[:4])!r}: not a hierfl frame")
    if view[4] not in _VERSIONS:
        raise UnsupportedVersionError(
            f"format version {view[4]} is not supported (want 1, 2 or 3)")
    if not view[5] & FLAG_SIGNED:
        return view, None
    if len(view) < HEADER_SIZE + _TRAILER_LEN.size:
        raise SignatureError("signed frame too short for its signature block")
    (n,) = _TRAILER_LEN.unpack_from(view, len(view) - _TRAILER_LEN.size)
    end = len(view) - _TRAILER_LEN.size - n
    if n == 0 or n > MAX_SIG_BLOCK or end < HEADER_SIZE:
        raise SignatureError(f"signature block length {n} is not plausible")
    return view[:end], view[end : len(view) - _TRAILER_LEN.size]


def decode_frame(data: bytes | memoryview, *, limits: DecodeLimits = DEFAULT_LIMITS) -> Frame:
    """Parse and validate frame bytes.

    Args:
        data: bytes as received (untrusted).
        limits: size bounds.

    Returns:
        An :class:`UpdateFrame`, :class:`AggregateFrame`, :class:`ModelFrame` or (format
        version 2) :class:`ModelDeltaFrame`.

    Raises:
        WireFormatError: (a subclass naming the problem) for anything that is not a valid
            v1 or v2 frame within ``limits``.
        ShapeMismatchError: (reason ``validation.shape``) if ``limits.expected_params`` is
            set and the frame's vector declares another length.
    """
    try:
        return _decode(data, limits)
    except HierflError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError, MemoryError) as exc:
        # Defensive net: a decoder bug must still surface as a typed wire error.
        raise WireFormatError(f"malformed frame: {type(exc).__name__}: {exc}") from exc


def _decode(data: bytes | memoryview, limits: DecodeLimits) -> Frame:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireFormatError(f"expected bytes, got {type(data).__name__}")
    if len(data) > limits.max_frame_bytes:
        raise FrameTooLargeError(
            f"frame of {len(data)} bytes exceeds the limit of {limits.max_frame_bytes}"
        )
    if len(data) < HEADER_SIZE:
        raise WireFormatError(f"frame of {len(data)} bytes is shorter than the header")
    data, _ = split_signed(data)  # verified, when it must be, by hierfl.wire.signing
    magic, version, flags, reserved, body_len = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise UnsupportedVersionError(f"bad magic {bytes(magic)!r}: not a hierfl frame")
    if version not in _VERSIONS:
        raise UnsupportedVersionError(
            f"format version {version} is not supported (want 1, 2 or 3)")
    if flags & ~(FLAG_ZSTD | FLAG_SIGNED | FLAG_META) or reserved:
        raise UnsupportedVersionError(f"unknown flags {flags:#x} / reserved {reserved:#x}")
    if bool(flags & FLAG_META) != (version == META_FORMAT_VERSION):
        raise UnsupportedVersionError("the meta section (flag bit 2) comes with format "
                                      "version 3, and only with it")
    if body_len > limits.max_body_bytes:
        raise FrameTooLargeError(
            f"declared body of {body_len} bytes exceeds the limit of {limits.max_body_bytes}"
        )
    payload = memoryview(data)[HEADER_SIZE:]  # no copy of a multi-megabyte frame
    meta = None
    if flags & FLAG_META:
        meta, payload = _split_meta(payload)
    body = _decompress(payload, body_len) if flags & FLAG_ZSTD else payload
    if len(body) != body_len:
        raise WireFormatError(f"body is {len(body)} bytes, header declares {body_len}")
    fields = _unpack(body, limits)
    if meta is not None:
        if "created_at" in fields or "timing" in fields:
            raise FrameFieldError("created_at", "a version-3 frame keeps it in the meta section")
        fields["created_at"] = meta["created_at"]
    return _from_map(fields, limits, version, timing=meta["timing"] if meta else None)


def _split_meta(payload: memoryview) -> tuple[dict[str, Any], memoryview]:
    """``(meta map, rest of the payload)``: the meta section is bounded and strict."""
    if len(payload) < _META_LEN.size:
        raise WireFormatError("frame too short for its meta section")
    (n,) = _META_LEN.unpack_from(payload)
    if n > MAX_META_BYTES or n > len(payload) - _META_LEN.size:
        raise FrameTooLargeError(f"meta section of {n} bytes is not plausible")
    raw = payload[_META_LEN.size : _META_LEN.size + n]
    try:
        meta = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True,
                               max_bin_len=0, max_str_len=256, max_array_len=100_000,
                               max_map_len=8, max_ext_len=0)
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise WireFormatError(f"meta section is not valid msgpack: {exc}") from exc
    if not isinstance(meta, dict) or set(meta) != {"created_at", "timing"}:
        raise FrameFieldError("meta", "expected exactly created_at and timing")
    if not isinstance(meta["timing"], list):
        raise FrameFieldError("timing", "expected a list of spans")
    return meta, payload[_META_LEN.size + n :]


def _timing(items: list[Any]) -> tuple[TimingSpan, ...]:
    out = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 4):
            raise FrameFieldError("timing", "expected [name, party, start, end] spans")
        out.append(TimingSpan(*item))
    return tuple(out)


def _decompress(payload: memoryview, body_len: int) -> bytes:
    # SAFETY: never call decompress() without a bound. The zstd frame must declare its
    # content size, equal to the header's (already checked against the limit); the
    # decompressor then allocates exactly that and refuses to produce more, and trailing
    # bytes after the frame are refused (no malleable frames). A zstd bomb costs nothing.
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise DecompressionError(f"corrupt zstd body: {exc}") from exc
    if params.content_size != body_len:
        raise FrameTooLargeError(
            f"zstd frame declares {params.content_size} bytes, header declares {body_len}"
        )
    try:
        body = zstandard.ZstdDecompressor().decompress(
            payload, max_output_size=body_len, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise DecompressionError(f"corrupt zstd body: {exc}") from exc
    return bytes(body)


def _unpack(body: bytes | memoryview, limits: DecodeLimits) -> dict[str, Any]:
    # SAFETY: no ext_hook / object_hook revival, bounded lengths, string keys only.
    # Never add an ext_hook that builds objects; never reach for pickle.
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=limits.max_body_bytes,
            max_str_len=1 * _MiB,
            max_array_len=1_000_000,
            max_map_len=100_000,
            max_ext_len=0,
        )
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise WireFormatError(f"body is not valid msgpack: {exc}") from exc
    if not isinstance(obj, dict):
        raise FrameFieldError("body", "expected a map")
    return obj


# --- frame <-> map ----------------------------------------------------------------------------


def _to_map(frame: Frame, codec: Any) -> dict[str, Any]:
    common = {"kind": frame.KIND, "federation": frame.federation, "created_at": frame.created_at
              or time.time(), "metrics": dict(frame.metrics)}
    if isinstance(frame, UpdateFrame):
        return common | {
            "fog": frame.fog_id,
            "edge": frame.edge_id,
            "base_version": frame.base_version,
            "base_seq": frame.base_seq,
            "num_samples": frame.num_samples,
            "delta": encode_vector(frame.delta, codec),
        } | _control_map(frame.control)
    if isinstance(frame, AggregateFrame):
        out = common | {
            "fog": frame.fog_id,
            "base_version": frame.base_version,
            "num_samples": frame.num_samples,
            "contributors": list(frame.contributors),
            "fog_rounds": frame.fog_rounds,
            "delta": encode_vector(frame.delta, codec),
        }
        if frame.provenance:
            out["provenance"] = [[p.edge_id, p.base_version, p.base_seq, p.counter,
                                  p.payload_hash, p.signature] for p in frame.provenance]
        return out | _control_map(frame.control)
    if isinstance(frame, ModelDeltaFrame):
        return common | {
            "fog": frame.fog_id,
            "version": frame.version,
            "seq": frame.seq,
            "fog_round": frame.fog_round,
            "base_version": frame.base_version,
            "base_seq": frame.base_seq,
            "digest": frame.digest,
            "delta": encode_vector(frame.delta, codec),
        }
    return common | {
        "version": frame.version,
        "parent": frame.parent,
        "scope": frame.scope,
        "fog": frame.fog_id,
        "seq": frame.seq,
        "fog_round": frame.fog_round,
        "layout": [[e.name, list(e.shape)] for e in frame.layout],
        "weights": encode_vector(frame.weights, codec),
    } | _control_map(frame.control)


def _control_map(control: Float32Vector | None) -> dict[str, Any]:
    """SCAFFOLD's control vector, raw float32 (lossless), only when present: a frame
    without it encodes to the very bytes it did before the field existed."""
    return {} if control is None else {"control": encode_vector(control, None)}


_REQUIRED = {
    "update": ("fog", "edge", "base_version", "base_seq", "num_samples", "delta"),
    "aggregate": ("fog", "base_version", "num_samples", "contributors", "fog_rounds", "delta"),
    "model": ("version", "parent", "scope", "fog", "seq", "fog_round", "layout", "weights"),
    "model_delta": ("fog", "version", "seq", "fog_round", "base_version", "base_seq", "digest",
                    "delta"),
}
_COMMON = ("kind", "federation", "created_at", "metrics")
_OPTIONAL = {"aggregate": ("provenance", "control"), "update": ("control",),
             "model": ("control",)}


def _vector(fields: Any, limits: DecodeLimits, field: str) -> Float32Vector:
    return decode_vector(fields, max_size=limits.max_params, field=field,
                         expected_size=limits.expected_params)


def _control(m: dict[str, Any], limits: DecodeLimits) -> Float32Vector | None:
    return _vector(m["control"], limits, "control") if "control" in m else None


def _provenance(items: object) -> tuple[EdgeProof, ...]:
    if not isinstance(items, list):
        raise FrameFieldError("provenance", "expected a list")
    out = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 6):
            raise FrameFieldError("provenance", "expected [edge, base, seq, ctr, hash, sig]")
        out.append(EdgeProof(*item))
    return tuple(out)


def _from_map(m: dict[str, Any], limits: DecodeLimits, version: int = FORMAT_VERSION, *,
              timing: list[Any] | None = None) -> Frame:
    kind = m.get("kind")
    if not isinstance(kind, str) or kind not in _REQUIRED:
        raise FrameFieldError("kind", f"expected one of {sorted(_REQUIRED)}, got {kind!r}")
    if kind == ModelDeltaFrame.KIND and version < DELTA_FORMAT_VERSION:
        raise FrameFieldError("kind", "model_delta needs format version 2")
    if timing is not None and kind not in ("update", "aggregate"):
        raise FrameFieldError("timing", f"a {kind} frame carries no timing")

    for key in (*_COMMON, *_REQUIRED[kind]):
        if key not in m:
            raise FrameFieldError(key, "missing")
    extra = set(m) - set(_COMMON) - set(_REQUIRED[kind]) - set(_OPTIONAL.get(kind, ())) - {"sig"}
    if extra:
        raise FrameFieldError(sorted(map(str, extra))[0], "unknown field")
    if timing is not None:
        m = m | {"timing": _timing(timing)}
    common = {"federation": m["federation"], "created_at": m["created_at"], "metrics": m["metrics"]}
    if kind == "update":
        return UpdateFrame(
            fog_id=m["fog"],
            edge_id=m["edge"],
            base_version=m["base_version"],
            base_seq=m["base_seq"],
            num_samples=m["num_samples"],
            delta=_vector(m["delta"], limits, "delta"),
            timing=m.get("timing", ()),
            control=_control(m, limits),
            **common,
        )
    if kind == "aggregate":
        contributors = m["contributors"]
        if not isinstance(contributors, list):
            raise FrameFieldError("contributors", "expected a list of edge ids")
        return AggregateFrame(
            fog_id=m["fog"],
            base_version=m["base_version"],
            num_samples=m["num_samples"],
            contributors=tuple(contributors),
            fog_rounds=m["fog_rounds"],
            provenance=_provenance(m.get("provenance", [])),
            delta=_vector(m["delta"], limits, "delta"),
            timing=m.get("timing", ()),
            control=_control(m, limits),
            **common,
        )
    if kind == "model_delta":
        return ModelDeltaFrame(
            fog_id=m["fog"],
            version=m["version"],
            seq=m["seq"],
            fog_round=m["fog_round"],
            base_version=m["base_version"],
            base_seq=m["base_seq"],
            delta=_vector(m["delta"], limits, "delta"),
            digest=m["digest"],
            **common,
        )
    layout = m["layout"]
    if not isinstance(layout, list):
        raise FrameFieldError("layout", "expected a list of [name, shape] pairs")
    entries = []
    for item in layout:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], list)):
            raise FrameFieldError("layout", "expected [name, [dims...]] pairs")
        entries.append(LayoutEntry(item[0], tuple(item[1])))
    return ModelFrame(
        version=m["version"],
        parent=m["parent"],
        scope=m["scope"],
        fog_id=m["fog"],
        seq=m["seq"],
        fog_round=m["fog_round"],
        layout=tuple(entries),
        weights=_vector(m["weights"], limits, "weights"),
        control=_control(m, limits),
        **common,
    )
