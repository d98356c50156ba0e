"""Fuzzing decode_frame: whatever the bytes, it returns a frame or raises a WireFormatError.

No other exception type (ValueError, KeyError, zstd or msgpack errors, MemoryError...) may
escape: receivers count rejections by ``exc.reason`` and keep going.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hierfl.errors import WireFormatError
from hierfl.wire import DecodeLimits, decode_frame, encode_frame
from hierfl.wire.frames import AggregateFrame, ModelDeltaFrame, ModelFrame, UpdateFrame
from tests.unit.wire.wire_strategies import (
    MAPS,
    any_frames,
    craft,
    header,
)

FUZZ = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
# Small limits make the size checks reachable by small inputs too.
SMALL = DecodeLimits(max_frame_bytes=4096, max_body_bytes=8192, max_params=256)
FRAME_TYPES = (UpdateFrame, AggregateFrame, ModelFrame, ModelDeltaFrame)


def _decode_or_wire_error(data: bytes, limits: DecodeLimits | None = None) -> None:
    error: WireFormatError | None = None
    try:
        frame = decode_frame(data) if limits is None else decode_frame(data, limits=limits)
    except WireFormatError as exc:
        error = exc
    if error is None:
        assert isinstance(frame, FRAME_TYPES)
    else:
        assert error.reason.startswith("wire.")
        assert not error.retriable


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    _decode_or_wire_error(data)
    _decode_or_wire_error(data, SMALL)


@FUZZ
@given(flags=st.sampled_from([0, 1]), body_len=st.integers(0, 2**32 - 1),
       payload=st.binary(max_size=600))
def test_random_bytes_behind_a_valid_header(flags: int, body_len: int, payload: bytes) -> None:
    data = header(body_len, flags=flags) + payload
    _decode_or_wire_error(data)
    _decode_or_wire_error(data, SMALL)


@FUZZ
@given(body=st.binary(max_size=600), compress=st.booleans())
def test_random_msgpack_bodies(body: bytes, compress: bool) -> None:
    # Exact length in the header, so the msgpack layer itself is what gets fuzzed
    _decode_or_wire_error(craft(None, raw_body=body, compress=compress))


# msgpack-able junk, in the shapes a hostile or buggy encoder could produce
_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=24),
    st.sampled_from(["update", "aggregate", "model", "model_delta", "raw", "fp16", "int8",
                     "topk", "global", "fog"]),
)
_junk = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)


@st.composite
def mangled_maps(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame map with some fields replaced by junk, deleted, or added."""
    m = MAPS[draw(st.sampled_from(sorted(MAPS)))]()
    keys = sorted(m)
    for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        action = draw(st.sampled_from(["replace", "delete", "vector"]))
        if action == "delete":
            del m[key]
        elif action == "vector" and key in ("delta", "weights"):
            vec = dict(m[key])
            sub = draw(st.sampled_from(sorted(vec)))
            vec[sub] = draw(_junk)
            m[key] = vec
        else:
            m[key] = draw(_junk)
    if draw(st.booleans()):
        m[draw(st.text(max_size=8))] = draw(_junk)
    return m


@FUZZ
@given(m=mangled_maps(), compress=st.booleans())
def test_mangled_fields(m: dict[str, Any], compress: bool) -> None:
    _decode_or_wire_error(craft(m, compress=compress))
    _decode_or_wire_error(craft(m, compress=compress), SMALL)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid encoded frame, then flipped, overwritten, truncated, extended or spliced."""
    frame = draw(any_frames)
    data = bytearray(encode_frame(frame, compress=draw(st.booleans())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


@FUZZ
@given(data=mutated_frames())
def test_mutated_frames(data: bytes) -> None:
    _decode_or_wire_error(data)
    _decode_or_wire_error(data, SMALL)


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """A valid msgpack body, mutated, under a header that declares its new length.

    Mutating the plain body (rather than the zstd stream) reaches the msgpack parser and the
    field checks instead of failing at decompression.
    """
    m = MAPS[draw(st.sampled_from(sorted(MAPS)))]()
    body = bytearray(msgpack.packb(m, use_bin_type=True))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(body) - 1))
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert"]))
        if op == "flip":
            body[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            body[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del body[max(pos, 1) :]
        else:
            body[pos:pos] = draw(st.binary(min_size=1, max_size=4))
    return craft(None, raw_body=bytes(body), compress=draw(st.booleans()))


@FUZZ
@given(data=mutated_bodies())
def test_mutated_bodies(data: bytes) -> None:
    _decode_or_wire_error(data)
    _decode_or_wire_error(data, SMALL)


@settings(max_examples=30, deadline=None, database=None)
@given(frame=any_frames, extra=st.binary(min_size=1, max_size=32))
def test_plain_frames_reject_trailing_bytes(frame: Any, extra: bytes) -> None:
    # Uncompressed: the header's length must match the body exactly
    data = encode_frame(frame, compress=False) + extra
    try:
        decode_frame(data)
    except WireFormatError:
        return
    raise AssertionError("trailing bytes after a plain body were accepted")


def test_compressed_frames_reject_trailing_bytes() -> None:
    data = craft(MAPS["update"]())
    with pytest.raises(WireFormatError):
        decode_frame(data + b"trailing junk")


def test_non_finite_floats_everywhere_are_typed_errors() -> None:
    for value in (float("nan"), float("inf"), -float("inf")):
        for kind, make in MAPS.items():
            m = make(created_at=value)
            _decode_or_wire_error(craft(m))
            vec_key = "weights" if kind == "model" else "delta"
            m = make(**{vec_key: {"codec": "raw", "size": 1,
                                  "data": np.array([value], "<f4").tobytes()}})
            if kind == "model":
                m["layout"] = []
            _decode_or_wire_error(craft(m))
