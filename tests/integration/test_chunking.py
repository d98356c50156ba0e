"""A model frame over Kafka's 1 MB record limit crosses a real broker as chunks, intact."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from hierfl.config import KafkaSettings
from hierfl.transport.kafka import KafkaConsumerTransport, KafkaProducerTransport, ensure_topics
from hierfl.wire import LayoutEntry, ModelFrame, decode_frame, encode_frame
from hierfl.wire.chunking import CHUNK_HEADER_SIZE, split_frame

pytestmark = pytest.mark.integration


async def test_large_model_frame_crosses_kafka_in_chunks(kafka_broker, unique_id):
    settings = KafkaSettings(bootstrap=kafka_broker.bootstrap)
    topic = f"hierfl.{unique_id}.models"
    await ensure_topics(settings, [topic])
    rng = np.random.default_rng(0)
    weights = rng.normal(size=700_000).astype(np.float32)  # 2.8 MB, incompressible
    frame = ModelFrame(unique_id, 5, weights, parent=4, layout=(LayoutEntry("w", (700, 1000)),))
    data = encode_frame(frame)
    assert len(data) > 1_048_576
    async with KafkaProducerTransport(settings, client_id="p") as producer:
        n = await producer.send_frame(topic, key=b"k", frame=data)
    assert n == -(-len(data) // (settings.chunk_bytes - CHUNK_HEADER_SIZE)) >= 3

    # Raw records: every one under the stock 1 MB limit.
    raw = AIOKafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap,
                           auto_offset_reset="earliest", enable_auto_commit=False)
    await raw.start()
    try:
        batch = await raw.getmany(timeout_ms=5000)
        records = [r for rs in batch.values() for r in rs]
    finally:
        await raw.stop()
    assert len(records) == n
    assert all(len(r.value) <= settings.chunk_bytes for r in records)
    assert sum(len(r.value) - CHUNK_HEADER_SIZE for r in records) == len(data)

    async with KafkaConsumerTransport(settings, topic, client_id="c", start="earliest") as c:
        async for inbound in c.messages():
            assert inbound.error is None
            assert inbound.payload == data
            got = decode_frame(inbound.payload)
            break
    assert isinstance(got, ModelFrame)
    np.testing.assert_array_equal(got.weights, weights)
    assert (got.version, got.parent, got.layout) == (5, 4, frame.layout)


async def test_latest_frame_start_skips_history(kafka_broker, unique_id):
    settings = KafkaSettings(bootstrap=kafka_broker.bootstrap, chunk_bytes=100_000)
    topic = f"hierfl.{unique_id}.models"
    await ensure_topics(settings, [topic])
    rng = np.random.default_rng(1)
    async with KafkaProducerTransport(settings, client_id="p") as producer:
        for v in range(4):
            w = rng.normal(size=60_000).astype(np.float32)
            await producer.send_frame(topic, key=b"k",
                                      frame=encode_frame(ModelFrame(unique_id, v, w)))
    async with KafkaConsumerTransport(settings, topic, client_id="c", start="latest_frame",
                                      lookback_records=2) as c:
        async for inbound in c.messages():
            got = decode_frame(inbound.payload)
            break
    assert isinstance(got, ModelFrame)
    assert got.version == 3


async def test_latest_frame_start_waits_for_a_frame_still_being_written(kafka_broker, unique_id):
    """A consumer that starts while a multi-chunk model is half-written gets that model whole
    once its last chunk lands (it used to resume after the half and never see it)."""
    settings = KafkaSettings(bootstrap=kafka_broker.bootstrap, chunk_bytes=100_000)
    topic = f"hierfl.{unique_id}.models"
    await ensure_topics(settings, [topic])
    rng = np.random.default_rng(2)
    old = encode_frame(ModelFrame(unique_id, 0, rng.normal(size=60_000).astype(np.float32)))
    new = encode_frame(ModelFrame(unique_id, 1, rng.normal(size=60_000).astype(np.float32)))
    chunks = split_frame(new, chunk_bytes=settings.chunk_bytes)
    assert len(chunks) >= 3
    raw = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    await raw.start()
    try:
        for c in split_frame(old, chunk_bytes=settings.chunk_bytes) + chunks[:2]:
            await raw.send_and_wait(topic, c, key=b"k")
        async with KafkaConsumerTransport(settings, topic, client_id="c", start="latest_frame",
                                          lookback_records=64) as c:
            for rest in chunks[2:]:
                await raw.send_and_wait(topic, rest, key=b"k")
            got = []
            async with asyncio.timeout(30):
                async for inbound in c.messages():
                    got.append(decode_frame(inbound.payload).version)
                    if len(got) == 2:
                        break
    finally:
        await raw.stop()
    assert got == [0, 1]  # the newest complete frame at start, then the one being written
