"""Format version 3: the meta section (created_at and timing spans outside the compressed body).

The point of the section: a frame's size must not depend on the clock readings it carries
(uplink bytes identical run to run), and a receiver must refuse every malformed variant with a
typed error.
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
import zstandard

from hierfl.errors import (
    FrameFieldError,
    FrameTooLargeError,
    UnsupportedVersionError,
    WireFormatError,
)
from hierfl.wire.codec import (
    FLAG_META,
    FLAG_ZSTD,
    HEADER_SIZE,
    MAGIC,
    META_FORMAT_VERSION,
    decode_frame,
    encode_frame,
)
from hierfl.wire.frames import (
    MAX_UPDATE_TIMING,
    AggregateFrame,
    ModelFrame,
    TimingSpan,
    UpdateFrame,
)


def _delta(seed: int = 0, n: int = 50_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * 1e-3).astype(np.float32)


def _update(t: float, spans: int = 4, delta: np.ndarray | None = None) -> UpdateFrame:
    return UpdateFrame("fed", "fog0", "e001", 3, 1, 90, _delta() if delta is None else delta,
                       {"train_loss": 0.5}, created_at=t,
                       timing=tuple(TimingSpan(f"edge.s{i}", "", t + i * 0.013, t + i * 0.029)
                                    for i in range(spans)))


def test_round_trip_keeps_timing_and_created_at() -> None:
    f = _update(1_796_000_000.123)
    data = encode_frame(f)
    assert data[4] == META_FORMAT_VERSION and data[5] & FLAG_META
    g = decode_frame(data)
    assert isinstance(g, UpdateFrame)
    assert g.timing == f.timing and g.created_at == f.created_at
    assert np.array_equal(g.delta, f.delta)


def test_size_does_not_depend_on_the_clock() -> None:
    """In the body, 8 bytes of clock change zstd's entropy coding by a byte or two (what made
    the wide benchmark's uplink differ run to run); in the meta section they cannot."""
    sizes = {len(encode_frame(_update(1_796_000_000 + i * 0.7371))) for i in range(40)}
    assert len(sizes) == 1
    # the control: the same clocks inside the compressed body (version 1) do change the size
    plain = {len(encode_frame(UpdateFrame("fed", "fog0", "e001", 3, 1, 90, _delta(),
                                          created_at=1_796_000_000 + i * 0.7371)))
             for i in range(40)}
    assert len(plain) > 1


def test_frames_without_timing_keep_versions_1_and_2() -> None:
    f = UpdateFrame("fed", "fog0", "e001", 3, 1, 90, _delta(), created_at=5.0)
    assert encode_frame(f)[4] == 1
    assert encode_frame(ModelFrame("fed", 1, _delta()))[4] == 1


def test_late_timing_callback_runs_after_compression() -> None:
    calls = []

    def timing() -> tuple[TimingSpan, ...]:
        calls.append(1)
        return (TimingSpan("edge.encode", "", 1.0, 2.0),)

    f = UpdateFrame("fed", "fog0", "e001", 3, 1, 90, _delta(), created_at=5.0)
    g = decode_frame(encode_frame(f, timing=timing))
    assert calls == [1] and g.timing == (TimingSpan("edge.encode", "", 1.0, 2.0),)


def test_aggregate_carries_edge_spans() -> None:
    spans = (TimingSpan("fog.aggregate", "", 1.0, 1.5), TimingSpan("edge.train", "e001", 0.2, 0.9))
    f = AggregateFrame("fed", "fog0", 3, 90, ("e001",), 1, _delta(), timing=spans)
    g = decode_frame(encode_frame(f))
    assert isinstance(g, AggregateFrame) and g.timing == spans


