"""What every transport hands to the tier runtimes, and the reconnect backoff they share.

The protocols below are the transport seam: what the tiers use of
:class:`~hierfl.transport.mqtt.MqttTransport` (:class:`MqttLink`),
:class:`~hierfl.transport.kafka.KafkaProducerTransport` (:class:`FrameProducer`) and
:class:`~hierfl.transport.kafka.KafkaConsumerTransport` (:class:`FrameConsumer`). The real
classes and the in-memory twins of :mod:`hierfl.transport.memory` satisfy them (pinned by
tests/contract/test_protocols.py); ``tests/contract`` checks that they also behave alike.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol, Self, runtime_checkable

from hierfl.errors import HierflError

__all__ = [
    "ConsumerStart",
    "FrameConsumer",
    "FrameProducer",
    "Inbound",
    "MqttLink",
    "MqttPublisher",
    "MqttSubscriber",
    "backoff_delays",
]

ConsumerStart = Literal["committed", "earliest", "latest_frame"]
"""Where a :class:`FrameConsumer` starts: the group's committed offset (else the earliest),
the earliest offset, or the newest complete frame (then it follows the log)."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """One delivery from either bus, as received (untrusted), with its acknowledgement.

    Attributes:
        topic: the topic it came on.
        payload: the message (MQTT) or the reassembled frame (Kafka); ``b""`` when
            ``error`` is set.
        retain: MQTT: a retained message (sent on subscribe).
        key: the record key (Kafka) or None.
        partition: Kafka: the partition it came from.
        offset: Kafka: the offset of its last chunk.
        error: Kafka: the typed error that kept a record from becoming a frame (it is
            delivered, so that the reader can count it and move past it).
        acker: set by the transport; call :meth:`ack`.
    """

    topic: str
    payload: bytes
    retain: bool = False
    key: bytes | None = None
    partition: int | None = None
    offset: int | None = None
    error: HierflError | None = None
    acker: Callable[[Inbound], Awaitable[None]] | None = field(default=None, compare=False,
                                                               repr=False)

    async def ack(self) -> None:
        """Acknowledge it as processed. Kafka: commit the consumer group's offset up to and
        including it (never past a frame still being reassembled); MQTT: nothing left to do
        (the client acknowledged the QoS 1 delivery when it took it).

        Raises:
            DisconnectedError: the connection it came on is gone (Kafka).
        """
        if self.acker is not None:
            await self.acker(self)


def backoff_delays(base: float, cap: float) -> Iterator[float]:
    """Yield jittered exponential reconnect delays: ``uniform(0, min(cap, base * 2**n))``.

    Args:
        base: the first delay's upper bound, seconds.
        cap: the largest upper bound, seconds.

    Yields:
        Delays in seconds, forever.
    """
    attempt = 0
    while True:
        yield random.uniform(0, min(cap, base * 2**attempt))
        attempt = min(attempt + 1, 30)


@runtime_checkable
class _AsyncConnection(Protocol):
    """A connection as an async context manager: entering connects, leaving disconnects."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class MqttPublisher(Protocol):
    """The publishing half of an MQTT connection (QoS 1 waits for the broker's PUBACK)."""

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float | None = 30.0,
    ) -> None:
        """Publish ``payload`` on ``topic``; a retained empty payload clears the topic.

        Raises:
            PublishTimeoutError: when the broker does not acknowledge in ``timeout`` s.
            DisconnectedError: when the connection is lost.
        """
        ...


@runtime_checkable
class MqttSubscriber(Protocol):
    """The receiving half of an MQTT connection."""

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        """Subscribe to a filter (``+`` one level, ``#`` the rest); matching retained
        messages come first, with ``Inbound.retain`` set."""
        ...

    async def unsubscribe(self, topic_filter: str) -> None:
        """Undo :meth:`subscribe` (messages already in flight may still come)."""
        ...

    def messages(self) -> AsyncIterator[Inbound]:
        """Yield inbound messages (chunked payloads reassembled) until the connection drops.

        Raises:
            DisconnectedError: when the connection is lost (never hangs silently).
        """
        ...


@runtime_checkable
class MqttLink(_AsyncConnection, MqttPublisher, MqttSubscriber, Protocol):
    """What the edge and the fog use of an MQTT connection (:class:`MqttTransport`)."""


@runtime_checkable
class FrameProducer(_AsyncConnection, Protocol):
    """What the fog and the cloud use of a Kafka producer (:class:`KafkaProducerTransport`)."""

    async def send_frame(self, topic: str, *, key: bytes, frame: bytes) -> int:
        """Send one frame as ordered chunk records sharing ``key``; return the chunk count.

        Raises:
            TransportError: when a chunk cannot be delivered.
        """
        ...


@runtime_checkable
class FrameConsumer(_AsyncConnection, Protocol):
    """What the fog and the cloud use of a Kafka consumer (:class:`KafkaConsumerTransport`):
    reassembled frames of one topic in log order, committed only when the caller says so."""

    def messages(self) -> AsyncIterator[Inbound]:
        """Yield reassembled frames (or the typed error of a bad record) in log order.

        Raises:
            TransportError: when the consumer fails.
        """
        ...

    async def commit(self, inbound: Inbound) -> None:
        """Commit the group's offset up to and including ``inbound`` (never past a
        partial chunked frame); a no-op without a group."""
        ...

    async def committed(self) -> dict[int, int | None]:
        """The group's committed offsets, by partition (None: nothing committed)."""
        ...

    def expect(self, due: bool) -> None:
        """Say whether a frame is due soon: the consumer may then poll its broker more often
        (``kafka.fetch_wait_due_ms``) and less while nothing is due. A hint: frames are
        delivered either way."""
        ...
