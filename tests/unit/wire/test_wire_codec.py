"""Wire format v1 codec: round trips, and one crafted frame per way decoding must fail.

Each failure case asserts the exact error class (its ``reason`` is the metrics label a
receiver counts), not just "some WireFormatError".
"""

from __future__ import annotations

import io
import time
import tracemalloc
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfl.errors import (
    BadTensorError,
    DecompressionError,
    FrameFieldError,
    FrameTooLargeError,
    NonFiniteTensorError,
    UnsupportedVersionError,
    WireFormatError,
)
from hierfl.wire import (
    AggregateFrame,
    DecodeLimits,
    LayoutEntry,
    ModelFrame,
    UpdateFrame,
    decode_frame,
    encode_frame,
)
from hierfl.wire.codec import FORMAT_VERSION, HEADER_SIZE, MAGIC
from tests.unit.wire.wire_strategies import (
    MAPS,
    aggregate_frames,
    aggregate_map,
    any_frames,
    assert_frames_equal,
    craft,
    header,
    model_frames,
    model_map,
    raw_vector,
    update_frames,
    update_map,
)

FAST = settings(max_examples=40, deadline=None, database=None)

# --- round trips ------------------------------------------------------------------------------


@FAST
@given(frame=update_frames(), compress=st.booleans())
def test_update_round_trip(frame: UpdateFrame, compress: bool) -> None:
    # Execute
    out = decode_frame(encode_frame(frame, compress=compress))
    # Assert
    assert_frames_equal(frame, out)


@FAST
@given(frame=aggregate_frames(), compress=st.booleans())
def test_aggregate_round_trip(frame: AggregateFrame, compress: bool) -> None:
    out = decode_frame(encode_frame(frame, compress=compress))
    assert_frames_equal(frame, out)
    assert out.aggregate_id == f"{frame.fog_id}@{frame.base_version}"


@FAST
@given(frame=model_frames(), compress=st.booleans())
def test_model_round_trip(frame: ModelFrame, compress: bool) -> None:
    out = decode_frame(encode_frame(frame, compress=compress))
    assert_frames_equal(frame, out)


@settings(max_examples=15, deadline=None, database=None)
@given(frame=any_frames, level=st.integers(1, 19))
def test_round_trip_at_any_zstd_level(frame: Any, level: int) -> None:
    assert_frames_equal(frame, decode_frame(encode_frame(frame, level=level)))


@pytest.mark.parametrize("compress", [True, False])
def test_large_vector_round_trip(compress: bool) -> None:
    # Prepare: 1M parameters (4 MB), with the awkward floats a model can hold
    rng = np.random.default_rng(7)
    delta = rng.standard_normal(1_000_000, dtype=np.float32)
    delta[:6] = [-0.0, 0.0, np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45, -1e-45]
    frame = UpdateFrame("fed", "fog", "edge", 1, 0, 5, delta, created_at=2.0)
    # Execute
    data = encode_frame(frame, compress=compress)
    out = decode_frame(data)
    # Assert
    assert_frames_equal(frame, out)
    assert out.delta.flags.writeable
    if not compress:
        assert len(data) > HEADER_SIZE + 4 * delta.size


def test_empty_vector_round_trip() -> None:
    frame = ModelFrame("fed", 0, np.zeros(0, np.float32), created_at=3.0)
    assert_frames_equal(frame, decode_frame(encode_frame(frame)))


def test_decoded_vector_is_a_native_writable_copy() -> None:
    frame = UpdateFrame("f", "g", "e", 0, 0, 1, np.arange(4, dtype=np.float32), created_at=1.0)
    out = decode_frame(encode_frame(frame, compress=False))
    out.delta[0] = 42.0  # must not alias the (immutable) input bytes
    assert out.delta.dtype == np.dtype(np.float32)
    assert out.delta.dtype.isnative


def test_created_at_zero_means_now() -> None:
    frame = UpdateFrame("f", "g", "e", 0, 0, 1, np.zeros(1, np.float32))
    before = time.time()
    out = decode_frame(encode_frame(frame))
    assert before <= out.created_at <= time.time()


