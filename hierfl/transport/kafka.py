"""Kafka transport: the only module that imports aiokafka (fog <-> cloud traffic).

Producer: ``acks="all"``; every frame is split into chunks under the record limit
(:mod:`hierfl.wire.chunking`) and all chunks share the key, so they stay in order on one
partition. Consumer: manual partition assignment; with a ``group_id`` the position
resumes from the group's committed offsets, and offsets are committed only when the
runtime says a frame is processed (:meth:`KafkaConsumerTransport.commit`), never before.
Every aiokafka/OS failure is mapped to a :class:`~hierfl.errors.TransportError` here.

Security (``KafkaSettings.security_protocol``): :func:`kafka_client_kwargs` turns the settings
into aiokafka's keyword arguments (TLS context, SASL mechanism and credentials); the
producer, the consumer and the admin client of :func:`ensure_topics` all use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from hierfl.config import KafkaSettings
from hierfl.errors import (
    BrokerRefusedError,
    BrokerUnavailableError,
    DisconnectedError,
    HierflError,
    PublishTimeoutError,
    TransportError,
)
from hierfl.transport.base import Inbound
from hierfl.transport.tls import client_ssl_context, find_ssl_error
from hierfl.wire.chunking import Reassembler, split_frame

__all__ = [
    "KafkaConsumerTransport",
    "KafkaInbound",
    "KafkaProducerTransport",
    "ensure_topics",
    "kafka_client_kwargs",
    "map_kafka_errors",
]

log = logging.getLogger(__name__)

# A record missing between two delivered ones is fetched again for this long, a short
# pause before each try, before it is taken for a hole in the log (see _refetch_gap).
GAP_WAIT_S = 1.0
GAP_REFETCH_DELAY_S = 0.002


# Errors no retry can fix: the credentials, the SASL mechanism or the ACLs are wrong.
_REFUSED = frozenset({
    "AuthenticationFailedError",
    "AuthenticationMethodNotSupported",
    "ClusterAuthorizationFailedError",
    "GroupAuthorizationFailedError",
    "IllegalSaslStateError",
    "SaslAuthenticationFailed",
    "TopicAuthorizationFailedError",
    "UnsupportedSaslMechanismError",
})


@contextlib.contextmanager
def map_kafka_errors(action: str, *, bootstrap: str | None = None) -> Iterator[None]:
    """Map aiokafka and OS errors raised inside the block to TransportError subclasses.

    Args:
        action: what was being done, for the message.
        bootstrap: the bootstrap servers, for the message.

    Raises:
        PublishTimeoutError: on a timeout.
        BrokerRefusedError: (fatal) on SASL authentication or authorization failures and TLS
            certificate failures; the message names the bootstrap and the settings to check.
        BrokerUnavailableError: when the cluster cannot be reached.
        DisconnectedError: for other (retriable or not) Kafka errors.
    """
    try:
        yield
    except TransportError:
        raise
    except TimeoutError as exc:
        where = f" ({bootstrap})" if bootstrap else ""
        raise PublishTimeoutError(f"Kafka {action}{where} timed out") from exc
    except (KafkaError, OSError) as exc:
        raise _map_kafka_error(action, exc, bootstrap=bootstrap) from exc


def _map_kafka_error(
    action: str, exc: KafkaError | OSError, *, bootstrap: str | None = None
) -> TransportError:
    where = f" ({bootstrap})" if bootstrap else ""
    name = type(exc).__name__
    if name in _REFUSED:
        return BrokerRefusedError(
            f"Kafka {action}{where} refused: {name}: {exc} (check kafka.security_protocol, "
            "kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password, and the "
            "cluster's ACLs for this principal)"
        )
    tls = find_ssl_error(exc)
    if tls is not None:  # unknown CA, wrong host name, refused client certificate
        text = f"{getattr(tls, 'reason', None) or ''} {tls}".upper()
        cert = isinstance(tls, ssl.SSLCertVerificationError) or "CERTIFICATE" in text
        return (BrokerRefusedError if cert else BrokerUnavailableError)(
            f"Kafka {action}{where} failed: TLS: {tls} (check kafka.ca_file, cert_file, "
            "key_file and that the broker's certificate names the host connected to)"
        )
    if isinstance(exc, OSError):
        return BrokerUnavailableError(f"Kafka {action}{where} failed: {exc}")
    if name in ("KafkaConnectionError", "NodeNotReadyError", "KafkaUnavailableError"):
        return BrokerUnavailableError(
            f"Kafka {action}{where} failed: {name}: {exc} (check kafka.bootstrap and that the "
            "brokers run)"
        )
    if name in ("KafkaTimeoutError", "RequestTimedOutError"):
        return PublishTimeoutError(f"Kafka {action}{where} timed out: {exc}")
    return DisconnectedError(f"Kafka {action}{where} failed: {name}: {exc}")


class _BootstrapErrors(logging.Handler):
    """Keeps the errors aiokafka logs, then swallows, while bootstrapping.

    aiokafka's bootstrap logs each host's failure (a SASL refusal, a certificate error) and
    raises a bare ``KafkaConnectionError("Unable to bootstrap ...")``: the cause is only in
    the log record's arguments. Recovering it lets a refused login be fatal, not retried.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        self.errors.extend(a for a in args if isinstance(a, BaseException))