@pytest.mark.parametrize(("span", "field"), [
    (("x" * 33, "", 1.0, 2.0), "timing.name"),
    (("bad name", "", 1.0, 2.0), "timing.name"),
    (("edge.train", "a/b", 1.0, 2.0), "timing.party"),
    (("edge.train", "", 2.0, 1.0), "timing.end"),
    (("edge.train", "", float("nan"), 1.0), "timing.start"),
    (("edge.train", "", 1.0, float("inf")), "timing.end"),
    (("edge.train", "", "1", 2.0), "timing.start"),
])
def test_bad_spans_are_refused(span: tuple[object, ...], field: str) -> None:
    with pytest.raises(FrameFieldError) as e:
        TimingSpan(*span)
    assert e.value.field == field


def test_too_many_spans_in_an_update() -> None:
    with pytest.raises(FrameFieldError, match="timing"):
        _update(1.0, spans=MAX_UPDATE_TIMING + 1)


# --- crafted frames: each malformed variant gets a typed refusal ------------------------------


def _frame(meta: object, body: dict, *, version: int = META_FORMAT_VERSION,
           flags: int = FLAG_META | FLAG_ZSTD, meta_len: int | None = None) -> bytes:
    raw = msgpack.packb(meta, use_bin_type=True)
    packed = msgpack.packb(body, use_bin_type=True)
    payload = zstandard.ZstdCompressor(write_content_size=True).compress(packed)
    n = len(raw) if meta_len is None else meta_len
    head = struct.pack("<4sBBHI", MAGIC, version, flags, 0, len(packed))
    return head + struct.pack("<I", n) + raw + payload


def _body(**extra: object) -> dict:
    d = _delta(n=8)
    body = {"kind": "update", "federation": "fed", "metrics": {}, "fog": "fog0", "edge": "e1",
            "base_version": 1, "base_seq": 0, "num_samples": 4,
            "delta": {"codec": "raw", "size": 8, "data": d.tobytes()}}
    body.update(extra)
    return body


GOOD_META = {"created_at": 1.0, "timing": [["edge.train", "", 1.0, 2.0]]}


def test_crafted_good_frame_decodes() -> None:
    g = decode_frame(_frame(GOOD_META, _body()))
    assert isinstance(g, UpdateFrame) and g.timing[0].name == "edge.train"
    assert HEADER_SIZE == 12


@pytest.mark.parametrize(("data", "error"), [
    # the flag without version 3, and version 3 without the flag
    (lambda: _frame(GOOD_META, _body(), version=1), UnsupportedVersionError),
    (lambda: _frame(GOOD_META, _body(), flags=FLAG_ZSTD), UnsupportedVersionError),
    # a meta length past the frame's end, or over the limit
    (lambda: _frame(GOOD_META, _body(), meta_len=10**6), FrameTooLargeError),
    (lambda: _frame(GOOD_META, _body(), meta_len=2**32 - 1), FrameTooLargeError),
    # meta keys: missing, extra, wrong types
    (lambda: _frame({"created_at": 1.0}, _body()), FrameFieldError),
    (lambda: _frame(GOOD_META | {"x": 1}, _body()), FrameFieldError),
    (lambda: _frame({"created_at": 1.0, "timing": "no"}, _body()), FrameFieldError),
    (lambda: _frame({"created_at": 1.0, "timing": [["a", "", 1.0]]}, _body()), FrameFieldError),
    (lambda: _frame([1, 2], _body()), FrameFieldError),
    # created_at twice (meta and body), and timing in the body
    (lambda: _frame(GOOD_META, _body(created_at=2.0)), FrameFieldError),
    (lambda: _frame(GOOD_META, _body(timing=[])), FrameFieldError),
    # a model frame carries no timing
    (lambda: _frame(GOOD_META, {"kind": "model", "federation": "fed", "metrics": {},
                                "version": 1, "parent": None, "scope": "global", "fog": None,
                                "seq": 0, "fog_round": 0, "layout": [],
                                "delta": None}), FrameFieldError),
])
def test_malformed_meta_is_refused(data: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_frame(data())  # type: ignore[operator]


def test_truncated_meta() -> None:
    head = struct.pack("<4sBBHI", MAGIC, META_FORMAT_VERSION, FLAG_META, 0, 0)
    with pytest.raises(WireFormatError):
        decode_frame(head + b"\x01\x00")
