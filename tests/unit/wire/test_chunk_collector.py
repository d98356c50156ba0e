"""ChunkCollector (MQTT): chunks in any order, duplicated, interleaved; hostile chunks refused;
memory bounded by frame, byte and time budgets, every dropped partial frame counted."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfl.errors import ChunkError, FrameTooLargeError, IncompleteFrameError
from hierfl.wire.chunking import CHUNK_HEADER_SIZE, MIN_CHUNK_DATA, ChunkCollector, split_frame
from tests.unit.wire.test_wire_chunking import HDR, _rebuild

PROPS = settings(max_examples=60, deadline=None, database=None)
MIN = 16  # min_chunk_data for small property-test frames
LIMIT = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _collector(**kw: object) -> tuple[ChunkCollector, list[tuple[str, IncompleteFrameError]]]:
    drops: list[tuple[str, IncompleteFrameError]] = []
    args: dict[str, object] = {"max_frame_bytes": LIMIT, "min_chunk_data": MIN,
                               "on_drop": lambda k, e: drops.append((k, e))}
    args.update(kw)
    return ChunkCollector(**args), drops  # type: ignore[arg-type]


def _split(frame: bytes, room: int) -> list[bytes]:
    return split_frame(frame, chunk_bytes=room + CHUNK_HEADER_SIZE)


def _frame(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# --- identity ---------------------------------------------------------------------------------


@PROPS
@given(
    frames=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=5),
    room=st.integers(MIN, 400),
    dup_rate=st.floats(0, 0.5),
    seed=st.integers(0, 2**32 - 1),
)
def test_shuffled_duplicated_interleaved_chunks_rebuild_every_frame(
    frames: list[bytes], room: int, dup_rate: float, seed: int
) -> None:
    # Prepare: each frame from its own sender (key), chunks shuffled across all frames, some
    # delivered twice (QoS 1 redelivery), some duplicates after their frame completed
    rng = random.Random(seed)
    stream = [(f"s{i}", rec) for i, f in enumerate(frames) for rec in _split(f, room)]
    stream += [item for item in stream if rng.random() < dup_rate]
    rng.shuffle(stream)
    c, drops = _collector()
    # Execute
    out = {}
    for key, rec in stream:
        done = c.feed(key, rec)
        if done is not None:
            assert key not in out  # each frame comes out once
            out[key] = done.frame
    # Assert
    assert out == {f"s{i}": f for i, f in enumerate(frames)}
    assert len(c) == 0
    assert c.buffered_bytes == 0
    assert drops == []
    assert c.counts["completed"] == len(frames)


def test_same_frame_id_on_two_keys_never_mixes() -> None:
    # A chunk copied onto another sender's topic cannot complete (or poison) that frame
    recs = _split(_frame(100), 40)
    c, _ = _collector()
    for rec in recs[:-1]:
        assert c.feed("victim", rec) is None
    assert c.feed("attacker", recs[-1]) is None
    done = c.feed("victim", recs[-1])
    assert done is not None
    assert done.frame == _frame(100)
    assert len(c) == 1  # the attacker's stray chunk, bounded and eventually dropped


def test_last_chunk_first_fixes_the_layout() -> None:
    frame = _frame(1000)
    recs = _split(frame, 300)  # 300, 300, 300, 100
    c, _ = _collector()
    assert c.feed("k", recs[3]) is None
    bad = split_frame(frame[:900] + b"x" * 100, chunk_bytes=250 + CHUNK_HEADER_SIZE)
    with pytest.raises(ChunkError, match="equal chunks"):
        c.feed("k", _rebuild(bad[0], frame_id=HDR.unpack_from(recs[0])[3], count=4, total=1000))
    for rec in recs[:3]:
        done = c.feed("k", rec)
    assert done is not None
    assert done.frame == frame


def test_retained_only_when_every_chunk_was() -> None:
    recs = _split(_frame(100), 40)
    c, _ = _collector()
    c.feed("a", recs[0], retained=True)
    c.feed("a", recs[1], retained=True)
    assert c.feed("a", recs[2], retained=True) == (_frame(100), True)
    recs = _split(_frame(100, 1), 40)
    c.feed("b", recs[0], retained=True)
    c.feed("b", recs[1], retained=False)
    assert c.feed("b", recs[2], retained=True) == (_frame(100, 1), False)


def test_single_chunk_frame_passes_through() -> None:
    c, _ = _collector()
    rec = split_frame(b"hello")[0]
    assert c.feed("k", rec) == (b"hello", False)
    assert len(c) == 0


# --- hostile chunks ----------------------------------------------------------------------------


def _three() -> list[bytes]:
    return _split(_frame(100), 40)


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (b"", ChunkError),
        (b"HFLC" + b"\0" * 20, ChunkError),
        (_rebuild(_three()[0], magic=b"HFLW"), ChunkError),
        (_rebuild(_three()[0], version=2), ChunkError),
        (_rebuild(_three()[0], reserved=b"\0\0\1"), ChunkError),
        (_rebuild(_three()[0], crc=0), ChunkError),
        (_rebuild(_three()[0], index=3), ChunkError),
        (_rebuild(_three()[0], count=0), ChunkError),
        (_rebuild(_three()[0], total=LIMIT + 1), FrameTooLargeError),
        (_rebuild(_three()[0], total=2**32 - 1, count=2**32 - 1), FrameTooLargeError),
        # a flood of tiny chunks: 100 chunks cannot carry 100 bytes at MIN bytes each
        (_rebuild(_three()[0], count=100), ChunkError),
        # data size does not match the declared layout
        (_rebuild(_three()[0], total=80), ChunkError),
        (_rebuild(_three()[2], total=121), ChunkError),
        (_three()[0][:-1], ChunkError),
        (_rebuild(split_frame(b"abc")[0], total=4), ChunkError),
    ],
    ids=["empty", "short", "magic", "version", "reserved", "crc", "index", "count0",
         "too_large", "too_large_flood", "tiny_chunks", "layout_first", "layout_last",
         "truncated", "single_short"],
)
def test_hostile_chunk_is_refused_and_holds_nothing(record: bytes, error: type) -> None:
    c, drops = _collector()
    with pytest.raises(error) as info:
        c.feed("k", record)
    assert info.type is error
    assert len(c) == 0
    assert c.buffered_bytes == 0
    assert drops == []


def test_inconsistent_sibling_is_refused_and_the_frame_still_completes() -> None:
    a, b, last = _three()
    c, _ = _collector()
    c.feed("k", a)
    for forged in (_rebuild(b, total=101), _rebuild(b, count=4),
                   _rebuild(a, crc=0), a[:CHUNK_HEADER_SIZE] + b[CHUNK_HEADER_SIZE:]):
        with pytest.raises(ChunkError):
            c.feed("k", forged)
    assert c.buffered_bytes == 40
    c.feed("k", b)
    assert c.feed("k", last) == (_frame(100), False)


def test_duplicate_with_other_data_is_refused() -> None:
    a = _three()[0]
    c, _ = _collector()
    c.feed("k", a)
    other = _split(bytes(100), 40)[0]  # same index and layout, other data (valid CRC)
    with pytest.raises(ChunkError, match="other data"):
        c.feed("k", _rebuild(other, frame_id=HDR.unpack_from(a)[3]))
    assert c.feed("k", a) is None  # an identical copy is a harmless redelivery
    assert c.counts["duplicates"] == 1


def test_sub_topic_index_must_match() -> None:
    b = _three()[1]
    c, _ = _collector()
    with pytest.raises(ChunkError, match="sub-topic"):
        c.feed("k", b, index=2)
    assert c.feed("k", b, index=1) is None


def test_default_minimum_chunk_size() -> None:
    c = ChunkCollector(max_frame_bytes=LIMIT)
    frame = _frame(5000)
    with pytest.raises(ChunkError, match=r"too small|equal chunks"):
        c.feed("k", _split(frame, MIN_CHUNK_DATA - 1)[0])
    recs = _split(frame, MIN_CHUNK_DATA)
    assert [c.feed("k", r) for r in recs][-1] == (frame, False)


# --- bounded memory ----------------------------------------------------------------------------


def test_sender_that_dies_mid_frame_expires() -> None:
    clock = Clock()
    c, drops = _collector(timeout_s=10, clock=clock)
    c.feed("dead", _three()[0])
    clock.t = 5
    c.feed("alive", _split(_frame(100, 1), 40)[0])
    clock.t = 10.5
    assert c.feed("other", split_frame(b"x")[0]) == (b"x", False)  # any chunk sweeps
    assert [k for k, _ in drops] == ["dead"]
    assert isinstance(drops[0][1], IncompleteFrameError)
    assert drops[0][1].reason == "wire.chunk_incomplete"
    assert "expired" in str(drops[0][1])
    assert c.counts["expired"] == 1
    assert len(c) == 1


def test_publishers_sharing_a_key_interleave_without_loss() -> None:
    # MQTT allows several publishers per topic: their frames complete side by side, and an
    # abandoned one stays (bounded) until it expires
    clock = Clock()
    c, drops = _collector(timeout_s=10, clock=clock)
    abandoned = _split(_frame(100), 40)
    frames = [_split(_frame(100, i + 1), 40) for i in range(3)]
    c.feed("k", abandoned[0])
    out = [done.frame for recs in zip(*frames, strict=True) for rec in recs
           if (done := c.feed("k", rec)) is not None]
    assert out == [_frame(100, i + 1) for i in range(3)]
    assert (len(c), drops) == (1, [])
    clock.t = 11
    c.feed("k", split_frame(b"x")[0])
    assert (len(c), c.buffered_bytes, c.counts["expired"]) == (0, 0, 1)


def test_flooding_sender_evicts_its_own_partials_first() -> None:
    c, drops = _collector(max_frames_per_key=3, max_frames=8, max_bytes=10_000)
    honest = _split(_frame(3000), 1000)
    c.feed("honest", honest[0])
    for i in range(50):  # a flood of partial frames, each 1000 bytes of 3000
        c.feed("evil", _split(_frame(3000, i + 10), 1000)[0])
        assert len(c) <= 4
    assert {k for k, _ in drops} == {"evil"}
    assert c.counts["evicted"] == 47
    c.feed("honest", honest[1])
    assert c.feed("honest", honest[2]) == (_frame(3000), False)


def test_byte_budget_evicts_the_biggest_holder() -> None:
    c, drops = _collector(max_bytes=5000, max_frames_per_key=8)
    honest = _split(_frame(2000), 1000)
    c.feed("honest", honest[0])
    for i in range(6):
        for rec in _split(_frame(4000, i + 10), 1000)[:3]:  # never the last chunk
            c.feed(f"evil{i % 2}", rec)
            assert c.buffered_bytes <= 5000
    assert all(k.startswith("evil") for k, _ in drops)
    assert c.feed("honest", honest[1]) == (_frame(2000), False)


def test_frame_budget_evicts_from_the_key_with_most_partials() -> None:
    c, drops = _collector(max_frames=4)
    c.feed("a", _split(_frame(100, 1), 40)[0])
    for i in range(3):
        c.feed("b", _split(_frame(100, i + 2), 40)[0])
    c.feed("c", _split(_frame(100, 9), 40)[0])
    assert len(c) == 4
    assert [k for k, _ in drops] == ["b"]


@PROPS
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 3), st.integers(0, 12)),
        max_size=80,
    ),
)
def test_budgets_hold_under_any_chunk_sequence(ops: list[tuple[int, int, int, int]]) -> None:
    # Prepare: frames of 1..12 chunks; feed arbitrary chunks of them from arbitrary keys,
    # advancing the clock by arbitrary steps
    clock = Clock()
    c, _ = _collector(max_bytes=3000, max_frames=5, max_frames_per_key=2, timeout_s=5,
                      clock=clock)
    frames = {n: _split(_frame(100 * n + 7, n), 100) for n in range(13)}
    for key, frame_no, step, index in ops:
        recs = frames[frame_no + index % 7]
        clock.t += step
        try:
            c.feed(f"k{key}", recs[index % len(recs)])
        except ChunkError:
            pytest.fail("valid chunks refused")
        # Assert
        assert c.buffered_bytes <= 3000
        assert len(c) <= 5
        assert c.buffered_bytes == sum(o.size for o in c._open.values())


def test_frame_larger_than_the_byte_budget_is_refused_at_once() -> None:
    c, drops = _collector(max_bytes=1000)
    with pytest.raises(FrameTooLargeError):
        c.feed("k", _split(_frame(1001), 100)[0])
    assert (len(c), c.buffered_bytes, drops) == (0, 0, [])