@contextlib.asynccontextmanager
async def _connecting(settings: KafkaSettings, what: str) -> AsyncIterator[None]:
    """Map errors of a connect, recovering the cause aiokafka's bootstrap swallowed."""
    handler = _BootstrapErrors()
    logger = logging.getLogger("aiokafka.client")
    logger.addHandler(handler)
    try:
        with map_kafka_errors(what, bootstrap=settings.bootstrap):
            try:
                yield
            except KafkaError:
                for cause in handler.errors:
                    if isinstance(cause, KafkaError | OSError):
                        mapped = _map_kafka_error(what, cause, bootstrap=settings.bootstrap)
                        if isinstance(mapped, BrokerRefusedError):
                            raise mapped from cause
                raise
    finally:
        logger.removeHandler(handler)


def kafka_client_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for the connection's security settings.

    The same dictionary goes to ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and
    ``AIOKafkaAdminClient``: ``security_protocol``, with TLS an ``ssl_context`` (TLS >= 1.2,
    broker certificate and host name verified, optional client certificate), with SASL
    ``sasl_mechanism`` and ``sasl_plain_username``/``sasl_plain_password`` (aiokafka uses
    these two for SCRAM as well).

    Args:
        settings: the validated Kafka section.

    Returns:
        Keyword arguments; ``{"security_protocol": "PLAINTEXT"}`` by default.

    Raises:
        ConfigError: when a TLS file cannot be loaded.
    """
    kwargs: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.tls:
        kwargs["ssl_context"] = client_ssl_context(
            ca_file=settings.ca_file,
            cert_file=settings.cert_file,
            key_file=settings.key_file,
            key_password=settings.key_password,
            section="kafka",
        )
    if settings.security_protocol.startswith("SASL_"):
        password = settings.sasl_password
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = password.get_secret_value() if password else None
    return kwargs


async def ensure_topics(settings: KafkaSettings, names: Sequence[str]) -> None:
    """Create the given topics when missing; with ``create_topics = false`` check they exist.

    Raises:
        BrokerRefusedError: (fatal) when a topic is missing and ``create_topics`` is false,
            or the cluster refuses our credentials.
        TransportError: when the cluster cannot be reached.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap,
        request_timeout_ms=settings.request_timeout_ms,
        **kafka_client_kwargs(settings),
    )
    try:
        async with _connecting(settings, "connect"):
            await admin.start()
        with map_kafka_errors("create topics", bootstrap=settings.bootstrap):
            if not settings.create_topics:
                existing = set(await admin.list_topics())
                missing = [n for n in names if n not in existing]
                if missing:
                    raise BrokerRefusedError(
                        f"Kafka topic(s) {', '.join(missing)} missing on {settings.bootstrap} "
                        "and kafka.create_topics is false: create them (docs/operations.md) "
                        "or set kafka.create_topics = true (HIERFL_KAFKA__CREATE_TOPICS=true)"
                    )
                return
            for name in names:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [NewTopic(name, settings.partitions, settings.replication_factor)]
                    )
    finally:
        # Closed on every path, a failed start included (else "Unclosed" client warnings).
        with contextlib.suppress(KafkaError, OSError, asyncio.TimeoutError):
            await admin.close()


