"""Where the services get their broker links: injected, so one service code runs on real
brokers or on the in-memory ones (the deterministic simulator, ``hierfl simtest``).

A :class:`Transports` opens the three kinds of link the tiers use (the protocols of
:mod:`hierfl.transport.base`) and checks the Kafka topics. :class:`BrokerTransports` (the
default of every service) opens the real ones (:class:`~hierfl.transport.mqtt.MqttTransport`,
:class:`~hierfl.transport.kafka.KafkaProducerTransport`,
:class:`~hierfl.transport.kafka.KafkaConsumerTransport`); :class:`MemoryTransports` opens the
in-memory twins of :mod:`hierfl.transport.memory` on one MQTT and one Kafka broker object.

Usage::

    mqtt, kafka = MemoryMqttBroker(), MemoryKafkaBroker()
    fog = FogService(settings, transports=MemoryTransports(mqtt, kafka))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from hierfl.errors import BrokerRefusedError, BrokerUnavailableError
from hierfl.transport.base import FrameConsumer, FrameProducer, MqttLink
from hierfl.transport.kafka import KafkaConsumerTransport, KafkaProducerTransport, ensure_topics
from hierfl.transport.memory_kafka import (
    MemoryKafkaBroker,
    MemoryKafkaConsumer,
    MemoryKafkaProducer,
)
from hierfl.transport.memory_mqtt import MemoryMqttBroker, MemoryMqttTransport
from hierfl.transport.mqtt import MqttTransport, RejectHook

if TYPE_CHECKING:
    from hierfl.config import KafkaSettings, MqttSettings

__all__ = ["BrokerTransports", "MemoryTransports", "Transports"]


class Transports(Protocol):
    """Opens the links of one service (each is an async context manager: enter connects)."""

    def mqtt(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
        max_frame_bytes: int | None = None,
        on_reject: RejectHook | None = None,
    ) -> MqttLink:
        """An MQTT connection (persistent session when ``clean_session`` is False)."""
        ...

    def producer(self, settings: KafkaSettings, *, client_id: str) -> FrameProducer:
        """A Kafka producer of chunked frames."""
        ...

    def consumer(
        self,
        settings: KafkaSettings,
        topic: str,
        *,
        client_id: str,
        group_id: str | None = None,
        start: str = "committed",
        max_frame_bytes: int = 64 << 20,
    ) -> FrameConsumer:
        """A Kafka consumer of reassembled frames of ``topic``."""
        ...

    async def ensure_topics(self, settings: KafkaSettings, names: Sequence[str]) -> None:
        """Create missing topics, or with ``create_topics = false`` check they exist.

        Raises:
            BrokerRefusedError: (fatal) a topic is missing and may not be created.
            TransportError: the cluster cannot be reached.
        """
        ...


class BrokerTransports:
    """The real links: aiomqtt and aiokafka."""

    def mqtt(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
        max_frame_bytes: int | None = None,
        on_reject: RejectHook | None = None,
    ) -> MqttLink:
        return MqttTransport(settings, client_id=client_id, clean_session=clean_session,
                             will=will, max_frame_bytes=max_frame_bytes, on_reject=on_reject)

    def producer(self, settings: KafkaSettings, *, client_id: str) -> FrameProducer:
        return KafkaProducerTransport(settings, client_id=client_id)

    def consumer(
        self,
        settings: KafkaSettings,
        topic: str,
        *,
        client_id: str,
        group_id: str | None = None,
        start: str = "committed",
        max_frame_bytes: int = 64 << 20,
    ) -> FrameConsumer:
        return KafkaConsumerTransport(settings, topic, client_id=client_id, group_id=group_id,
                                      start=start, max_frame_bytes=max_frame_bytes)

    async def ensure_topics(self, settings: KafkaSettings, names: Sequence[str]) -> None:
        await ensure_topics(settings, names)


class MemoryTransports:
    """Links to one in-memory MQTT broker and one in-memory Kafka cluster.

    Args:
        mqtt: the MQTT broker every :meth:`mqtt` link connects to.
        kafka: the Kafka cluster every producer and consumer connects to.
        on_open: called with each link's client id as it is made (the simulator uses it to
            know which connections belong to which process, to cut them on a crash).
    """

    def __init__(self, mqtt: MemoryMqttBroker, kafka: MemoryKafkaBroker,
                 on_open: Callable[[str, str], None] | None = None) -> None:
        self.mqtt_broker = mqtt
        self.kafka_broker = kafka
        self._on_open = on_open

    def _opened(self, link: str, client_id: str) -> None:
        if self._on_open is not None:
            self._on_open(link, client_id)

    def mqtt(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
        max_frame_bytes: int | None = None,
        on_reject: RejectHook | None = None,
    ) -> MqttLink:
        self._opened("mqtt", client_id)
        return MemoryMqttTransport(self.mqtt_broker, client_id=client_id,
                                   clean_session=clean_session, will=will, settings=settings,
                                   max_frame_bytes=max_frame_bytes, on_reject=on_reject)

    def producer(self, settings: KafkaSettings, *, client_id: str) -> FrameProducer:
        self._opened("kafka", client_id)
        return MemoryKafkaProducer(self.kafka_broker, settings, client_id=client_id)

    def consumer(
        self,
        settings: KafkaSettings,
        topic: str,
        *,
        client_id: str,
        group_id: str | None = None,
        start: str = "committed",
        max_frame_bytes: int = 64 << 20,
    ) -> FrameConsumer:
        self._opened("kafka", client_id)
        return MemoryKafkaConsumer(self.kafka_broker, topic, settings=settings,
                                   client_id=client_id, group_id=group_id, start=start,
                                   max_frame_bytes=max_frame_bytes)

    async def ensure_topics(self, settings: KafkaSettings, names: Sequence[str]) -> None:
        broker = self.kafka_broker
        if not broker.running:
            raise BrokerUnavailableError(
                f"Kafka connect (memory) to {settings.bootstrap} failed: the cluster is stopped")
        missing = [n for n in names if n not in broker.topics]
        if missing and not settings.create_topics:
            raise BrokerRefusedError(
                f"Kafka topics {missing} missing at {settings.bootstrap} (memory) and "
                "kafka.create_topics is false")
        for name in missing:
            broker.create_topic(name)