def test_header_layout() -> None:
    # Prepare
    frame = UpdateFrame("f", "g", "e", 0, 0, 1, np.zeros(2, np.float32), created_at=1.0)
    # Execute
    packed = encode_frame(frame)
    plain = encode_frame(frame, compress=False)
    # Assert: magic, version, flags, reserved, little-endian body length
    assert packed[:4] == plain[:4] == MAGIC == b"HFLW"
    assert packed[4] == plain[4] == FORMAT_VERSION == 1
    assert packed[5] == 1
    assert plain[5] == 0
    assert packed[6:8] == plain[6:8] == b"\0\0"
    body_len = int.from_bytes(plain[8:12], "little")
    assert body_len == len(plain) - HEADER_SIZE
    assert int.from_bytes(packed[8:12], "little") == body_len
    assert zstandard.ZstdDecompressor().decompress(packed[12:]) == plain[12:]
    assert msgpack.unpackb(plain[12:])["kind"] == "update"


@pytest.mark.parametrize("kind", ["update", "aggregate", "model", "model_delta"])
@pytest.mark.parametrize("compress", [True, False])
def test_hand_crafted_maps_decode(kind: str, compress: bool) -> None:
    frame = decode_frame(craft(MAPS[kind](), compress=compress))
    assert kind == frame.KIND


def test_input_may_be_any_bytes_like() -> None:
    data = craft(update_map())
    for view in (bytearray(data), memoryview(data)):
        assert isinstance(decode_frame(view), UpdateFrame)


def test_reserved_sig_field_is_accepted_and_ignored() -> None:
    frame = decode_frame(craft(update_map(sig=b"\x01" * 64)))
    assert isinstance(frame, UpdateFrame)


def test_numbers_in_any_msgpack_width_are_accepted() -> None:
    # A foreign encoder may pick float32 and the smallest int widths
    body = msgpack.packb(update_map(created_at=2.5, metrics={"m": 1.5}), use_single_float=True)
    assert decode_frame(craft(None, raw_body=body)).created_at == 2.5


def test_fog_scoped_model_round_trip() -> None:
    frame = ModelFrame(
        "fed", 2, np.ones(3, np.float32), parent=1, scope="fog", fog_id="g1", seq=5,
        fog_round=1, layout=(LayoutEntry("x", (3,)),), created_at=9.0,
    )
    assert_frames_equal(frame, decode_frame(encode_frame(frame)))


# --- header and size failures -----------------------------------------------------------------


def _valid() -> bytes:
    return craft(update_map())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"XXXX" + _valid()[4:], id="bad-magic"),
        pytest.param(b"hflw" + _valid()[4:], id="magic-is-case-sensitive"),
        pytest.param(_valid()[:4] + bytes([3]) + _valid()[5:], id="version-3"),
        pytest.param(_valid()[:4] + bytes([0]) + _valid()[5:], id="version-0"),
        pytest.param(_valid()[:5] + bytes([0x05]) + _valid()[6:], id="flag-bit-2"),
        pytest.param(_valid()[:5] + bytes([0x81]) + _valid()[6:], id="flag-bit-7"),
        pytest.param(_valid()[:6] + b"\x01\x00" + _valid()[8:], id="reserved-nonzero"),
    ],
)
def test_header_rejected_as_unsupported_version(data: bytes) -> None:
    with pytest.raises(UnsupportedVersionError):
        decode_frame(data)


@pytest.mark.parametrize("n", [0, 1, HEADER_SIZE - 1])
def test_shorter_than_header(n: int) -> None:
    with pytest.raises(WireFormatError):
        decode_frame(_valid()[:n])


def test_not_bytes() -> None:
    with pytest.raises(WireFormatError):
        decode_frame("HFLW....")  # type: ignore[arg-type]


def test_frame_over_max_frame_bytes() -> None:
    # Prepare
    data = _valid()
    limits = DecodeLimits(max_frame_bytes=len(data) - 1)
    # Execute / Assert: checked before anything else, even the magic
    with pytest.raises(FrameTooLargeError):
        decode_frame(data, limits=limits)
    with pytest.raises(FrameTooLargeError):
        decode_frame(b"junk" * 1000, limits=DecodeLimits(max_frame_bytes=100))
    assert decode_frame(data, limits=DecodeLimits(max_frame_bytes=len(data)))