def _log_link(role: str, client_id: str, settings: KafkaSettings, what: str,
              exc: BaseException | None = None) -> None:
    """One INFO line per connect and disconnect of a Kafka client, naming the brokers."""
    why = "" if exc is None or isinstance(exc, asyncio.CancelledError) else f" ({exc})"
    log.info("Kafka %s %s %s %s%s", role, client_id, what, settings.bootstrap, why,
             extra={"broker": settings.bootstrap, "client_id": client_id})


class KafkaProducerTransport:
    """A Kafka producer that sends whole frames as ordered chunks.

    Args:
        settings: bootstrap servers, chunk size, timeouts.
        client_id: Kafka client id.

    Usage::

        async with KafkaProducerTransport(settings.kafka, client_id="fog-a") as kafka:
            await kafka.send_frame(topics.aggregates(fed), key=b"fog-a", frame=data)
    """

    def __init__(self, settings: KafkaSettings, *, client_id: str) -> None:
        self.settings = settings
        self._client_id = client_id
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap,
            client_id=client_id,
            acks="all",
            request_timeout_ms=settings.request_timeout_ms,
            max_request_size=settings.chunk_bytes + 4096,
            linger_ms=0,
            **kafka_client_kwargs(settings),
        )
        self.bytes_sent = 0

    async def __aenter__(self) -> Self:
        try:
            async with _connecting(self.settings, "connect"):
                await self._producer.start()
        except BaseException:
            # A failed start leaves the producer open ("Unclosed AIOKafkaProducer"): close it.
            with contextlib.suppress(KafkaError, OSError, asyncio.TimeoutError):
                await self._producer.stop()
            raise
        _log_link("producer", self._client_id, self.settings, "connected to")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(KafkaError, OSError, asyncio.TimeoutError):
            await self._producer.stop()
        _log_link("producer", self._client_id, self.settings, "disconnected from", exc)

    async def send_frame(self, topic: str, *, key: bytes, frame: bytes) -> int:
        """Send one frame as chunks and wait until every chunk is acknowledged by all ISRs.

        Returns:
            The number of chunk records sent.

        Raises:
            TransportError: when a chunk cannot be delivered.
        """
        chunks = split_frame(frame, chunk_bytes=self.settings.chunk_bytes)
        with map_kafka_errors("send"):
            # One chunk at a time, each acknowledged before the next: pipelined batches may be
            # retried out of order (no idempotent producer), and a reader drops a frame whose
            # chunks are out of order. Found as a cloud waiting forever on one fog's aggregate.
            for c in chunks:
                await self._producer.send_and_wait(topic, c, key=key)
        self.bytes_sent += sum(len(c) for c in chunks)
        return len(chunks)


KafkaInbound = Inbound
"""The name Kafka deliveries had before both buses shared :class:`~hierfl.transport.base.Inbound`
(``partition``, ``offset`` and ``error`` set; ``ack()`` commits)."""


