"""The real transports and the in-memory twins satisfy the seam's protocols.

The assignments in ``_static`` are checked by mypy (``mypy tests/contract/test_protocols.py``),
which compares signatures; the ``isinstance`` checks run here and compare method names.
"""

from __future__ import annotations

import pytest

from hierfl.config import KafkaSettings
from hierfl.transport.base import (
    FrameConsumer,
    FrameProducer,
    MqttLink,
    MqttPublisher,
    MqttSubscriber,
)
from hierfl.transport.kafka import KafkaConsumerTransport, KafkaProducerTransport
from hierfl.transport.memory import (
    MemoryKafkaBroker,
    MemoryKafkaConsumer,
    MemoryKafkaProducer,
    MemoryMqttBroker,
    MemoryMqttTransport,
)
from hierfl.transport.mqtt import MqttTransport


def _static(
    mqtt: MqttTransport,
    memory_mqtt: MemoryMqttTransport,
    producer: KafkaProducerTransport,
    memory_producer: MemoryKafkaProducer,
    consumer: KafkaConsumerTransport,
    memory_consumer: MemoryKafkaConsumer,
) -> None:
    links: list[MqttLink] = [mqtt, memory_mqtt]
    publishers: list[MqttPublisher] = [mqtt, memory_mqtt]
    subscribers: list[MqttSubscriber] = [mqtt, memory_mqtt]
    producers: list[FrameProducer] = [producer, memory_producer]
    consumers: list[FrameConsumer] = [consumer, memory_consumer]
    del links, publishers, subscribers, producers, consumers


def test_memory_transports_satisfy_protocols() -> None:
    mqtt = MemoryMqttTransport(MemoryMqttBroker(), client_id="c")
    kafka = MemoryKafkaBroker()
    assert isinstance(mqtt, MqttLink)
    assert isinstance(MemoryKafkaProducer(kafka, client_id="p"), FrameProducer)
    assert isinstance(MemoryKafkaConsumer(kafka, "t", client_id="c"), FrameConsumer)


def test_real_transports_satisfy_protocols() -> None:
    assert issubclass(MqttTransport, MqttLink)
    assert issubclass(KafkaProducerTransport, FrameProducer)
    assert issubclass(KafkaConsumerTransport, FrameConsumer)


@pytest.mark.parametrize("cls", [MqttTransport, MemoryMqttTransport])
def test_mqtt_links_are_not_frame_consumers(cls: type) -> None:
    assert not issubclass(cls, FrameProducer)


def test_kafka_settings_default_chunking_is_shared() -> None:
    assert MemoryKafkaProducer(MemoryKafkaBroker(), client_id="p").settings == KafkaSettings()