def test_declared_body_over_max_body_bytes() -> None:
    data = craft(update_map())
    body_len = int.from_bytes(data[8:12], "little")
    with pytest.raises(FrameTooLargeError):
        decode_frame(data, limits=DecodeLimits(max_body_bytes=body_len - 1))
    # A lying header is refused from the header alone, without touching the payload
    with pytest.raises(FrameTooLargeError):
        decode_frame(header(2**32 - 1) + b"not even zstd")


def _zstd_bomb(total_bytes: int) -> bytes:
    """A zstd stream of ``total_bytes`` zeros, built without holding them in memory."""
    c = zstandard.ZstdCompressor(level=3).compressobj()
    block = bytes(1 << 20)
    parts = [c.compress(block) for _ in range(total_bytes >> 20)]
    return b"".join(parts) + c.flush()


@pytest.fixture(scope="module")
def zstd_bomb() -> bytes:
    return _zstd_bomb(300 << 20)


def test_zstd_bomb_is_refused_without_allocating(zstd_bomb: bytes) -> None:
    # Prepare: a few KB that inflate to 300 MiB, declaring a 1 KiB body
    assert len(zstd_bomb) < 32 * 1024
    data = header(1024) + zstd_bomb
    # Execute
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(FrameTooLargeError):
            decode_frame(data)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Assert: bounded by the declared length, not by what the stream would produce
    assert elapsed < 2.0
    assert peak < 4 << 20


def test_zstd_bomb_under_a_small_body_limit(zstd_bomb: bytes) -> None:
    limits = DecodeLimits(max_body_bytes=1 << 20)
    with pytest.raises(FrameTooLargeError):
        decode_frame(header(1 << 20) + zstd_bomb, limits=limits)
    with pytest.raises(FrameTooLargeError):
        decode_frame(header((1 << 20) + 1) + zstd_bomb, limits=limits)


def test_zstd_bomb_really_inflates(zstd_bomb: bytes) -> None:
    # Guard against a test that passes because its "bomb" is a dud; streamed, 1 MiB at a time
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zstd_bomb))
    total = 0
    while chunk := reader.read(1 << 20):
        total += len(chunk)
    assert total == 300 << 20


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"this is not zstd at all", id="no-zstd-magic"),
        pytest.param(b"\x28\xb5\x2f\xfd" + b"\xff" * 20, id="bad-frame-descriptor"),
    ],
)
def test_corrupt_zstd(payload: bytes) -> None:
    with pytest.raises(DecompressionError):
        decode_frame(header(100) + payload)


def test_zstd_body_shorter_than_declared() -> None:
    # Prepare: a valid stream of N bytes under a header that declares N + 1
    body = msgpack.packb(update_map())
    data = header(len(body) + 1) + zstandard.ZstdCompressor().compress(body)
    # Execute / Assert
    with pytest.raises(WireFormatError):
        decode_frame(data)


def test_truncated_zstd_stream() -> None:
    data = craft(update_map())
    with pytest.raises(WireFormatError):
        decode_frame(data[:-4])


@pytest.mark.parametrize("delta", [-1, 1])
def test_plain_body_length_must_match_header(delta: int) -> None:
    body = msgpack.packb(update_map(), use_bin_type=True)
    with pytest.raises(WireFormatError):
        decode_frame(header(len(body) + delta, flags=0) + body)


# --- msgpack-level failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw_body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="never-used-byte"),
        pytest.param(b"\x82\xa1a", id="truncated-map"),
        pytest.param(msgpack.packb(update_map()) + b"\xc0", id="trailing-object"),
        pytest.param(msgpack.packb({"kind": msgpack.ExtType(1, b"abc")}), id="ext-type"),
        pytest.param(msgpack.packb(update_map(created_at=msgpack.Timestamp(1))),
                     id="timestamp-ext"),
        pytest.param(msgpack.packb({1: "int key"}), id="int-map-key"),
        pytest.param(msgpack.packb([1, 2, 3]), id="array-body"),
        pytest.param(msgpack.packb("update"), id="str-body"),
        pytest.param(msgpack.packb(None), id="nil-body"),
        pytest.param(msgpack.packb(b"\0" * 8, use_bin_type=True), id="bin-body"),
    ],
)
@pytest.mark.parametrize("compress", [True, False])
def test_not_a_msgpack_map(raw_body: bytes, compress: bool) -> None:
    with pytest.raises(WireFormatError):
        decode_frame(craft(None, raw_body=raw_body, compress=compress))


