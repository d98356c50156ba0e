"""The in-memory MQTT 3.1.1 broker and transport (semantics: hierfl.transport.memory)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from hierfl.config import MqttSettings
from hierfl.errors import BrokerUnavailableError, ConfigError, DisconnectedError, HierflError
from hierfl.transport.base import Inbound
from hierfl.transport.faults import Envelope, Fault, FaultHook
from hierfl.transport.mqtt import (
    CHUNK_LEVEL,
    RejectHook,
    _split_chunk_topic,
    chunk_topic,
    publish_packet_size,
)
from hierfl.wire.chunking import (
    CHUNK_HEADER_SIZE,
    CHUNK_MAGIC,
    MIN_CHUNK_DATA,
    ChunkCollector,
    split_frame,
)

__all__ = [
    "MemoryMqttBroker",
    "MemoryMqttTransport",
    "topic_matches",
    "validate_filter",
    "validate_topic",
]

log = logging.getLogger(__name__)

_U32_DIGITS = 10  # as in transport/mqtt.py: the longest chunk sub-topic index


def validate_topic(topic: str) -> None:
    """Raise ValueError unless ``topic`` is a valid MQTT topic name (no wildcards)."""
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"invalid MQTT topic name {topic!r}")


def validate_filter(topic_filter: str) -> None:
    """Raise ValueError unless ``topic_filter`` is a valid MQTT topic filter."""
    levels = topic_filter.split("/")
    ok = bool(topic_filter) and "\0" not in topic_filter
    for i, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            ok = False
        if level == "#" and i != len(levels) - 1:
            ok = False
    if not ok:
        raise ValueError(f"invalid MQTT topic filter {topic_filter!r}")


@functools.lru_cache(maxsize=8192)  # a pure function of two strings, called per message
def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (MQTT 3.1.1 section 4.7)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f, t = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


@dataclass(slots=True, eq=False)
class _Conn:
    """One live connection: the client library's inbound queue (bounded by hand, so that
    the disconnect sentinel always gets in)."""

    client_id: str
    will: tuple[str, bytes] | None
    queue_size: int
    queue: asyncio.Queue[Inbound | None] = field(default_factory=asyncio.Queue)
    alive: bool = True
    dropped: int = 0

    def put(self, msg: Inbound) -> None:
        if self.queue.qsize() >= self.queue_size:
            self.dropped += 1  # aiomqtt: "Message queue is full. Discarding message."
            return
        self.queue.put_nowait(msg)

    def close(self) -> None:
        self.alive = False
        self.queue.put_nowait(None)


@dataclass(slots=True, eq=False)
class _Session:
    client_id: str
    persistent: bool
    subscriptions: dict[str, int] = field(default_factory=dict)
    backlog: deque[Inbound] = field(default_factory=deque)
    conn: _Conn | None = None


class MemoryMqttBroker:
    """An MQTT 3.1.1 broker in memory (semantics in the module docstring).

    Args:
        max_queued_messages: QoS 1 messages queued per offline persistent session; newer
            ones are dropped and counted in ``stats["dropped_queue_full"]``.
        faults: decides each delivery's fate; None delivers everything once.

    Usage::

        broker = MemoryMqttBroker()
        async with MemoryMqttTransport(broker, client_id="fog-a") as mqtt:
            await mqtt.subscribe("hierfl/f/fog-a/update/+")
            async for inbound in mqtt.messages():
                ...
    """

    def __init__(self, *, max_queued_messages: int = 10_000, faults: FaultHook | None = None):
        self.max_queued_messages = max_queued_messages
        self.faults = faults
        self.running = True
        self._retained: dict[str, bytes] = {}
        self._sessions: dict[str, _Session] = {}
        self._delayed: list[tuple[str, Inbound]] = []
        self.stats: dict[str, int] = dict.fromkeys(
            ("published", "delivered", "dropped_queue_full", "dropped_fault", "duplicated",
             "delayed", "wills", "restarts"), 0)

    @property
    def retained(self) -> Mapping[str, bytes]:
        """The retained message of every topic that has one (a copy)."""
        return dict(self._retained)

    def session_backlog(self, client_id: str) -> int:
        """Messages queued for an offline persistent session (0 when there is none)."""
        s = self._sessions.get(client_id)
        return len(s.backlog) if s is not None else 0

    # -- faults -------------------------------------------------------------------------------

    def stop(self, *, persist: bool) -> None:
        """Stop the broker: every client is disconnected (no wills are published).

        Args:
            persist: keep retained messages, persistent sessions and their queued messages
                (a broker with ``persistence true``); False loses them all.
        """
        self.running = False
        for s in list(self._sessions.values()):
            if s.conn is not None:
                s.conn.close()
                s.conn = None
            if not s.persistent:
                del self._sessions[s.client_id]
        self._delayed.clear()  # in flight on sockets that are gone
        if not persist:
            self._retained.clear()
            self._sessions.clear()

    def start(self) -> None:
        """Start a stopped broker again (clients must reconnect)."""
        self.running = True

    def restart(self, *, persist: bool) -> None:
        """:meth:`stop` then :meth:`start`."""
        self.stop(persist=persist)
        self.start()
        self.stats["restarts"] += 1

    def drop_client(self, client_id: str) -> bool:
        """Cut a client's connection uncleanly (network loss, crash): its last will is
        published; its next call or iteration raises DisconnectedError.

        Returns:
            Whether the client was connected.
        """
        s = self._sessions.get(client_id)
        if s is None or s.conn is None:
            return False
        self._disconnect(s.conn, clean=False)
        return True

    def release_delayed(self) -> int:
        """Deliver every message held back by a DELAY fault, in the order held.

        Returns:
            How many were released.
        """
        held, self._delayed = self._delayed, []
        for client_id, msg in held:
            s = self._sessions.get(client_id)
            if s is not None:
                self._enqueue(s, msg)
        return len(held)

    # -- used by MemoryMqttTransport ----------------------------------------------------------

    def _connect(self, client_id: str, *, clean_session: bool, will: tuple[str, bytes] | None,
                 queue_size: int) -> _Conn:
        if not self.running:
            raise BrokerUnavailableError("MQTT connect (memory) failed: the broker is stopped")
        s = self._sessions.get(client_id)
        if s is not None and s.conn is not None:
            self._disconnect(s.conn, clean=True)  # session takeover
            s = self._sessions.get(client_id)
        if s is None or clean_session:
            s = _Session(client_id, persistent=not clean_session)
            self._sessions[client_id] = s
        s.persistent = not clean_session
        conn = _Conn(client_id, will, queue_size)
        s.conn = conn
        while s.backlog:
            conn.put(s.backlog.popleft())
        return conn

    def _disconnect(self, conn: _Conn, *, clean: bool) -> None:
        if not conn.alive:
            return
        conn.close()
        s = self._sessions.get(conn.client_id)
        if s is not None and s.conn is conn:
            s.conn = None
            if not s.persistent:
                del self._sessions[conn.client_id]
        if not clean and conn.will is not None and self.running:
            self.stats["wills"] += 1
            self._publish(conn.client_id, conn.will[0], conn.will[1], qos=1, retain=True)

    def _publish(self, sender: str, topic: str, payload: bytes, *, qos: int,
                 retain: bool) -> None:
        validate_topic(topic)
        self.stats["published"] += 1
        if retain:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)
        for s in list(self._sessions.values()):
            granted = [q for f, q in s.subscriptions.items() if topic_matches(f, topic)]
            if granted:
                self._route(sender, s, Inbound(topic, payload), min(qos, max(granted)))

    def _route(self, sender: str, s: _Session, msg: Inbound, qos: int) -> None:
        if s.conn is None and qos == 0:
            return  # QoS 0 is never queued for an offline session (mosquitto's default)
        fate = Fault.DELIVER
        if self.faults is not None:
            fate = self.faults(Envelope("mqtt", msg.topic, msg.payload, sender, s.client_id))
        if fate is Fault.DROP:
            self.stats["dropped_fault"] += 1
        elif fate is Fault.DELAY:
            self.stats["delayed"] += 1
            self._delayed.append((s.client_id, msg))
        else:
            self._enqueue(s, msg)
            if fate is Fault.DUPLICATE:
                self.stats["duplicated"] += 1
                self._enqueue(s, msg)

    def _enqueue(self, s: _Session, msg: Inbound) -> None:
        if s.conn is not None:
            self.stats["delivered"] += 1
            s.conn.put(msg)
        elif not s.persistent:
            return
        elif len(s.backlog) >= self.max_queued_messages:
            self.stats["dropped_queue_full"] += 1
        else:
            s.backlog.append(msg)

    def _subscribe(self, conn: _Conn, topic_filter: str, qos: int) -> None:
        validate_filter(topic_filter)
        s = self._sessions[conn.client_id]
        s.subscriptions[topic_filter] = qos
        for topic, payload in sorted(self._retained.items()):
            if topic_matches(topic_filter, topic):
                conn.put(Inbound(topic, payload, retain=True))

    def _unsubscribe(self, conn: _Conn, topic_filter: str) -> None:
        self._sessions[conn.client_id].subscriptions.pop(topic_filter, None)


class MemoryMqttTransport:
    """An MQTT connection to a :class:`MemoryMqttBroker`, shaped like :class:`MqttTransport`.

    Args:
        broker: the broker to connect to.
        client_id: the session key, as on a real broker.
        clean_session: False for a persistent session.
        will: ``(topic, payload)`` published retained if the connection is cut uncleanly.
        settings: queue size, packet limit (payloads over it are chunked) and reassembly
            budgets; the URL and credentials are ignored. Defaults to ``MqttSettings()``.
        max_frame_bytes: largest payload reassembled from chunks.
        on_reject: called with ``(error, topic)`` for refused chunks and dropped partial frames.

    Reusable (one connection at a time), not reentrant.
    """

    def __init__(
        self,
        broker: MemoryMqttBroker,
        *,
        client_id: str,
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
        settings: MqttSettings | None = None,
        max_frame_bytes: int | None = None,
        on_reject: RejectHook | None = None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.clean_session = clean_session
        self.will = will
        self.settings = settings or MqttSettings()
        self._on_reject = on_reject
        s = self.settings
        self._collector = ChunkCollector(
            max_frame_bytes=min(max_frame_bytes or 2**32 - 1, s.reassembly_max_bytes, 2**32 - 1),
            max_bytes=s.reassembly_max_bytes,
            max_frames=s.reassembly_max_frames,
            timeout_s=s.reassembly_timeout_s,
            on_drop=self._reject,
        )
        self._retained_chunks: dict[str, int] = {}
        self._conn: _Conn | None = None
        self._dropped_before = 0

    @property
    def dropped(self) -> int:
        """Inbound messages discarded because the bounded queue was full."""
        return self._dropped_before + (self._conn.dropped if self._conn is not None else 0)

    async def __aenter__(self) -> Self:
        if self._conn is not None and self._conn.alive:
            raise RuntimeError("MemoryMqttTransport is not reentrant")
        self._forget_conn()
        self._conn = self.broker._connect(
            self.client_id, clean_session=self.clean_session, will=self.will,
            queue_size=self.settings.queue_size)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            self.broker._disconnect(self._conn, clean=True)
        self._forget_conn()

    def _forget_conn(self) -> None:
        if self._conn is not None:
            self._dropped_before += self._conn.dropped
        self._conn = None

    def _live(self, action: str) -> _Conn:
        conn = self._conn
        if conn is None or not conn.alive:
            raise DisconnectedError(f"MQTT {action} (memory) failed: not connected")
        return conn

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        """Subscribe to a filter and to its chunk sub-topics (as MqttTransport does)."""
        conn = self._live("subscribe")
        self.broker._subscribe(conn, topic_filter, qos)
        if not topic_filter.endswith("#"):
            self.broker._subscribe(conn, f"{topic_filter}/{CHUNK_LEVEL}/+", qos)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Undo :meth:`subscribe`."""
        conn = self._live("unsubscribe")
        self.broker._unsubscribe(conn, topic_filter)
        self.broker._unsubscribe(conn, f"{topic_filter}/{CHUNK_LEVEL}/+")

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float | None = 30.0,
    ) -> None:
        """Publish (split into chunks over ``settings.max_packet_bytes``, as MqttTransport).

        Raises:
            DisconnectedError: when not connected (also after a broker restart).
            ConfigError: when ``max_packet_bytes`` leaves too little room next to the topic.
        """
        self._live("publish")
        limit = self.settings.max_packet_bytes
        if limit is None or publish_packet_size(topic, len(payload), qos=qos) <= limit:
            self._send(topic, payload, qos, retain)
            if retain:
                self._clear_stale(topic, 1, qos)
            await asyncio.sleep(0)  # a real publish yields to the loop: let others interleave
            return
        longest = chunk_topic(topic, 10**_U32_DIGITS - 1) if retain else topic
        room = limit - (publish_packet_size(longest, limit, qos=qos) - limit) - CHUNK_HEADER_SIZE
        if room < MIN_CHUNK_DATA:
            raise ConfigError(
                f"mqtt.max_packet_bytes = {limit} leaves {room} bytes per chunk on topic "
                f"{topic!r}; at least {MIN_CHUNK_DATA} are needed"
            )
        chunks = split_frame(payload, chunk_bytes=room + CHUNK_HEADER_SIZE)
        if not retain:
            for c in chunks:
                self._send(topic, c, qos, retain)
            await asyncio.sleep(0)
            return
        for i, c in enumerate(chunks[1:], start=1):
            self._send(chunk_topic(topic, i), c, qos, retain)
        self._send(topic, chunks[0], qos, retain)  # chunk 0 last, as MqttTransport
        self._clear_stale(topic, len(chunks), qos)
        await asyncio.sleep(0)

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self._live("publish")
        self.broker._publish(self.client_id, topic, payload, qos=qos, retain=retain)

    def _clear_stale(self, topic: str, count: int, qos: int) -> None:
        for i in range(count, self._retained_chunks.get(topic, 1)):
            self._send(chunk_topic(topic, i), b"", qos, True)
        if count > 1:
            self._retained_chunks[topic] = count
        else:
            self._retained_chunks.pop(topic, None)

    async def messages(self) -> AsyncIterator[Inbound]:
        """Yield inbound messages until the connection drops; chunks come out reassembled.

        Raises:
            DisconnectedError: when the connection is lost (broker restart, takeover, drop).
        """
        conn = self._live("receive")
        while True:
            m = await conn.queue.get()
            if m is None:
                conn.queue.put_nowait(None)  # every later read fails too
                raise DisconnectedError("MQTT receive (memory) failed: connection lost")
            topic, index = _split_chunk_topic(m.topic)
            if index is None and not m.payload.startswith(CHUNK_MAGIC):
                yield m
                continue
            if index is not None and not m.payload:
                continue  # a cleared retained chunk
            try:
                done = self._collector.feed(topic, m.payload, retained=m.retain, index=index)
            except HierflError as exc:
                self._reject(topic, exc)
                continue
            if done is not None:
                yield Inbound(topic, done.frame, retain=done.retained)

    def _reject(self, topic: str, exc: HierflError) -> None:
        log.info("MQTT %s (memory): refused chunked input on %s: %s: %s", self.client_id, topic,
                 exc.reason, exc)
        if self._on_reject is not None:
            self._on_reject(exc, topic)
