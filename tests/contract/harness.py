"""The contract tests' view of a broker: links built the same way over every implementation."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from hierfl.config import KafkaSettings, MqttSettings
from hierfl.transport.base import FrameConsumer, FrameProducer, Inbound, MqttLink
from hierfl.transport.kafka import KafkaConsumerTransport, KafkaProducerTransport, ensure_topics
from hierfl.transport.memory import (
    MemoryKafkaBroker,
    MemoryKafkaConsumer,
    MemoryKafkaProducer,
    MemoryMqttBroker,
    MemoryMqttTransport,
)
from hierfl.transport.mqtt import MqttTransport

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class _Receiver(Protocol[T_co]):
    def messages(self) -> AsyncIterator[T_co]: ...


@contextlib.asynccontextmanager
async def messages_of(link: _Receiver[T]) -> AsyncIterator[AsyncIterator[T]]:
    """``link.messages()``, closed on exit (the protocols promise an AsyncIterator, which has
    no ``aclose``; every implementation returns an async generator, which does)."""
    it = link.messages()
    try:
        yield it
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()

# Kafka's smallest chunk size setting: frames of a few KB already cross as several chunks.
KAFKA_CHUNK_BYTES = 4096
# MQTT's smallest packet limit setting: payloads over it are chunked.
MQTT_PACKET_BYTES = 4096
# How long a test waits for something that should arrive (a real broker answers in ms).
WAIT_S = 10.0


@dataclass
class MqttHarness:
    """Builds MQTT links on one broker; ``kill`` cuts a link the way a crash would."""

    kind: str
    url: str = "mqtt://127.0.0.1:1883"
    memory: MemoryMqttBroker | None = None

    def link(
        self,
        client_id: str,
        *,
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
        max_packet_bytes: int | None = None,
    ) -> MqttLink:
        settings = MqttSettings(url=self.url, max_packet_bytes=max_packet_bytes)
        if self.memory is not None:
            return MemoryMqttTransport(self.memory, client_id=client_id,
                                       clean_session=clean_session, will=will, settings=settings)
        return MqttTransport(settings, client_id=client_id, clean_session=clean_session,
                             will=will)

    async def kill(self, link: MqttLink) -> None:
        """Drop ``link``'s connection without a DISCONNECT (its broker publishes the will)."""
        if isinstance(link, MemoryMqttTransport):
            assert self.memory is not None and self.memory.drop_client(link.client_id)
            return
        assert isinstance(link, MqttTransport)
        client = link._client
        sock = client._client.socket()
        assert isinstance(sock, socket.socket)
        # A FIN without a DISCONNECT packet: to the broker, the client vanished.
        sock.shutdown(socket.SHUT_RDWR)
        done, _ = await asyncio.wait([client._disconnected], timeout=WAIT_S)
        assert done, "aiomqtt did not notice its socket was shut"
        client._disconnected.exception()  # retrieved: the loss is what the test wanted


@dataclass
class KafkaHarness:
    """Builds Kafka producers and consumers on one cluster."""

    kind: str
    settings: KafkaSettings
    memory: MemoryKafkaBroker | None = None

    async def create_topic(self, name: str) -> None:
        if self.memory is not None:
            self.memory.create_topic(name)
        else:
            await ensure_topics(self.settings, [name])

    def producer(self, client_id: str) -> FrameProducer:
        if self.memory is not None:
            return MemoryKafkaProducer(self.memory, self.settings, client_id=client_id)
        return KafkaProducerTransport(self.settings, client_id=client_id)

    def consumer(
        self, topic: str, *, client_id: str, group_id: str | None = None,
        start: str = "committed",
    ) -> FrameConsumer:
        if self.memory is not None:
            return MemoryKafkaConsumer(self.memory, topic, settings=self.settings,
                                       client_id=client_id, group_id=group_id, start=start)
        return KafkaConsumerTransport(self.settings, topic, client_id=client_id,
                                      group_id=group_id, start=start)


async def take_own(it: AsyncIterator[Inbound], n: int, prefix: str, *,
                   timeout: float = WAIT_S) -> list[Inbound]:
    """The next ``n`` MQTT messages on topics under ``prefix/`` (the test's own).

    Others are skipped: amqtt 0.12 sends a client that connects the retained messages of every
    filter that any client of the broker holds (``Broker.client_connected``: "publish any topic
    retained messages" loops over all subscriptions), so a shared amqtt leaks other tests'
    retained messages to every new connection. mosquitto and the memory broker do not.
    """
    out: list[Inbound] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            m = await anext(it)
            if m.topic.startswith(f"{prefix}/"):
                out.append(m)
    return out


async def take(it: AsyncIterator[T], n: int, *, timeout: float = WAIT_S) -> list[T]:
    """The next ``n`` items of ``it``, failing the test after ``timeout`` seconds."""
    out: list[T] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out.append(await anext(it))
    return out