def test_non_map_body_names_the_body_field() -> None:
    with pytest.raises(FrameFieldError) as info:
        decode_frame(craft([1, 2]))
    assert info.value.field == "body"


# --- field failures ---------------------------------------------------------------------------


_REQUIRED = {
    "update": ["kind", "federation", "created_at", "metrics", "fog", "edge", "base_version",
               "base_seq", "num_samples", "delta"],
    "aggregate": ["kind", "federation", "created_at", "metrics", "fog", "base_version",
                  "num_samples", "contributors", "fog_rounds", "delta"],
    "model": ["kind", "federation", "created_at", "metrics", "version", "parent", "scope",
              "fog", "seq", "fog_round", "layout", "weights"],
    "model_delta": ["kind", "federation", "created_at", "metrics", "fog", "version", "seq",
                    "fog_round", "base_version", "base_seq", "digest", "delta"],
}


@pytest.mark.parametrize(
    ("kind", "key"), [(k, f) for k, fields in _REQUIRED.items() for f in fields]
)
def test_missing_field(kind: str, key: str) -> None:
    # Prepare
    m = MAPS[kind]()
    del m[key]
    # Execute / Assert
    with pytest.raises(FrameFieldError) as info:
        decode_frame(craft(m))
    assert info.value.field == key


@pytest.mark.parametrize("kind", ["update", "aggregate", "model", "model_delta"])
def test_unknown_field(kind: str) -> None:
    with pytest.raises(FrameFieldError) as info:
        decode_frame(craft(MAPS[kind](zzz_future=1)))
    assert info.value.field == "zzz_future"
    assert info.value.problem == "unknown field"


def test_fields_of_another_kind_are_unknown() -> None:
    with pytest.raises(FrameFieldError) as info:
        decode_frame(craft(update_map(contributors=["e1"])))
    assert info.value.field == "contributors"


@pytest.mark.parametrize("kind", ["", "Update", "heartbeat", 1, None, True, b"update"])
def test_unknown_kind(kind: object) -> None:
    with pytest.raises(FrameFieldError) as info:
        decode_frame(craft(update_map(kind=kind)))
    assert info.value.field == "kind"


def test_unhashable_kind_is_a_field_error() -> None:
    with pytest.raises(WireFormatError) as info:
        decode_frame(craft(update_map(kind=["update"])))
    assert isinstance(info.value, FrameFieldError)


WRONG_TYPES: list[tuple[str, str, Any]] = [
    ("update", "federation", 7),
    ("update", "federation", b"fed"),  # bin, not str
    ("update", "fog", None),
    ("update", "edge", ["e"]),
    ("update", "base_version", 1.0),
    ("update", "base_version", "1"),
    ("update", "base_seq", True),  # bool is not an int on the wire
    ("update", "num_samples", None),
    ("update", "created_at", "now"),
    ("update", "created_at", None),
    ("update", "created_at", False),
    ("update", "metrics", []),
    ("update", "metrics", {"loss": "low"}),
    ("update", "metrics", {"loss": None}),
    ("update", "metrics", {"loss": True}),
    ("update", "metrics", {"loss": [1.0]}),
    ("aggregate", "contributors", "e1"),
    ("aggregate", "contributors", {"e1": 1}),
    ("aggregate", "contributors", [1, 2]),
    ("aggregate", "fog_rounds", 2.0),
    ("model", "version", None),
    ("model", "parent", "3"),
    ("model", "scope", 1),
    ("model", "scope", ["global"]),
    ("model", "seq", 0.0),
    ("model", "fog_round", None),
    ("model", "layout", {"w": [2]}),
    ("model", "layout", [["w"]]),
    ("model", "layout", [["w", 4]]),
    ("model", "layout", [[1, [2, 2]], ["b", [2]]]),
    ("model", "layout", [["w", [2.0, 2]], ["b", [2]]]),
    ("model", "layout", [["w", [2, 2], "extra"], ["b", [2]]]),
]


@pytest.mark.parametrize(("kind", "key", "value"), WRONG_TYPES)
def test_wrong_type(kind: str, key: str, value: Any) -> None:
    with pytest.raises(FrameFieldError):
        decode_frame(craft(MAPS[kind](**{key: value})))


