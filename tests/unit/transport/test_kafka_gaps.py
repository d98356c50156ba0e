"""A record the broker numbered but did not yet show is fetched again, not skipped.

Tansu's memory engine, with several producers on one partition, can answer a fetch with a
record whose predecessor is not readable yet (benchmarks/kafka_gaps.py measures it on the
real broker). aiokafka accepts the jump, so without a refetch the reader loses the record:
a chunk missing from a frame, the frame refused as "out of order". These tests drive
KafkaConsumerTransport.messages() with a scripted aiokafka consumer, so the race happens on
every run; the real-broker tests (tests/integration) read through the same code.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition

from hierfl.config import KafkaSettings
from hierfl.transport import kafka as kafka_transport
from hierfl.transport.kafka import KafkaConsumerTransport
from hierfl.wire.chunking import split_frame

TOPIC = "hierfl.t.aggregates"
TP = TopicPartition(TOPIC, 0)


class _ScriptedConsumer:
    """getmany/seek over a fixed log; ``hidden`` offsets are left out of the next
    ``hide_fetches`` answers (a write numbered but not yet readable); offsets missing from
    ``log`` never exist (a hole: compaction, a transaction marker)."""

    def __init__(self, log: dict[int, bytes], hidden: set[int], hide_fetches: int = 1) -> None:
        self.log = log
        self.hidden = hidden
        self.hide_fetches = hide_fetches
        self.pos = 0
        self.fetches = 0
        self.seeks: list[int] = []

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[SimpleNamespace]]:
        self.fetches += 1
        hide = self.hidden if self.fetches <= self.hide_fetches else set()
        records = [SimpleNamespace(offset=o, value=v, key=b"fog0")
                   for o, v in sorted(self.log.items()) if o >= self.pos and o not in hide]
        if not records:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.pos = records[-1].offset + 1
        return {TP: records}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        assert tp == TP
        self.seeks.append(offset)
        self.pos = offset


@pytest.fixture
def transport(monkeypatch):
    """A KafkaConsumerTransport reading through a scripted consumer (no aiokafka one is
    made), its partition assigned as _assign leaves it."""
    def make(fake: _ScriptedConsumer) -> KafkaConsumerTransport:
        monkeypatch.setattr(kafka_transport, "AIOKafkaConsumer", lambda **kw: fake)
        t = KafkaConsumerTransport(KafkaSettings(bootstrap="127.0.0.1:1"), TOPIC,
                                   client_id="gaps-test", start="earliest")
        t._tps = [TP]
        return t
    return make


async def _read(t: KafkaConsumerTransport, n: int) -> list:
    out = []
    stream = t.messages()
    async with asyncio.timeout(10):
        while len(out) < n:
            out.append(await anext(stream))
    return out


async def test_a_record_shown_after_its_successor_is_fetched_again(transport):
    frame = bytes(range(256)) * 40  # 10,240 bytes: 3 chunks of 4,096
    chunks = split_frame(frame, chunk_bytes=4096)
    assert len(chunks) == 3
    tail = split_frame(b"the next frame", chunk_bytes=4096)
    log = {0: chunks[0], 1: chunks[1], 2: chunks[2], 3: tail[0]}
    fake = _ScriptedConsumer(log, hidden={1})
    t = transport(fake)
    got = await _read(t, 2)
    assert [g.error for g in got] == [None, None]
    assert [g.payload for g in got] == [frame, b"the next frame"]
    assert [g.offset for g in got] == [2, 3]
    assert fake.seeks == [1]  # sent back to the record it had not seen
    assert (t.gaps_refetched, t.gaps_skipped) == (1, 0)


async def test_without_the_refetch_the_frame_would_be_lost(transport, monkeypatch):
    """The same race with the refetch off (GAP_WAIT_S = 0): what a reader did before it."""
    monkeypatch.setattr(kafka_transport, "GAP_WAIT_S", 0.0)
    chunks = split_frame(bytes(10_240), chunk_bytes=4096)
    fake = _ScriptedConsumer({0: chunks[0], 1: chunks[1], 2: chunks[2]}, hidden={1})
    t = transport(fake)
    got = await _read(t, 1)
    assert got[0].error is not None and "out of order" in str(got[0].error)
    assert (t.gaps_refetched, t.gaps_skipped) == (0, 1)


async def test_a_gap_still_hidden_after_several_fetches_is_waited_for(transport):
    frames = [split_frame(f"frame {i}".encode(), chunk_bytes=4096)[0] for i in range(4)]
    fake = _ScriptedConsumer(dict(enumerate(frames)), hidden={2}, hide_fetches=3)
    t = transport(fake)
    got = await _read(t, 4)
    assert [g.payload for g in got] == [f"frame {i}".encode() for i in range(4)]
    assert t.gaps_refetched == 3 and t.gaps_skipped == 0
    assert fake.seeks == [2, 2, 2]


async def test_a_real_hole_is_passed_over_after_the_wait(transport, monkeypatch, caplog):
    """Offsets that never become readable (compaction, a transaction's marker written by
    another client) do not stop the reader: after GAP_WAIT_S they are passed over, logged
    and counted, and every record after them is delivered."""
    monkeypatch.setattr(kafka_transport, "GAP_WAIT_S", 0.05)
    frames = {o: split_frame(f"at {o}".encode(), chunk_bytes=4096)[0] for o in (0, 3, 4)}
    fake = _ScriptedConsumer(frames, hidden=set())
    t = transport(fake)
    with caplog.at_level(logging.INFO, logger="hierfl.transport.kafka"):
        got = await _read(t, 3)
    assert [g.payload for g in got] == [b"at 0", b"at 3", b"at 4"]
    assert t.gaps_skipped == 1
    assert t.gaps_refetched >= 1
    # a pause before each refetch: a hole costs at most GAP_WAIT_S of fetches, not a spin
    assert fake.fetches < 0.05 / kafka_transport.GAP_REFETCH_DELAY_S + 5
    assert "offsets 1-2 never became readable" in caplog.text


async def test_the_expected_offset_starts_where_the_reader_was_placed(transport):
    """A reader placed at an offset (its group's commit, the newest frame) expects that
    offset first: a gap right at the start is refetched too."""
    frames = {o: split_frame(f"at {o}".encode(), chunk_bytes=4096)[0] for o in range(5, 8)}
    fake = _ScriptedConsumer(frames, hidden={5})
    fake.pos = 5
    t = transport(fake)
    t._next[TP] = 5
    got = await _read(t, 3)
    assert [g.offset for g in got] == [5, 6, 7]
    assert fake.seeks == [5] and t.gaps_refetched == 1


@pytest.mark.parametrize("start", [0, 7])
async def test_an_unplaced_reader_takes_the_first_offset_it_is_given(transport, start):
    """From the log's start (seek_to_beginning) the first offset may be anything: retention
    deletes the oldest records. The first record sets the expectation, nothing is refetched."""
    frames = {o: split_frame(f"at {o}".encode(), chunk_bytes=4096)[0]
              for o in range(start, start + 2)}
    fake = _ScriptedConsumer(frames, hidden=set())
    t = transport(fake)
    got = await _read(t, 2)
    assert [g.offset for g in got] == [start, start + 1]
    assert fake.seeks == [] and t.gaps_refetched == 0
