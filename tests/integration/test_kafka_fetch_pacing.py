"""kafka.fetch_wait_due_ms on a real Kafka-protocol broker (the test fixture's): the consumer's
fetch wait follows FrameConsumer.expect, and frames arrive whichever wait is in force."""

from __future__ import annotations

import asyncio

import pytest

from hierfl.config import KafkaSettings
from hierfl.transport.kafka import KafkaConsumerTransport, KafkaProducerTransport, ensure_topics

pytestmark = pytest.mark.integration


def _wait(c: KafkaConsumerTransport) -> int:
    return c._consumer._fetcher._fetch_max_wait_ms  # what its next fetch request carries


async def test_expect_switches_the_fetch_wait_and_frames_arrive_either_way(kafka_broker,
                                                                           unique_id):
    settings = KafkaSettings(bootstrap=kafka_broker.bootstrap, fetch_max_wait_ms=100,
                             fetch_wait_due_ms=10)
    topic = f"hierfl.{unique_id}.models"
    await ensure_topics(settings, [topic])
    async with KafkaProducerTransport(settings, client_id=f"p-{unique_id}") as producer, \
            KafkaConsumerTransport(settings, topic, client_id=f"c-{unique_id}",
                                   start="earliest") as consumer:
        assert _wait(consumer) == 100
        got: list[bytes] = []
        stream = consumer.messages()
        for due, payload in ((False, b"idle"), (True, b"due"), (False, b"idle again")):
            consumer.expect(due)
            assert _wait(consumer) == (10 if due else 100)
            await producer.send_frame(topic, key=b"k", frame=payload)
            async with asyncio.timeout(20):
                got.append((await anext(stream)).payload)
        assert got == [b"idle", b"due", b"idle again"]


async def test_without_a_due_wait_expect_changes_nothing(kafka_broker, unique_id):
    settings = KafkaSettings(bootstrap=kafka_broker.bootstrap, fetch_max_wait_ms=50)
    topic = f"hierfl.{unique_id}.models"
    await ensure_topics(settings, [topic])
    async with KafkaConsumerTransport(settings, topic, client_id=f"c-{unique_id}",
                                      start="earliest") as consumer:
        consumer.expect(True)
        assert _wait(consumer) == 50