OUT_OF_RANGE: list[tuple[str, str, Any]] = [
    ("update", "base_version", -1),
    ("update", "base_version", 2**63),
    ("update", "base_version", 2**64 - 1),
    ("update", "base_seq", -(2**63)),
    ("update", "num_samples", 0),
    ("update", "num_samples", -5),
    ("update", "created_at", float("nan")),
    ("update", "created_at", float("inf")),
    ("update", "metrics", {"loss": float("nan")}),
    ("update", "metrics", {"loss": float("-inf")}),
    ("update", "metrics", {"": 1.0}),
    ("update", "metrics", {"x" * 257: 1.0}),
    ("update", "metrics", {f"m{i}": 1.0 for i in range(65)}),
    ("aggregate", "fog_rounds", 0),
    ("aggregate", "fog_rounds", 10_001),
    ("aggregate", "num_samples", 0),
    ("aggregate", "contributors", []),
    ("aggregate", "contributors", ["e1", "e1"]),
    ("model", "version", -1),
    ("model", "parent", -1),
    ("model", "seq", -1),
    ("model", "fog_round", 10_001),
    ("model", "fog_round", -1),
    ("model", "scope", "regional"),
    ("model", "layout", [["w", [2, 2]]]),  # sizes add up to 4, weights hold 6
    ("model", "layout", [["w", [6, 1, 1, 1, 1, 1, 1, 1, 1]]]),  # 9 dimensions
    ("model", "layout", [["w", [-6]]]),
    ("model", "layout", [["w", [2**31 + 1]]]),
    ("model", "layout", [["", [6]]]),
    ("model", "layout", [["n" * 257, [6]]]),
    ("model", "layout", [["w", [0]]] * 4097),
]


@pytest.mark.parametrize(("kind", "key", "value"), OUT_OF_RANGE)
def test_out_of_range(kind: str, key: str, value: Any) -> None:
    with pytest.raises(FrameFieldError):
        decode_frame(craft(MAPS[kind](**{key: value})))


def test_limits_just_inside_are_accepted() -> None:
    m = update_map(base_version=2**63 - 1, num_samples=1,
                   metrics={f"{i:0>256}": float(i) for i in range(64)})
    frame = decode_frame(craft(m))
    assert frame.base_version == 2**63 - 1
    assert len(frame.metrics) == 64
    agg = decode_frame(craft(aggregate_map(fog_rounds=10_000)))
    assert agg.fog_rounds == 10_000


def test_global_model_names_no_fog() -> None:
    with pytest.raises(FrameFieldError) as info:
        decode_frame(craft(model_map(fog="g1")))
    assert info.value.field == "fog"


def test_fog_model_needs_a_fog() -> None:
    with pytest.raises(FrameFieldError) as info:
        decode_frame(craft(model_map(scope="fog", fog=None)))
    assert info.value.field == "fog"
    assert decode_frame(craft(model_map(scope="fog", fog="g1"))).fog_id == "g1"


BAD_IDS = ["", "a" * 65, "a b", "a/b", "a+b", "a#", "a.b", "é", "fog\n", "\x00", "ａ"]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize(
    ("kind", "key"),
    [("update", "federation"), ("update", "fog"), ("update", "edge"), ("aggregate", "fog"),
     ("model", "federation")],
)
def test_bad_id(kind: str, key: str, bad: str) -> None:
    with pytest.raises(FrameFieldError):
        decode_frame(craft(MAPS[kind](**{key: bad})))


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_contributor_id(bad: str) -> None:
    with pytest.raises(FrameFieldError) as info:
        decode_frame(craft(aggregate_map(contributors=["ok", bad])))
    assert info.value.field == "contributors"


def test_longest_id_is_accepted() -> None:
    assert decode_frame(craft(update_map(edge="E" * 64))).edge_id == "E" * 64


