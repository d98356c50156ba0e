"""MQTT transport: the only module that imports aiomqtt (edge <-> fog traffic).

QoS 1 everywhere; fogs connect with persistent sessions (``clean_session=False``) so the
broker queues what edges publish while the fog is away; models are published retained;
a last will marks a client offline. Every aiomqtt/paho/OS failure is mapped to a
:class:`~hierfl.errors.TransportError` subclass at this boundary.

Broker packet limits (``MqttSettings.max_packet_bytes``; AWS IoT Core allows 128 KB): a
payload whose PUBLISH packet would exceed the limit is split into chunks
(:mod:`hierfl.wire.chunking`) that each fit, and :meth:`MqttTransport.messages` yields the
reassembled payload on the original topic, so the tiers above never see chunks. A retained
payload keeps chunk 0 on its topic ``T`` and chunk ``i >= 1`` retained on ``T/~chunk/i``
(a topic retains only its last message); :meth:`MqttTransport.subscribe` subscribes every
filter's ``/~chunk/+`` sub-topics too. See docs/wire-format.md, "Chunking on MQTT".

TLS (``mqtts://``): the context comes from :func:`hierfl.transport.tls.client_ssl_context`
(TLS >= 1.2, broker certificate and host name always verified, optional client certificate).
A certificate failure while connecting (unknown CA, wrong host name, client certificate
refused) is a fatal :class:`~hierfl.errors.BrokerRefusedError` whose message names the URL and
says TLS; so is a CONNACK refusing our credentials. Other connect failures are retriable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self

import aiomqtt

from hierfl.config import MqttSettings
from hierfl.errors import (
    BrokerRefusedError,
    BrokerUnavailableError,
    ConfigError,
    DisconnectedError,
    HierflError,
    PublishTimeoutError,
    TransportError,
)
from hierfl.transport._paho_io import speed_up
from hierfl.transport.base import Inbound
from hierfl.transport.tls import client_ssl_context, find_ssl_error
from hierfl.wire.chunking import (
    CHUNK_HEADER_SIZE,
    CHUNK_MAGIC,
    MIN_CHUNK_DATA,
    ChunkCollector,
    split_frame,
)

__all__ = ["CHUNK_LEVEL", "MqttTransport", "chunk_topic", "map_mqtt_errors", "publish_packet_size"]

log = logging.getLogger(__name__)

# paho never sets TCP_NODELAY; with Nagle on both ends a QoS-1 round trip costs ~40-90 ms.
_NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]

# Topic level under which the chunks 1.. of a retained chunked payload live: T/~chunk/i.
# "~" is outside the id alphabet of hierfl/topics.py, so no hierfl topic can collide.
CHUNK_LEVEL = "~chunk"
# Chunks of one frame published at once (each waits for its PUBACK); paho allows 20 in flight
# and AWS IoT Core 100 unacknowledged QoS 1 messages per connection.
_WINDOW = 16
_U32_DIGITS = 10

RejectHook = Callable[[HierflError, str], None]


def publish_packet_size(topic: str, payload_len: int, *, qos: int = 1) -> int:
    """Bytes of the MQTT 3.1.1 PUBLISH packet carrying ``payload_len`` bytes on ``topic``.

    Fixed header (1 byte + 1-4 bytes of remaining length), topic (2-byte length + UTF-8),
    packet id (2 bytes, QoS > 0), payload.
    """
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + payload_len
    varint = 1 + (remaining >= 128) + (remaining >= 16_384) + (remaining >= 2_097_152)
    return 1 + varint + remaining


def chunk_topic(topic: str, index: int) -> str:
    """The topic that holds chunk ``index >= 1`` of a retained chunked payload of ``topic``."""
    return f"{topic}/{CHUNK_LEVEL}/{index}"


def _split_chunk_topic(topic: str) -> tuple[str, int | None]:
    """``T/~chunk/i`` -> ``(T, i)``; any other topic -> ``(topic, None)``."""
    base, sep, tail = topic.rpartition(f"/{CHUNK_LEVEL}/")
    if sep and base and tail.isdigit() and tail.isascii() and len(tail) <= _U32_DIGITS:
        return base, int(tail)
    return topic, None


# CONNACK codes no retry can fix: MQTT 3.1.1 return codes 1 (protocol version), 2 (client id
# refused), 4 (bad user name or password), 5 (not authorized), and their MQTT 5 reason codes
# (paho 2 reports 3.1.1 codes as these): 132, 133, 134, 135, 138 (banned), 140 (bad auth method).
_REFUSED_CONNACK = frozenset({1, 2, 4, 5, 132, 133, 134, 135, 138, 140})


def _refused_connack(exc: BaseException) -> bool:
    """Whether ``exc`` is a CONNACK refusal that retrying cannot fix (credentials, ACL)."""
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return False
    rc = exc.rc
    value = rc if isinstance(rc, int) else getattr(rc, "value", None)
    return isinstance(value, int) and value in _REFUSED_CONNACK


def _certificate_failure(tls: ssl.SSLError) -> bool:
    """A TLS failure that is about certificates (ours or the broker's), not a dropped link."""
    text = f"{getattr(tls, 'reason', None) or ''} {tls}".upper()
    return isinstance(tls, ssl.SSLCertVerificationError) or "CERTIFICATE" in text


@contextlib.contextmanager
def map_mqtt_errors(action: str, *, url: str | None = None) -> Iterator[None]:
    """Map aiomqtt, paho and OS errors raised inside the block to TransportError subclasses.

    Args:
        action: what was being done, for the message.
        url: the broker URL, for the message.

    Raises:
        PublishTimeoutError: on a timeout.
        BrokerRefusedError: (fatal) when connecting is refused for good: CONNACK "Not
            authorized", "Bad user name or password", client id or protocol refused, or a
            TLS certificate that does not verify. The message names the URL and settings.
        BrokerUnavailableError: when connecting fails otherwise (unknown host, refused port,
            timeout, TLS link dropped).
        DisconnectedError: when an established connection fails.
    """
    where = f" ({url})" if url else ""
    try:
        yield
    except TransportError:
        raise
    except TimeoutError as exc:
        raise PublishTimeoutError(f"MQTT {action}{where} timed out") from exc
    except (aiomqtt.MqttError, OSError) as exc:
        if action == "connect" and _refused_connack(exc):
            raise BrokerRefusedError(
                f"MQTT broker{where} refused the connection: {exc} (check mqtt.username and "
                "mqtt.password, HIERFL_MQTT__USERNAME / HIERFL_MQTT__PASSWORD, and the broker's "
                "ACL for this client)"
            ) from exc
        tls = find_ssl_error(exc)
        if tls is not None and action == "connect":
            cls = BrokerRefusedError if _certificate_failure(tls) else BrokerUnavailableError
            raise cls(
                f"MQTT {action}{where} failed: TLS: {tls} (check mqtt.ca_file, cert_file, "
                "key_file and that the broker's certificate names the host connected to)"
            ) from exc
        if isinstance(exc, OSError) or action == "connect":
            raise BrokerUnavailableError(
                f"MQTT {action}{where} failed: {exc} (check mqtt.url and that the broker runs)"
            ) from exc
        raise DisconnectedError(f"MQTT {action}{where} failed: {exc}") from exc


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
        settings: broker URL, credentials, timeouts, queue size, packet limit and the
            reassembly budgets for chunked payloads.
        client_id: MQTT client identifier (the session key for persistent sessions).
        clean_session: False to keep subscriptions and queued QoS-1 messages across
            reconnects (fogs); True for throw-away sessions.
        will: ``(topic, payload)`` published retained by the broker if we vanish.
        max_frame_bytes: largest payload reassembled from chunks (never more than the
            reassembly byte budget); a chunk declaring more is refused at once.
        on_reject: called with ``(error, topic)`` for every refused chunk and every
            partial frame dropped (``IncompleteFrameError``), e.g. to count them; they are
            logged and counted in :attr:`chunk_stats` either way.

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
        max_frame_bytes: int | None = None,
        on_reject: RejectHook | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._queue_cls = type("_Queue", (_CountingQueue,), {"dropped": 0})
        tls_context = None
        if settings.tls:
            tls_context = client_ssl_context(
                ca_file=settings.ca_file,
                cert_file=settings.cert_file,
                key_file=settings.key_file,
                key_password=settings.key_password,
                server_name=settings.tls_server_name,
                section="mqtt",
            )
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
            socket_options=_NODELAY,  # applied to the TLS socket too (paho's socket())
            tls_context=tls_context,
            logger=logger or log,
        )
        # paho copies a large packet again for every piece the socket takes (hierfl/transport/
        # _paho_io.py): 8-11 ms of CPU per 4.5 MB model sent, 2.6-3 ms without
        speed_up(self._client._client)
        self._watch_early_disconnect()
        self._open = False
        self._on_reject = on_reject
        self._collector = ChunkCollector(
            max_frame_bytes=min(max_frame_bytes or 2**32 - 1, settings.reassembly_max_bytes,
                                2**32 - 1),
            max_bytes=settings.reassembly_max_bytes,
            max_frames=settings.reassembly_max_frames,
            timeout_s=settings.reassembly_timeout_s,
            on_drop=self._reject,
        )
        # retained topic -> chunk count of the payload last retained there by this transport
        self._retained_chunks: dict[str, int] = {}
        self._sent = {"frames_split": 0, "chunks_sent": 0, "stale_chunks_cleared": 0}
        self._chunks_refused = 0

    @property
    def dropped(self) -> int:
        """Inbound messages discarded because the bounded queue was full."""
        return int(self._queue_cls.dropped)  # type: ignore[attr-defined]

    @property
    def chunk_stats(self) -> dict[str, int]:
        """Counters of chunked traffic: payloads split and chunks sent; frames reassembled,
        duplicate and refused chunks, partial frames dropped (expired, evicted); partial
        frames and their bytes buffered now."""
        c = self._collector
        return {
            **self._sent,
            "frames_reassembled": c.counts["completed"],
            "duplicate_chunks": c.counts["duplicates"],
            "chunks_refused": self._chunks_refused,
            "partials_expired": c.counts["expired"],
            "partials_evicted": c.counts["evicted"],
            "partial_frames": len(c),
            "buffered_bytes": c.buffered_bytes,
        }

    def _watch_early_disconnect(self) -> None:
        """Fail the connect at once when the broker drops the connection before its CONNACK.

        aiomqtt ignores a disconnect that comes before the CONNACK and waits for the connect
        timeout. A TLS broker that refuses our client certificate does just that with TLS 1.3:
        the client's handshake completes, then the broker's alert closes the connection.
        """
        paho_client = self._client._client
        aiomqtt_on_disconnect = paho_client.on_disconnect

        def on_disconnect(*args: Any) -> None:
            connected = self._client._connected
            if not connected.done():
                why = f"the broker closed the connection before accepting it ({args[3]})"
                if self.settings.tls:
                    why += "; with TLS: was our client certificate refused or missing?"
                connected.set_exception(aiomqtt.MqttError(why))
            if aiomqtt_on_disconnect is not None:
                aiomqtt_on_disconnect(*args)

        paho_client.on_disconnect = on_disconnect

    async def __aenter__(self) -> Self:
        try:
            with map_mqtt_errors("connect", url=self.settings.url):
                await self._client.__aenter__()
        except BaseException:
            # A refused CONNACK or a connect timeout leaves paho's socket open: close it, so
            # a failed connect leaks nothing (retried connects would pile sockets up).
            self._close_socket()
            raise
        self._open = True
        log.info("MQTT %s connected to %s", self.client_id, self.settings.url,
                 extra={"broker": self.settings.url, "client_id": self.client_id})
        return self

    def _close_socket(self) -> None:
        paho_client = self._client._client
        with contextlib.suppress(Exception):
            paho_client._sock_close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        was_open, self._open = self._open, False
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
            await self._client.__aexit__(exc_type, exc, tb)
        if was_open:
            why = "" if exc is None or isinstance(exc, asyncio.CancelledError) else f" ({exc})"
            log.info("MQTT %s disconnected from %s%s", self.client_id, self.settings.url, why,
                     extra={"broker": self.settings.url, "client_id": self.client_id})

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        """Subscribe to a topic filter and to the chunk sub-topics of what it matches.

        One SUBSCRIBE carries ``topic_filter`` and ``topic_filter/~chunk/+`` (unless the
        filter ends in ``#``, which covers them), so a retained payload stored as chunks
        reaches a subscriber that asked only for its topic.
        """
        filters = [(topic_filter, qos)]
        if not topic_filter.endswith("#"):
            filters.append((f"{topic_filter}/{CHUNK_LEVEL}/+", qos))
        with map_mqtt_errors("subscribe"):
            await self._client.subscribe(filters)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Undo :meth:`subscribe`: the filter and its chunk sub-topics (some messages already
        in flight may still come)."""
        filters = [topic_filter]
        if not topic_filter.endswith("#"):
            filters.append(f"{topic_filter}/{CHUNK_LEVEL}/+")
        with map_mqtt_errors("unsubscribe"):
            await self._client.unsubscribe(filters)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float | None = 30.0,
    ) -> None:
        """Publish and wait for the broker's PUBACK (QoS 1), in chunks when too large.

        With ``settings.max_packet_bytes`` set, a payload whose packet would exceed it is
        split into chunks that each fit; up to 16 are in flight at once, and the call returns
        once every chunk is acknowledged. A retained one stores chunk ``i >= 1`` on
        ``topic/~chunk/i`` first and chunk 0 on ``topic`` last, then clears sub-topics that
        this transport filled before for a longer payload.

        Args:
            timeout: seconds each packet may wait for its PUBACK.

        Raises:
            PublishTimeoutError: when the broker does not acknowledge in ``timeout`` s.
            DisconnectedError: when the connection is lost (also when the broker drops it
                because a packet exceeds its size limit; the message says so).
            ConfigError: when ``max_packet_bytes`` leaves too little room next to the topic.
        """
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        limit = self.settings.max_packet_bytes
        if limit is None or publish_packet_size(topic, len(payload), qos=qos) <= limit:
            await self._publish_packet(topic, payload, qos, retain, timeout)
            if retain:
                await self._clear_stale(topic, 1, qos, timeout)
        else:
            await self._publish_chunked(topic, payload, limit, qos, retain, timeout)
        # Python 3.11's wait_for (inside aiomqtt) can swallow a cancel that races the PUBACK:
        # the publish returns normally and the caller never learns it was cancelled, so a
        # shutdown hangs. aiomqtt's publish now runs in a task of its own (_publish_packet),
        # which keeps the caller's cancel out of that wait_for; should one still be pending
        # here, re-raise it.
        if task is not None and task.cancelling() > cancelling:
            raise asyncio.CancelledError

    async def _publish_chunked(
        self, topic: str, payload: bytes, limit: int, qos: int, retain: bool,
        timeout: float | None,
    ) -> None:
        longest = chunk_topic(topic, 10**_U32_DIGITS - 1) if retain else topic
        overhead = publish_packet_size(longest, limit, qos=qos) - limit  # header, topic, id
        room = limit - overhead - CHUNK_HEADER_SIZE
        if room < MIN_CHUNK_DATA:
            raise ConfigError(
                f"mqtt.max_packet_bytes = {limit} leaves {room} bytes per chunk on topic "
                f"{topic!r}; at least {MIN_CHUNK_DATA} are needed"
            )
        chunks = split_frame(payload, chunk_bytes=room + CHUNK_HEADER_SIZE)
        self._sent["frames_split"] += 1
        if not retain:
            await self._publish_many([(topic, c) for c in chunks], qos, retain, timeout)
            return
        # Chunk 0 goes last: a topic's retained message always belongs to the newest
        # payload, so the leftovers of an older one can never complete.
        rest = [(chunk_topic(topic, i), c) for i, c in enumerate(chunks) if i]
        await self._publish_many(rest, qos, retain, timeout)
        await self._publish_many([(topic, chunks[0])], qos, retain, timeout)
        await self._clear_stale(topic, len(chunks), qos, timeout)

    async def _clear_stale(
        self, topic: str, count: int, qos: int, timeout: float | None
    ) -> None:
        """Delete the retained chunks ``count..`` left on ``topic``'s sub-topics by an older,
        longer payload (an empty retained message deletes a topic's retained message)."""
        before = self._retained_chunks.get(topic, 1)
        stale = [(chunk_topic(topic, i), b"") for i in range(count, before)]
        await self._publish_many(stale, qos, True, timeout)
        self._sent["stale_chunks_cleared"] += len(stale)
        if count > 1:
            self._retained_chunks[topic] = count
        else:
            self._retained_chunks.pop(topic, None)

    async def _publish_many(
        self, items: Sequence[tuple[str, bytes]], qos: int, retain: bool, timeout: float | None
    ) -> None:
        """Publish every ``(topic, payload)``, at most ``_WINDOW`` awaiting their PUBACK."""
        window = asyncio.Semaphore(_WINDOW)

        async def one(topic: str, payload: bytes) -> None:
            async with window:
                await self._publish_packet(topic, payload, qos, retain, timeout)
                self._sent["chunks_sent"] += bool(payload)

        tasks = [asyncio.ensure_future(one(t, p)) for t, p in items]
        try:
            await asyncio.gather(*tasks)
        finally:
            await _cancel_all(tasks)

    async def _publish_packet(
        self, topic: str, payload: bytes, qos: int, retain: bool, timeout: float | None
    ) -> None:
        """One PUBLISH; fails fast when the broker drops the connection meanwhile (as
        mosquitto and AWS IoT Core do to a client whose packet is over their limit)."""
        disconnected = self._client._disconnected
        with map_mqtt_errors("publish"):
            pub = asyncio.ensure_future(
                self._client.publish(topic, payload, qos=qos, retain=retain, timeout=timeout)
            )
            try:
                await asyncio.wait([pub, disconnected], return_when=asyncio.FIRST_COMPLETED)
            finally:
                await _cancel_all([pub])
            if not pub.done() or pub.cancelled():
                if disconnected.done() and not disconnected.cancelled():
                    disconnected.exception()  # retrieved: aiomqtt reports it on exit anyway
                raise DisconnectedError(self._lost_during(topic, len(payload), qos))
            pub.result()

    def _lost_during(self, topic: str, size: int, qos: int) -> str:
        packet = publish_packet_size(topic, size, qos=qos)
        msg = f"MQTT connection lost while publishing a {packet}-byte packet to {topic!r}"
        if self.settings.max_packet_bytes is None:
            msg += (
                "; brokers disconnect a client whose packet exceeds their maximum packet size "
                "(mosquitto max_packet_size, AWS IoT Core 128 KB): if this broker has one, "
                "set mqtt.max_packet_bytes to split large payloads into chunks"
            )
        return msg

    async def messages(self) -> AsyncIterator[Inbound]:
        """Yield inbound messages until the connection drops; chunks come out reassembled.

        A reassembled payload is yielded once, on its original topic, when its last chunk
        arrives; its ``retain`` is True only if every chunk came from the retained store.
        Refused chunks and dropped partial frames are logged, counted in
        :attr:`chunk_stats` and passed to ``on_reject``; they never end the iteration.

        Raises:
            DisconnectedError: when the connection is lost (never hangs silently).
        """
        with map_mqtt_errors("receive"):
            async for m in self._client.messages:
                payload = m.payload
                if not isinstance(payload, bytes | bytearray):
                    payload = b"" if payload is None else str(payload).encode()
                topic, index = _split_chunk_topic(str(m.topic))
                if index is None and not payload.startswith(CHUNK_MAGIC):
                    yield Inbound(topic, bytes(payload), retain=bool(m.retain))
                    continue
                if index is not None and not payload:
                    continue  # a cleared retained chunk
                try:
                    done = self._collector.feed(topic, bytes(payload), retained=bool(m.retain),
                                                index=index)
                except HierflError as exc:
                    self._chunks_refused += 1
                    self._reject(topic, exc)
                    continue
                if done is not None:
                    yield Inbound(topic, done.frame, retain=done.retained)

    def _reject(self, topic: str, exc: HierflError) -> None:
        log.info("MQTT %s: refused chunked input on %s: %s: %s", self.client_id, topic,
                 exc.reason, exc)
        if self._on_reject is not None:
            self._on_reject(exc, topic)


async def _cancel_all(tasks: Sequence[asyncio.Future[None]]) -> None:
    """Cancel the futures still running and wait for them; their outcome is retrieved."""
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for t in tasks:
        if not t.cancelled():
            t.exception()
