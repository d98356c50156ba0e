"""Kafka chunk envelope: split/reassemble identity, bounds, and every way a chunk is refused."""

from __future__ import annotations

import contextlib
import random
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfl.errors import ChunkError, FrameTooLargeError
from hierfl.wire import Reassembler, UpdateFrame, decode_frame, encode_frame, split_frame
from hierfl.wire.chunking import (
    CHUNK_HEADER_SIZE,
    DEFAULT_CHUNK_BYTES,
    Chunk,
    parse_chunk,
)
from tests.unit.wire.wire_strategies import assert_frames_equal

HDR = struct.Struct("<4sB3s16sIIII")
PROPS = settings(max_examples=60, deadline=None, database=None)
LIMIT = 1 << 20


def _feed_all(r: Reassembler, records: list[bytes]) -> list[bytes]:
    return [f for rec in records if (f := r.feed(rec)) is not None]


def _rebuild(record: bytes, **changes: object) -> bytes:
    """Re-pack a chunk's header with some fields changed (the CRC covers only the data)."""
    names = ("magic", "version", "reserved", "frame_id", "index", "count", "total", "crc")
    fields = dict(zip(names, HDR.unpack_from(record), strict=True))
    fields.update(changes)
    return HDR.pack(*fields.values()) + record[CHUNK_HEADER_SIZE:]


# --- identity ---------------------------------------------------------------------------------