# --- vector failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vector",
    [
        pytest.param({"codec": "raw", "size": 3, "data": b"\0" * 11}, id="short-data"),
        pytest.param({"codec": "raw", "size": 3, "data": b"\0" * 13}, id="long-data"),
        pytest.param({"codec": "raw", "size": 0, "data": b"\0" * 4}, id="size-0-with-data"),
        pytest.param({"codec": "raw", "size": 2**40, "data": b""}, id="huge-size"),
        pytest.param({"codec": "raw", "size": -1, "data": b""}, id="negative-size"),
        pytest.param({"codec": "raw", "size": 1.0, "data": b"\0" * 4}, id="float-size"),
        pytest.param({"codec": "raw", "size": True, "data": b"\0" * 4}, id="bool-size"),
        pytest.param({"codec": "raw", "data": b"\0" * 4}, id="no-size"),
        pytest.param({"codec": "raw", "size": 1}, id="no-data"),
        pytest.param({"codec": "raw", "size": 1, "data": "\0\0\0\0"}, id="str-data"),
        pytest.param({"size": 1, "data": b"\0" * 4}, id="no-codec"),
        pytest.param({"codec": b"raw", "size": 1, "data": b"\0" * 4}, id="bin-codec"),
        pytest.param({"codec": "float64", "size": 1, "data": b"\0" * 8}, id="unknown-codec"),
        pytest.param(b"\0" * 12, id="bare-bytes"),
        pytest.param([1.0, 2.0], id="list"),
        pytest.param(None, id="nil"),
    ],
)
@pytest.mark.parametrize(("kind", "key"), [("update", "delta"), ("aggregate", "delta"),
                                           ("model", "weights"), ("model_delta", "delta")])
def test_bad_tensor(kind: str, key: str, vector: Any) -> None:
    m = MAPS[kind](**{key: vector})
    if kind == "model":
        m["layout"] = []
    with pytest.raises(BadTensorError):
        decode_frame(craft(m))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(("kind", "key"), [("update", "delta"), ("aggregate", "delta"),
                                           ("model", "weights"), ("model_delta", "delta")])
def test_non_finite_tensor(kind: str, key: str, bad: float) -> None:
    # Prepare: one bad value among good ones
    values = np.arange(6, dtype=np.float32)
    values[3] = bad
    m = MAPS[kind](**{key: raw_vector(values)})
    # Execute / Assert
    with pytest.raises(NonFiniteTensorError):
        decode_frame(craft(m))


def test_signalling_nan_bits_are_non_finite() -> None:
    data = np.array([0x7F800001, 0xFFC00000], dtype="<u4").tobytes()
    with pytest.raises(NonFiniteTensorError):
        decode_frame(craft(update_map(delta={"codec": "raw", "size": 2, "data": data})))


def test_size_over_max_params() -> None:
    # Prepare
    m = update_map(delta=raw_vector(np.zeros(11)))
    # Execute / Assert
    with pytest.raises(BadTensorError):
        decode_frame(craft(m), limits=DecodeLimits(max_params=10))
    assert decode_frame(craft(m), limits=DecodeLimits(max_params=11)).delta.size == 11


def test_size_over_max_params_is_refused_before_reading_data() -> None:
    # A declared size beyond the limit fails even though no data backs it
    m = update_map(delta={"codec": "raw", "size": 10**9, "data": b""})
    with pytest.raises(BadTensorError, match="exceeds the limit"):
        decode_frame(craft(m), limits=DecodeLimits(max_params=1000))


@pytest.mark.parametrize(
    ("codec", "atol"),
    [("fp16", 1e-3), ("int8", 2 / 127), ("int8:chunk=7", 2 / 127), ("topk:fraction=1", 0.0),
     ("topk+fp16:fraction=1", 1e-3), ("randk+int8:fraction=1,scaled=false", 2 / 127)],
)
@pytest.mark.parametrize("compress", [True, False])
def test_compressed_vector_codecs_round_trip(codec: str, atol: float, compress: bool) -> None:
    # Prepare
    delta = np.linspace(-1, 1, 50, dtype=np.float32)
    frame = UpdateFrame("f", "g", "e", 0, 0, 1, delta, created_at=1.0)
    # Execute
    out = decode_frame(encode_frame(frame, codec=codec, compress=compress))
    # Assert
    assert out.delta.dtype == np.float32
    assert out.delta.shape == (50,)
    np.testing.assert_allclose(out.delta, delta, rtol=0, atol=atol)


