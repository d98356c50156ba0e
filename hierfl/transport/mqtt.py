"""MQTT transport: the only module that imports aiomqtt (edge <-> fog traffic).

QoS 1 everywhere; fogs connect with persistent sessions (``clean_session=False``) so the
broker queues what edges publish while the fog is away; models are published retained;
a last will marks a client offline. Every aiomqtt/paho/OS failure is mapped to a
:class:`~hierfl.errors.TransportError` subclass at this boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Self

import aiomqtt

from hierfl.config import MqttSettings
from hierfl.errors import (
    BrokerUnavailableError,
    DisconnectedError,
    PublishTimeoutError,
    TransportError,
)
from hierfl.transport.base import Inbound

__all__ = ["MqttTransport", "map_mqtt_errors"]

log = logging.getLogger(__name__)

# paho never sets TCP_NODELAY; with Nagle on both ends a QoS-1 round trip costs ~40-90 ms.
_NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


@contextlib.contextmanager
def map_mqtt_errors(action: str) -> Iterator[None]:
    """Map aiomqtt, paho and OS errors raised inside the block to TransportError subclasses.

    Args:
        action: what was being done, for the message.

    Raises:
        PublishTimeoutError: on a timeout.
        BrokerUnavailableError: when connecting fails.
        DisconnectedError: when an established connection fails.
    """
    try:
        yield
    except TransportError:
        raise
    except (TimeoutError, asyncio.TimeoutError) as exc:
        raise PublishTimeoutError(f"MQTT {action} timed out") from exc
    except aiomqtt.MqttError as exc:
        cls = BrokerUnavailableError if action == "connect" else DisconnectedError
        raise cls(f"MQTT {action} failed: {exc}") from exc
    except OSError as exc:
        raise BrokerUnavailableError(f"MQTT {action} failed: {exc}") from exc


class _CountingQueue(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's inbound queue, bounded, counting what it has to discard when full."""

    dropped = 0

    def put_nowait(self, item: aiomqtt.Message) -> None:
        try:
            super().put_nowait(item)
        except asyncio.QueueFull:
            type(self).dropped += 1
            raise


class MqttTransport:
    """An MQTT connection as an async context manager; inbound data as an async iterator.

    Args:
        settings: broker URL, credentials, timeouts, queue size.
        client_id: MQTT client identifier (the session key for persistent sessions).
        clean_session: False to keep subscriptions and queued QoS-1 messages across
            reconnects (fogs); True for throw-away sessions.
        will: ``(topic, payload)`` published retained by the broker if we vanish.

    Usage::

        async with MqttTransport(settings.mqtt, client_id="fog-a") as mqtt:
            await mqtt.subscribe(topics.update_filter(fed, "fog-a"))
            async for inbound in mqtt.messages():
                ...

    Reusable (one connection at a time), not reentrant.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._queue_cls = type("_Queue", (_CountingQueue,), {"dropped": 0})
        self._client = aiomqtt.Client(
            settings.host,
            settings.port,
            identifier=client_id,
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password else None,
            clean_session=clean_session,
            keepalive=settings.keepalive_s,
            timeout=settings.connect_timeout_s,
            will=aiomqtt.Will(will[0], will[1], qos=1, retain=True) if will else None,
            queue_type=self._queue_cls,
            max_queued_incoming_messages=settings.queue_size,
            socket_options=_NODELAY,
            logger=logger or log,
        )
        self._open = False

    @property
    def dropped(self) -> int:
        """Inbound messages discarded because the bounded queue was full."""
        return int(self._queue_cls.dropped)  # type: ignore[attr-defined]

    async def __aenter__(self) -> Self:
        with map_mqtt_errors("connect"):
            await self._client.__aenter__()
        self._open = True
        log.debug("MQTT %s connected to %s", self.client_id, self.settings.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
            await self._client.__aexit__(exc_type, exc, tb)

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        """Subscribe to a topic filter."""
        with map_mqtt_errors("subscribe"):
            await self._client.subscribe(topic_filter, qos=qos)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Stop receiving messages on a topic filter (some already in flight may still come)."""
        with map_mqtt_errors("unsubscribe"):
            await self._client.unsubscribe(topic_filter)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float | None = 30.0,
    ) -> None:
        """Publish and wait for the broker's PUBACK (QoS 1).

        Raises:
            PublishTimeoutError: when the broker does not acknowledge in ``timeout`` s.
            DisconnectedError: when the connection is lost.
        """
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        with map_mqtt_errors("publish"):
            await self._client.publish(topic, payload, qos=qos, retain=retain, timeout=timeout)
        # Python 3.11's wait_for (inside aiomqtt) can swallow a cancel that races the PUBACK:
        # the publish returns normally and the caller never learns it was cancelled, so a
        # shutdown hangs. Re-raise the cancellation it swallowed.
        if task is not None and task.cancelling() > cancelling:
            raise asyncio.CancelledError

    async def messages(self) -> AsyncIterator[Inbound]:
        """Yield inbound messages until the connection drops.

        Raises:
            DisconnectedError: when the connection is lost (never hangs silently).
        """
        with map_mqtt_errors("receive"):
            async for m in self._client.messages:
                payload = m.payload
                if not isinstance(payload, bytes | bytearray):
                    payload = b"" if payload is None else str(payload).encode()
                yield Inbound(str(m.topic), bytes(payload), retain=bool(m.retain))