@PROPS
@given(frame=st.binary(max_size=4000), chunk_bytes=st.integers(CHUNK_HEADER_SIZE + 1, 700))
def test_split_reassemble_identity(frame: bytes, chunk_bytes: int) -> None:
    # Execute
    records = split_frame(frame, chunk_bytes=chunk_bytes)
    r = Reassembler(max_frame_bytes=LIMIT)
    outs = [r.feed(rec) for rec in records]
    # Assert
    room = chunk_bytes - CHUNK_HEADER_SIZE
    assert len(records) == max(1, -(-len(frame) // room))
    assert all(len(rec) <= chunk_bytes for rec in records)
    assert outs[:-1] == [None] * (len(records) - 1)
    assert outs[-1] == frame
    assert len(r) == 0
    assert r.min_pending_offset() is None


def test_chunk_header_layout() -> None:
    # Prepare
    frame = bytes(range(256)) * 10
    # Execute
    records = split_frame(frame, chunk_bytes=1000)
    # Assert
    ids = set()
    for i, rec in enumerate(records):
        magic, version, reserved, frame_id, index, count, total, crc = HDR.unpack_from(rec)
        assert (magic, version, reserved) == (b"HFLC", 1, b"\0\0\0")
        assert (index, count, total) == (i, 3, 2560)
        assert crc == zlib.crc32(rec[CHUNK_HEADER_SIZE:])
        assert parse_chunk(rec, max_frame_bytes=LIMIT) == Chunk(
            frame_id, index, count, total, rec[CHUNK_HEADER_SIZE:]
        )
        ids.add(frame_id)
    assert len(ids) == 1
    assert [len(rec) for rec in records] == [1000, 1000, 2560 - 2 * 960 + CHUNK_HEADER_SIZE]


def test_frame_ids_are_random() -> None:
    a = split_frame(b"x", chunk_bytes=100)[0]
    b = split_frame(b"x", chunk_bytes=100)[0]
    assert a[8:24] != b[8:24]


def test_empty_frame_is_one_chunk() -> None:
    records = split_frame(b"")
    assert len(records) == 1
    assert len(records[0]) == CHUNK_HEADER_SIZE
    assert Reassembler(max_frame_bytes=10).feed(records[0]) == b""


def test_default_chunk_size_fits_a_stock_kafka_record() -> None:
    # Prepare: a real 2.4 MB frame, over Kafka's default 1 MB limit
    delta = np.random.default_rng(0).standard_normal(600_000, dtype=np.float32)
    frame = UpdateFrame("fed", "fog", "edge", 0, 0, 1, delta, created_at=1.0)
    data = encode_frame(frame)
    # Execute
    records = split_frame(data)
    r = Reassembler(max_frame_bytes=64 << 20)
    frames = _feed_all(r, records)
    # Assert
    assert DEFAULT_CHUNK_BYTES < 1_048_576
    assert len(records) == 3
    assert all(len(rec) <= DEFAULT_CHUNK_BYTES for rec in records)
    assert frames == [data]
    assert_frames_equal(frame, decode_frame(frames[0]))


@pytest.mark.parametrize("chunk_bytes", [0, 1, CHUNK_HEADER_SIZE])
def test_chunk_bytes_must_leave_room_for_data(chunk_bytes: int) -> None:
    with pytest.raises(ValueError, match="header"):
        split_frame(b"abc", chunk_bytes=chunk_bytes)


@PROPS
@given(
    frames=st.lists(st.binary(max_size=600), min_size=1, max_size=6),
    chunk_bytes=st.integers(CHUNK_HEADER_SIZE + 1, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_interleaved_frames(frames: list[bytes], chunk_bytes: int, seed: int) -> None:
    # Prepare: merge the chunk sequences at random, keeping each frame's own order (what
    # one partition holds when several producers share a key, or a producer pipelines)
    queues = [split_frame(f, chunk_bytes=chunk_bytes) for f in frames]
    rng = random.Random(seed)
    merged = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        merged.append(q.pop(0))
    # Execute
    r = Reassembler(max_frame_bytes=LIMIT, max_pending=len(frames))
    out = _feed_all(r, merged)
    # Assert
    assert sorted(out) == sorted(frames)
    assert len(r) == 0
    assert r.evicted == 0


# --- refused chunks ---------------------------------------------------------------------------


def _three_chunks() -> list[bytes]:
    return split_frame(bytes(range(250)), chunk_bytes=CHUNK_HEADER_SIZE + 100)


def test_out_of_order_chunk() -> None:
    a, b, c = _three_chunks()
    r = Reassembler(max_frame_bytes=LIMIT)
    with pytest.raises(ChunkError):
        r.feed(b)  # no predecessor
    assert r.feed(a) is None
    with pytest.raises(ChunkError):
        r.feed(c)  # b is missing
    assert len(r) == 0  # the broken frame is dropped, not kept half-built
    with pytest.raises(ChunkError):
        r.feed(b)


def test_repeated_chunk_is_ignored_and_the_frame_completes() -> None:
    """A producer retry can write a chunk twice: the copy changes nothing."""
    a, b, c = _three_chunks()
    r = Reassembler(max_frame_bytes=LIMIT)
    r.feed(a, 1)
    r.feed(b, 2)
    assert r.feed(b, 3) is None
    assert r.feed(a, 4) is None
    assert r.feed(c, 5) == bytes(range(250))
    # and a late copy of a chunk of the completed frame does not open a never-ending partial
    assert r.feed(c, 6) is None
    assert r.feed(a, 7) is None
    assert len(r) == 0 and r.min_pending_offset() is None
    assert r.duplicates == 4


def test_chunk_with_other_data_at_a_taken_index_drops_the_frame() -> None:
    a, b, _ = _three_chunks()
    other = split_frame(bytes(range(1, 251)), chunk_bytes=CHUNK_HEADER_SIZE + 100)[1]
    frame_id = HDR.unpack_from(b)[3]
    forged = _rebuild(other, frame_id=frame_id)  # same frame and index, other (valid) data
    r = Reassembler(max_frame_bytes=LIMIT)
    r.feed(a)
    r.feed(b)
    with pytest.raises(ChunkError, match="out of order or inconsistent"):
        r.feed(forged)
    assert len(r) == 0


def test_missing_last_chunk_leaves_frame_pending() -> None:
    a, b, _ = _three_chunks()
    r = Reassembler(max_frame_bytes=LIMIT)
    assert r.feed(a, 5) is None
    assert r.feed(b, 6) is None
    assert len(r) == 1
    assert r.min_pending_offset() == 5


@pytest.mark.parametrize("pos", [CHUNK_HEADER_SIZE, CHUNK_HEADER_SIZE + 50, -1])
def test_corrupted_data_fails_crc(pos: int) -> None:
    rec = bytearray(_three_chunks()[0])
    rec[pos] ^= 0x01
    with pytest.raises(ChunkError, match="CRC"):
        Reassembler(max_frame_bytes=LIMIT).feed(bytes(rec))


def test_wrong_crc_field() -> None:
    rec = _three_chunks()[0]
    bad = _rebuild(rec, crc=zlib.crc32(rec[CHUNK_HEADER_SIZE:]) ^ 1)
    with pytest.raises(ChunkError):
        parse_chunk(bad, max_frame_bytes=LIMIT)


@pytest.mark.parametrize(
    "changes",
    [
        {"magic": b"HFLW"},
        {"magic": b"hflc"},
        {"version": 0},
        {"version": 2},
        {"reserved": b"\0\0\x01"},
        {"count": 0, "index": 0},
        {"index": 3},  # == count
        {"index": 2**32 - 1},
    ],
)
def test_bad_header_fields(changes: dict[str, object]) -> None:
    with pytest.raises(ChunkError):
        parse_chunk(_rebuild(_three_chunks()[0], **changes), max_frame_bytes=LIMIT)


@pytest.mark.parametrize("record", [b"", b"HFLC", b"\0" * (CHUNK_HEADER_SIZE - 1)])
def test_record_shorter_than_header(record: bytes) -> None:
    with pytest.raises(ChunkError):
        Reassembler(max_frame_bytes=LIMIT).feed(record)


def test_record_must_be_bytes() -> None:
    rec = _three_chunks()[0]
    with pytest.raises(ChunkError):
        parse_chunk(bytearray(rec), max_frame_bytes=LIMIT)  # type: ignore[arg-type]


def test_inconsistent_siblings() -> None:
    a, b, _ = _three_chunks()
    for changes in ({"count": 4}, {"total": 251}):
        r = Reassembler(max_frame_bytes=LIMIT)
        r.feed(a)
        with pytest.raises(ChunkError):
            r.feed(_rebuild(b, **changes))
        assert len(r) == 0


def test_single_chunk_must_hold_its_total() -> None:
    rec = split_frame(b"abcdef", chunk_bytes=100)[0]
    for total in (5, 7):
        with pytest.raises(ChunkError):
            Reassembler(max_frame_bytes=LIMIT).feed(_rebuild(rec, total=total))


def test_chunks_exceeding_declared_total() -> None:
    a, b, _ = _three_chunks()
    r = Reassembler(max_frame_bytes=LIMIT)
    r.feed(_rebuild(a, total=150))
    with pytest.raises(ChunkError, match="exceed"):
        r.feed(_rebuild(b, total=150))
    assert len(r) == 0


def test_chunks_short_of_declared_total() -> None:
    a, b, c = (_rebuild(x, total=260) for x in _three_chunks())
    r = Reassembler(max_frame_bytes=LIMIT)
    r.feed(a)
    r.feed(b)
    with pytest.raises(ChunkError):
        r.feed(c)
    assert len(r) == 0


def test_declared_total_over_limit() -> None:
    # Prepare
    records = split_frame(bytes(5000), chunk_bytes=1000)
    # Execute / Assert: refused from the first chunk, before anything is buffered
    with pytest.raises(FrameTooLargeError):
        parse_chunk(records[0], max_frame_bytes=4999)
    r = Reassembler(max_frame_bytes=4999)
    with pytest.raises(FrameTooLargeError):
        r.feed(records[0])
    assert len(r) == 0
    assert _feed_all(Reassembler(max_frame_bytes=5000), records) == [bytes(5000)]


def test_lying_total_cannot_grow_a_frame_past_the_limit() -> None:
    # A chunk claiming a small total but carrying more data is refused
    rec = split_frame(bytes(100), chunk_bytes=1000)[0]
    with pytest.raises(ChunkError):
        Reassembler(max_frame_bytes=10).feed(_rebuild(rec, total=10))


@PROPS
@given(record=st.binary(max_size=200))
def test_random_records(record: bytes) -> None:
    # Only the two chunk-level errors; nothing else (struct.error, IndexError...) escapes
    with contextlib.suppress(ChunkError, FrameTooLargeError):
        Reassembler(max_frame_bytes=100).feed(record)


@PROPS
@given(
    header=st.tuples(st.sampled_from([b"HFLC", b"HFLW"]), st.integers(0, 2),
                     st.sampled_from([b"\0\0\0", b"\0\0\1"]), st.binary(min_size=16, max_size=16),
                     st.integers(0, 5), st.integers(0, 5), st.integers(0, 300)),
    data=st.binary(max_size=100),
    good_crc=st.booleans(),
)
def test_random_headers(header: tuple[object, ...], data: bytes, good_crc: bool) -> None:
    crc = zlib.crc32(data) if good_crc else zlib.crc32(data) ^ 0xFFFF
    record = HDR.pack(*header, crc) + data
    r = Reassembler(max_frame_bytes=200)
    try:
        out = r.feed(record)
    except (ChunkError, FrameTooLargeError):
        return
    assert out is None or out == data


# --- bounded pending table and commit offsets -------------------------------------------------


def test_pending_table_evicts_the_oldest() -> None:
    # Prepare: three two-chunk frames, room for two partial ones
    frames = [bytes([i]) * 150 for i in range(3)]
    chunks = [split_frame(f, chunk_bytes=CHUNK_HEADER_SIZE + 100) for f in frames]
    r = Reassembler(max_frame_bytes=LIMIT, max_pending=2)
    # Execute
    for i, (first, _) in enumerate(chunks):
        assert r.feed(first, offset=10 + i) is None
    # Assert: frame 0 (the oldest) was evicted, 1 and 2 still complete
    assert len(r) == 2
    assert r.evicted == 1
    assert r.min_pending_offset() == 11
    with pytest.raises(ChunkError):
        r.feed(chunks[0][1])
    assert r.feed(chunks[2][1]) == frames[2]
    assert r.feed(chunks[1][1]) == frames[1]
    assert len(r) == 0
    assert r.evicted == 1


def test_single_chunk_frames_never_occupy_the_table() -> None:
    r = Reassembler(max_frame_bytes=LIMIT, max_pending=1)
    first = split_frame(bytes(300), chunk_bytes=200)[0]
    r.feed(first, offset=1)
    for i in range(5):
        assert r.feed(split_frame(bytes([i]), chunk_bytes=200)[0], offset=2 + i) == bytes([i])
    assert len(r) == 1
    assert r.evicted == 0
    assert r.min_pending_offset() == 1


def test_min_pending_offset() -> None:
    # Prepare
    a = split_frame(b"a" * 300, chunk_bytes=CHUNK_HEADER_SIZE + 100)
    b = split_frame(b"b" * 300, chunk_bytes=CHUNK_HEADER_SIZE + 100)
    r = Reassembler(max_frame_bytes=LIMIT)
    # Execute / Assert: the first offset of the oldest incomplete frame bounds the commit
    assert r.min_pending_offset() is None
    r.feed(a[0], 10)
    assert r.min_pending_offset() == 10
    r.feed(b[0], 11)
    r.feed(a[1], 12)
    assert r.min_pending_offset() == 10
    assert r.feed(a[2], 13) == b"a" * 300
    assert r.min_pending_offset() == 11
    r.feed(b[1], 14)
    assert r.feed(b[2], 15) == b"b" * 300
    assert r.min_pending_offset() is None


def test_min_pending_offset_ignores_frames_fed_without_offsets() -> None:
    a = split_frame(b"a" * 300, chunk_bytes=CHUNK_HEADER_SIZE + 100)
    b = split_frame(b"b" * 300, chunk_bytes=CHUNK_HEADER_SIZE + 100)
    r = Reassembler(max_frame_bytes=LIMIT)
    r.feed(a[0])
    assert r.min_pending_offset() is None
    r.feed(b[0], 7)
    assert r.min_pending_offset() == 7


def test_dropped_frame_releases_its_offset() -> None:
    a = split_frame(b"a" * 300, chunk_bytes=CHUNK_HEADER_SIZE + 100)
    r = Reassembler(max_frame_bytes=LIMIT)
    r.feed(a[0], 3)
    with pytest.raises(ChunkError):
        r.feed(a[2], 4)
    assert r.min_pending_offset() is None