class KafkaConsumerTransport:
    """Consume chunked frames from one topic, reassembled, with explicit commits.

    Args:
        settings: bootstrap servers and timeouts.
        topic: the topic to read.
        group_id: consumer group whose committed offsets set the start position (and
            which :meth:`commit` advances). Without one, ``start`` decides.
        start: ``"committed"`` (default with a group; falls back to the earliest offset),
            ``"earliest"``, or ``"latest_frame"`` (the newest complete frame, then follow).
        max_frame_bytes: largest frame reassembled.
        lookback_records: how far back ``latest_frame`` looks first.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        *,
        client_id: str,
        group_id: str | None = None,
        start: str = "committed",
        max_frame_bytes: int = 64 << 20,
        lookback_records: int = 256,
    ) -> None:
        if start not in ("committed", "earliest", "latest_frame"):
            raise ValueError(f"unknown start {start!r}")
        self.settings = settings
        self.topic = topic
        self.group_id = group_id
        self.start = start
        self.lookback_records = lookback_records
        self._client_id = client_id
        self._reassembler = Reassembler(max_frame_bytes=max_frame_bytes)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap,
            client_id=client_id,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=settings.request_timeout_ms,
            max_partition_fetch_bytes=max(settings.chunk_bytes + 65536, 1 << 20),
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            **kafka_client_kwargs(settings),
        )
        self._tps: list[TopicPartition] = []
        self._backlog: list[KafkaInbound] = []
        # The offset each partition's next record must have, and a gap being refetched:
        # (the offset missing, when it was first seen missing).
        self._next: dict[TopicPartition, int] = {}
        self._gap: dict[TopicPartition, tuple[int, float]] = {}
        self.gaps_refetched = 0
        self.gaps_skipped = 0

    async def __aenter__(self) -> Self:
        try:
            async with _connecting(self.settings, "connect"):
                await self._consumer.start()
                await self._assign()
        except BaseException:
            # Closed on every failure, a failed start included ("Unclosed AIOKafkaConsumer").
            with contextlib.suppress(KafkaError, OSError, asyncio.TimeoutError):
                await self._consumer.stop()
            raise
        _log_link("consumer", self._client_id, self.settings, "connected to")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(KafkaError, OSError, asyncio.TimeoutError):
            await self._consumer.stop()
        _log_link("consumer", self._client_id, self.settings, "disconnected from", exc)

    async def _assign(self) -> None:
        parts: set[int] | None = None
        for _ in range(100):
            parts = self._consumer.partitions_for_topic(self.topic)
            if parts:
                break
            await self._consumer._client.force_metadata_update()
            await asyncio.sleep(0.05)
        if not parts and not self.settings.create_topics:
            raise BrokerRefusedError(
                f"Kafka topic {self.topic!r} missing on {self.settings.bootstrap} and "
                "kafka.create_topics is false: create it or set kafka.create_topics = true"
            )
        if not parts:
            raise BrokerUnavailableError(
                f"Kafka topic {self.topic!r} has no partitions on {self.settings.bootstrap}"
            )
        self._tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(self._tps)
        self._next.clear()  # from the log's start: its first offset may be anything
        self._gap.clear()
        if self.start == "earliest":
            await self._consumer.seek_to_beginning(*self._tps)
        elif self.start == "committed":
            for tp in self._tps:
                off = await self._consumer.committed(tp) if self.group_id else None
                if off is None or off < 0:
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, off)
                    self._next[tp] = off
        else:
            await self._find_latest_frame()

    async def _find_latest_frame(self) -> None:
        """Position after the newest complete frame, keeping it as a backlog item.

        A frame whose chunks were still being written when the end offsets were read (a
        multi-chunk model published while this consumer starts) is not skipped: the consumer
        resumes at its first chunk, so it is delivered whole once its last chunk lands.
        """
        ends = await self._consumer.end_offsets(self._tps)
        begins = await self._consumer.beginning_offsets(self._tps)
        lookback = self.lookback_records
        while True:
            newest: KafkaInbound | None = None
            for tp in self._tps:
                start = max(begins[tp], ends[tp] - lookback)
                self._consumer.seek(tp, start)
            pending = {tp for tp in self._tps if ends[tp] > begins[tp]}
            scratch = {tp: Reassembler(max_frame_bytes=self._reassembler.max_frame_bytes)
                       for tp in self._tps}
            last_complete: dict[TopicPartition, int] = {}
            while pending:
                batch = await self._consumer.getmany(*pending, timeout_ms=1000)
                for tp, records in batch.items():
                    for r in records:
                        if r.offset >= ends[tp]:
                            continue
                        try:
                            frame = scratch[tp].feed(r.value, r.offset)
                        except HierflError:
                            continue  # partial frames at the window's start are expected
                        if frame is not None:
                            last_complete[tp] = r.offset
                            newest = self._inbound(tp.partition, r, frame)
                    if records and records[-1].offset >= ends[tp] - 1:
                        pending.discard(tp)
            starts_at_begin = all(ends[tp] - lookback <= begins[tp] for tp in self._tps)
            if newest is not None or starts_at_begin:
                break
            lookback *= 4
        for tp in self._tps:
            # frames begun after the newest complete one and not finished at ends[tp]
            open_from = [o for o in scratch[tp].pending_offsets()
                         if o > last_complete.get(tp, -1)]
            self._next[tp] = min(open_from) if open_from else ends[tp]
            self._consumer.seek(tp, self._next[tp])
        if newest is not None:
            self._backlog.append(newest)

    def _inbound(self, partition: int, record: Any, frame: bytes = b"",
                 error: HierflError | None = None) -> Inbound:
        return Inbound(self.topic, frame, key=record.key, partition=partition,
                       offset=record.offset, error=error, acker=self.commit)

    async def messages(self) -> AsyncIterator[KafkaInbound]:
        """Yield reassembled frames (or typed errors for bad records) in log order.

        Raises:
            TransportError: when the consumer fails.
        """
        while self._backlog:
            yield self._backlog.pop(0)
        while True:
            if self._gap:
                await asyncio.sleep(GAP_REFETCH_DELAY_S)  # let the broker finish the write
            with map_kafka_errors("receive"):
                batch = await self._consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if self._refetch_gap(tp, r.offset):
                        break  # the rest of this partition's records come again
                    try:
                        frame = self._reassembler.feed(r.value, r.offset)
                    except HierflError as exc:
                        yield self._inbound(tp.partition, r, error=exc)
                        continue
                    if frame is not None:
                        yield self._inbound(tp.partition, r, frame)

    def _refetch_gap(self, tp: TopicPartition, offset: int) -> bool:
        """True when ``offset`` skips records this partition has not delivered: the
        consumer is sent back to the first of them (the caller drops the rest of the batch).

        A Kafka-compatible broker may answer a fetch with a record whose predecessor it has
        numbered but not yet made readable (Tansu's memory engine, with several producers
        on one partition: measured by ``benchmarks/kafka_gaps.py``). aiokafka accepts the
        jump (offsets skip legitimately in compacted topics and at transaction markers), so
        the record would be lost to this reader: a chunk missing from a frame. A gap is
        refetched for up to ``GAP_WAIT_S``; one that outlasts it is a real hole in the
        log (compaction, an aborted transaction written by another client) and is passed
        over, logged and counted (``gaps_skipped``).
        """
        expected = self._next.get(tp)
        if expected is not None and offset > expected:
            now = time.monotonic()
            gap = self._gap.get(tp)
            if gap is None or gap[0] != expected:
                gap = self._gap[tp] = (expected, now)
                log.info("Kafka %s[%d]: offset %d arrived before %d; fetching again",
                         tp.topic, tp.partition, offset, expected)
            if now - gap[1] < GAP_WAIT_S:
                self.gaps_refetched += 1
                self._consumer.seek(tp, expected)
                return True
            self.gaps_skipped += 1
            log.warning("Kafka %s[%d]: offsets %d-%d never became readable in %.1f s; "
                        "passed over", tp.topic, tp.partition, expected, offset - 1, GAP_WAIT_S)
        self._gap.pop(tp, None)
        self._next[tp] = offset + 1
        return False

    async def commit(self, inbound: KafkaInbound) -> None:
        """Commit up to and including ``inbound`` (never past an incomplete chunked frame).

        Raises:
            TransportError: when the commit fails.
        """
        if self.group_id is None:
            return
        if inbound.offset is None or inbound.partition is None:
            raise ValueError("not a Kafka delivery: nothing to commit")
        offset = inbound.offset + 1
        pending = self._reassembler.min_pending_offset()
        if pending is not None:
            offset = min(offset, pending)
        tp = TopicPartition(inbound.topic, inbound.partition)
        with map_kafka_errors("commit"):
            await self._consumer.commit({tp: offset})

    def expect(self, due: bool) -> None:
        """Fetch with ``fetch_wait_due_ms`` while a frame is due, else ``fetch_max_wait_ms``
        (no-op when the former is unset). The next fetch request uses it; one in flight ends
        at its own wait.

        On a broker that answers a waiting fetch only when its wait runs out (Tansu), a short
        wait is what makes a due frame arrive fast, and an idle consumer polling every 10 ms
        cost 52 ms of its own CPU and 52 ms of the broker's per second (every 100 ms: 6 and
        12-16; 2-core VM). Reaches into aiokafka's fetcher, whose requests read the wait
        each time; an aiokafka without it keeps the wait it started with."""
        wait = self.settings.fetch_wait_due_ms
        if wait is None:
            return
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = wait if due else self.settings.fetch_max_wait_ms

    async def committed(self) -> dict[int, int | None]:
        """Committed offsets of the group, by partition."""
        with map_kafka_errors("committed"):
            return {tp.partition: await self._consumer.committed(tp) for tp in self._tps}


