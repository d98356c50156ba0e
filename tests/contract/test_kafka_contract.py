"""The Kafka contract: what the fog and cloud rely on, checked on Tansu and the memory cluster."""

from __future__ import annotations

import os

from hierfl.transport.base import Inbound
from tests.contract.harness import KAFKA_CHUNK_BYTES, KafkaHarness, messages_of, take

# Frames of several sizes: one chunk, several chunks (> chunk_bytes), empty.
FRAMES = [b"small", os.urandom(3 * KAFKA_CHUNK_BYTES + 7), b"", os.urandom(KAFKA_CHUNK_BYTES)]


async def _produce(kafka: KafkaHarness, topic: str, frames: list[bytes], key: bytes,
                   client_id: str) -> list[int]:
    async with kafka.producer(client_id) as producer:
        return [await producer.send_frame(topic, key=key, frame=f) for f in frames]


async def test_frames_round_trip_in_order_chunked(kafka: KafkaHarness, unique_id: str) -> None:
    topic = f"{unique_id}-agg"
    await kafka.create_topic(topic)
    counts = await _produce(kafka, topic, FRAMES, b"fog-a", f"{unique_id}-p")
    assert counts[0] == 1 and counts[1] > 3
    async with kafka.consumer(topic, client_id=f"{unique_id}-c", start="earliest") as consumer:
        async with messages_of(consumer) as it:
            got = await take(it, len(FRAMES))
    assert [g.payload for g in got] == FRAMES
    assert all(g.error is None and g.key == b"fog-a" and g.topic == topic for g in got)
    assert [g.offset for g in got] == sorted(g.offset for g in got)


async def test_keys_preserved(kafka: KafkaHarness, unique_id: str) -> None:
    topic = f"{unique_id}-agg"
    await kafka.create_topic(topic)
    async with kafka.producer(f"{unique_id}-p") as producer:
        for i, key in enumerate([b"fog-a", b"fog-b", b"fog-a", b"fog-c"]):
            await producer.send_frame(topic, key=key, frame=key + bytes([i]) * (i * 3000))
    async with kafka.consumer(topic, client_id=f"{unique_id}-c", start="earliest") as consumer:
        async with messages_of(consumer) as it:
            got = await take(it, 4)
    assert [(g.key, (g.payload or b"")[:5]) for g in got] == [
        (b"fog-a", b"fog-a"), (b"fog-b", b"fog-b"), (b"fog-a", b"fog-a"), (b"fog-c", b"fog-c")]


async def test_commit_then_new_consumer_resumes_after_it(
    kafka: KafkaHarness, unique_id: str
) -> None:
    topic, group = f"{unique_id}-agg", f"{unique_id}-cloud"
    await kafka.create_topic(topic)
    await _produce(kafka, topic, FRAMES, b"k", f"{unique_id}-p")
    async with kafka.consumer(topic, client_id=f"{unique_id}-c1", group_id=group) as c1:
        assert await c1.committed() == {0: None}
        async with messages_of(c1) as it:
            first, second = await take(it, 2)
        await c1.commit(second)
        assert await c1.committed() == {0: second.offset + 1}
    async with kafka.consumer(topic, client_id=f"{unique_id}-c2", group_id=group,
                              start="committed") as c2:
        assert await c2.committed() == {0: second.offset + 1}
        async with messages_of(c2) as it:
            rest = await take(it, 2)
    assert [first.payload, second.payload] == FRAMES[:2]
    assert [r.payload for r in rest] == FRAMES[2:]


async def test_ack_commits_like_commit_and_deliveries_share_the_mqtt_type(
    kafka: KafkaHarness, unique_id: str
) -> None:
    """One inbound type for both buses: a Kafka delivery is a ``transport.base.Inbound``
    with partition and offset, and ``ack()`` commits the group up to it."""
    topic, group = f"{unique_id}-agg", f"{unique_id}-cloud"
    await kafka.create_topic(topic)
    await _produce(kafka, topic, FRAMES, b"k", f"{unique_id}-p")
    async with kafka.consumer(topic, client_id=f"{unique_id}-c1", group_id=group) as c1:
        async with messages_of(c1) as it:
            _first, second = await take(it, 2)
        assert isinstance(second, Inbound) and (second.partition, second.retain) == (0, False)
        await second.ack()
        assert await c1.committed() == {0: second.offset + 1}
    async with kafka.consumer(topic, client_id=f"{unique_id}-c2", group_id=group,
                              start="committed") as c2:
        async with messages_of(c2) as it:
            (third,) = await take(it, 1)
    assert third.payload == FRAMES[2]


async def test_earliest_reads_all_despite_commits(kafka: KafkaHarness, unique_id: str) -> None:
    topic, group = f"{unique_id}-agg", f"{unique_id}-cloud"
    await kafka.create_topic(topic)
    await _produce(kafka, topic, FRAMES, b"k", f"{unique_id}-p")
    async with kafka.consumer(topic, client_id=f"{unique_id}-c1", group_id=group) as c1:
        async with messages_of(c1) as it:
            [*_, last] = await take(it, len(FRAMES))
        await c1.commit(last)
    async with kafka.consumer(topic, client_id=f"{unique_id}-c2", group_id=group,
                              start="earliest") as c2:
        async with messages_of(c2) as it:
            got = await take(it, len(FRAMES))
    assert [g.payload for g in got] == FRAMES


async def test_latest_frame_yields_newest_complete_then_follows(
    kafka: KafkaHarness, unique_id: str
) -> None:
    topic = f"{unique_id}-models"
    await kafka.create_topic(topic)
    newest = os.urandom(2 * KAFKA_CHUNK_BYTES)  # chunked: the newest *complete* frame
    await _produce(kafka, topic, [b"v1", b"v2", newest], b"fed", f"{unique_id}-p")
    async with kafka.consumer(topic, client_id=f"{unique_id}-c", start="latest_frame") as c:
        async with messages_of(c) as it:
            [latest] = await take(it, 1)
            assert latest.payload == newest and latest.key == b"fed"
            await _produce(kafka, topic, [b"v4"], b"fed", f"{unique_id}-p2")
            [follow] = await take(it, 1)
    assert follow.payload == b"v4"