@pytest.mark.parametrize("codec", ["topk:fraction=0.1", "randk:fraction=0.1"])
def test_sparse_codecs_keep_k_values(codec: str) -> None:
    delta = np.linspace(1, 2, 50, dtype=np.float32)
    frame = AggregateFrame("f", "g", 0, 1, ("e",), 1, delta, created_at=1.0)
    out = decode_frame(encode_frame(frame, codec=codec))
    assert np.count_nonzero(out.delta) == 5


def test_non_raw_vector_with_unknown_field() -> None:
    fields = {"codec": "fp16", "size": 2, "data": b"\0" * 4, "junk": 1}
    with pytest.raises(BadTensorError):
        decode_frame(craft(update_map(delta=fields)))


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"codec": "fp16", "size": 2, "data": b"\0" * 3}, id="fp16-short"),
        pytest.param({"codec": "int8", "size": 2, "chunk": 0, "absmax": b"", "q": b"\0\0"},
                     id="int8-chunk-0"),
        pytest.param({"codec": "int8", "size": 1, "chunk": 1, "absmax": b"\0" * 4,
                      "q": b"\x80"}, id="int8-level-minus-128"),
        pytest.param({"codec": "topk", "size": 2, "k": 3, "idx": b"\0\0\0",
                      "values.data": b"\0" * 12}, id="topk-k-over-size"),
        pytest.param({"codec": "topk", "size": 2, "k": 1, "idx": b"\x05",
                      "values.data": b"\0" * 4}, id="topk-index-out-of-range"),
        pytest.param({"codec": "randk", "size": 2, "k": 1, "seed": -1,
                      "values.data": b"\0" * 4}, id="randk-negative-seed"),
        pytest.param({"codec": "topk+zip", "size": 2, "k": 0, "idx": b""}, id="unknown-dense"),
    ],
)
def test_bad_compressed_vector(fields: dict[str, Any]) -> None:
    with pytest.raises(BadTensorError):
        decode_frame(craft(update_map(delta=fields)))


def test_non_finite_fp16_vector_is_a_non_finite_error() -> None:
    data = np.array([1.0, np.nan], dtype="<f2").tobytes()
    with pytest.raises(WireFormatError) as info:
        decode_frame(craft(update_map(delta={"codec": "fp16", "size": 2, "data": data})))
    assert isinstance(info.value, NonFiniteTensorError)


def test_compressed_vector_fields_on_the_wire() -> None:
    # What the encoder emits for a non-raw codec: the codec's fields plus codec and size
    frame = UpdateFrame("f", "g", "e", 0, 0, 1, np.linspace(-1, 1, 50, dtype=np.float32),
                        created_at=1.0)
    body = zstandard.ZstdDecompressor().decompress(encode_frame(frame, codec="topk+int8")[12:])
    delta = msgpack.unpackb(body)["delta"]
    assert delta["codec"] == "topk+int8"
    assert delta["size"] == 50
    assert set(delta) == {"codec", "size", "k", "idx", "values.chunk", "values.absmax",
                          "values.q"}


# --- the frame dataclasses validate themselves on the sending side too -----------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: UpdateFrame("f", "g", "e", 0, 0, 1, np.zeros(2, np.float64)),
        lambda: UpdateFrame("f", "g", "e", 0, 0, 1, np.zeros((2, 2), np.float32)),
        lambda: UpdateFrame("f", "g", "e", 0, 0, 1, [0.0]),  # type: ignore[arg-type]
        lambda: UpdateFrame("f", "g", "e", 0, 0, 0, np.zeros(2, np.float32)),
        lambda: UpdateFrame("f g", "g", "e", 0, 0, 1, np.zeros(2, np.float32)),
        lambda: AggregateFrame("f", "g", 0, 1, ("e",), 0, np.zeros(2, np.float32)),
        lambda: AggregateFrame("f", "g", 0, 1, ["e"], 1, np.zeros(2, np.float32)),  # type: ignore[arg-type]
        lambda: ModelFrame("f", 0, np.zeros(2, np.float32), layout=(LayoutEntry("w", (3,)),)),
        lambda: ModelFrame("f", 0, np.zeros(2, np.float32), scope="fog"),
        lambda: LayoutEntry("w", [2]),  # type: ignore[arg-type]
    ],
)
def test_invalid_frames_cannot_be_built(make: Any) -> None:
    with pytest.raises(FrameFieldError):
        make()
