"""The in-memory Kafka cluster, producer and consumer (semantics: hierfl.transport.memory)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from hierfl.config import KafkaSettings
from hierfl.errors import (
    BrokerRefusedError,
    BrokerUnavailableError,
    DisconnectedError,
    HierflError,
    PublishTimeoutError,
)
from hierfl.transport.base import ConsumerStart, Inbound
from hierfl.transport.faults import Envelope, Fault, FaultHook
from hierfl.transport.kafka import KafkaInbound
from hierfl.wire.chunking import Reassembler, split_frame

__all__ = ["KafkaRecord", "MemoryKafkaBroker", "MemoryKafkaConsumer", "MemoryKafkaProducer"]


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """One record of a partition's log."""

    offset: int
    key: bytes | None
    value: bytes


class MemoryKafkaBroker:
    """A Kafka cluster in memory (semantics in the module docstring).

    Args:
        partitions: partitions of every topic created.
        auto_create_topics: create a topic on first use; False refuses unknown topics with
            BrokerRefusedError, as the real transports do with ``create_topics = false``.
        faults: decides each produced record's fate; None writes everything once.
    """

    def __init__(self, *, partitions: int = 1, auto_create_topics: bool = True,
                 faults: FaultHook | None = None) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.partitions = partitions
        self.auto_create_topics = auto_create_topics
        self.faults = faults
        self.running = True
        self.epoch = 0  # bumped by stop(): connections of an older epoch are dead
        self._logs: dict[str, list[list[KafkaRecord]]] = {}
        self._offsets: dict[tuple[str, str, int], int] = {}  # (group, topic, partition)
        self._changed = asyncio.Event()
        self._cut: set[str] = set()  # client ids on the far side of a partition
        self.stats: dict[str, int] = dict.fromkeys(
            ("records", "dropped_fault", "duplicated", "acks_lost", "restarts"), 0)

    def create_topic(self, name: str) -> None:
        """Create ``name`` with ``partitions`` empty logs (nothing if it exists)."""
        self._logs.setdefault(name, [[] for _ in range(self.partitions)])

    @property
    def topics(self) -> list[str]:
        """Topic names, sorted."""
        return sorted(self._logs)

    def log(self, topic: str, partition: int = 0) -> list[KafkaRecord]:
        """A copy of one partition's log."""
        return list(self._logs[topic][partition])

    def stop(self, *, persist: bool) -> None:
        """Stop the cluster: every producer and consumer is disconnected.

        Args:
            persist: keep topics, logs and committed offsets; False loses them.
        """
        self.running = False
        self.epoch += 1
        if not persist:
            self._logs.clear()
            self._offsets.clear()
        self._notify()

    def start(self) -> None:
        """Start a stopped cluster again (clients must reconnect)."""
        self.running = True

    def restart(self, *, persist: bool) -> None:
        """:meth:`stop` then :meth:`start`."""
        self.stop(persist=persist)
        self.start()
        self.stats["restarts"] += 1

    def partition(self, client_ids: Iterable[str]) -> None:
        """Cut these clients off (a network partition): their connections fail on their next
        call or iteration and they cannot connect until :meth:`heal`."""
        self._cut.update(client_ids)
        self._notify()

    def heal(self, client_ids: Iterable[str] | None = None) -> None:
        """End the partition of these clients (of every client, with None)."""
        if client_ids is None:
            self._cut.clear()
        else:
            self._cut.difference_update(client_ids)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _connect(self, client_id: str | None = None) -> int:
        if not self.running:
            raise BrokerUnavailableError("Kafka connect (memory) failed: the cluster is stopped")
        if client_id in self._cut:
            raise BrokerUnavailableError("Kafka connect (memory) failed: unreachable (partition)")
        return self.epoch

    def _check(self, epoch: int, action: str, client_id: str | None = None) -> None:
        if epoch != self.epoch or not self.running or client_id in self._cut:
            raise DisconnectedError(f"Kafka {action} (memory) failed: connection lost")

    def _topic(self, name: str) -> list[list[KafkaRecord]]:
        if name not in self._logs:
            if not self.auto_create_topics:
                raise BrokerRefusedError(
                    f"Kafka topic {name!r} missing (memory) and topics are not auto-created")
            self.create_topic(name)
        return self._logs[name]

    def _append(self, sender: str, topic: str, key: bytes | None, value: bytes) -> None:
        logs = self._topic(topic)
        part = logs[zlib.crc32(key) % len(logs)] if key is not None else logs[0]
        fate = Fault.DELIVER
        if self.faults is not None:
            fate = self.faults(Envelope("kafka", topic, value, sender))
        if fate is Fault.DROP:
            self.stats["dropped_fault"] += 1
            raise PublishTimeoutError(f"Kafka send (memory) to {topic!r} timed out (dropped)")
        for _ in range(2 if fate is Fault.DUPLICATE else 1):
            part.append(KafkaRecord(len(part), key, value))
            self.stats["records"] += 1
        self.stats["duplicated"] += fate is Fault.DUPLICATE
        self._notify()
        if fate is Fault.DELAY:
            self.stats["acks_lost"] += 1
            raise PublishTimeoutError(f"Kafka send (memory) to {topic!r} timed out (ack lost)")


class MemoryKafkaProducer:
    """A producer on a :class:`MemoryKafkaBroker`, shaped like :class:`KafkaProducerTransport`.

    Args:
        broker: the cluster.
        settings: ``chunk_bytes`` is used; defaults to ``KafkaSettings()``.
        client_id: the producer's client id (what a fault hook sees as sender).
    """

    def __init__(self, broker: MemoryKafkaBroker, settings: KafkaSettings | None = None, *,
                 client_id: str) -> None:
        self.broker = broker
        self.settings = settings or KafkaSettings()
        self.client_id = client_id
        self.bytes_sent = 0
        self._epoch: int | None = None

    async def __aenter__(self) -> Self:
        self._epoch = self.broker._connect(self.client_id)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._epoch = None

    async def send_frame(self, topic: str, *, key: bytes, frame: bytes) -> int:
        """Append one frame as chunk records sharing ``key``; return the chunk count.

        Raises:
            DisconnectedError: when not connected (also after a cluster restart).
            PublishTimeoutError: when a fault drops a chunk or loses its acknowledgement.
        """
        chunks = split_frame(frame, chunk_bytes=self.settings.chunk_bytes)
        for c in chunks:
            if self._epoch is None:
                raise DisconnectedError("Kafka send (memory) failed: not connected")
            self.broker._check(self._epoch, "send", self.client_id)
            self.broker._append(self.client_id, topic, key, c)
            await asyncio.sleep(0)  # a real send yields to the loop: let others interleave
        self.bytes_sent += sum(len(c) for c in chunks)
        return len(chunks)


class MemoryKafkaConsumer:
    """A consumer on a :class:`MemoryKafkaBroker`, shaped like :class:`KafkaConsumerTransport`.

    Args:
        broker: the cluster.
        topic: the topic to read (every partition is assigned).
        settings: unused but for parity with the real consumer.
        client_id: the consumer's client id.
        group_id: the group whose committed offsets set the start and :meth:`commit` advances.
        start: ``"committed"``, ``"earliest"`` or ``"latest_frame"``.
        max_frame_bytes: largest frame reassembled.
    """

    def __init__(
        self,
        broker: MemoryKafkaBroker,
        topic: str,
        *,
        settings: KafkaSettings | None = None,
        client_id: str,
        group_id: str | None = None,
        start: ConsumerStart | str = "committed",
        max_frame_bytes: int = 64 << 20,
    ) -> None:
        if start not in ("committed", "earliest", "latest_frame"):
            raise ValueError(f"unknown start {start!r}")
        self.broker = broker
        self.topic = topic
        self.settings = settings or KafkaSettings()
        self.client_id = client_id
        self.group_id = group_id
        self.start = start
        self._max_frame_bytes = max_frame_bytes
        self._reassembler = Reassembler(max_frame_bytes=max_frame_bytes)
        self._epoch: int | None = None
        self._pos: list[int] = []
        self._backlog: list[KafkaInbound] = []

    async def __aenter__(self) -> Self:
        epoch = self.broker._connect(self.client_id)
        logs = self.broker._topic(self.topic)
        self._reassembler = Reassembler(max_frame_bytes=self._max_frame_bytes)
        self._backlog = []
        if self.start == "earliest" or (self.start == "committed" and self.group_id is None):
            self._pos = [0] * len(logs)
        elif self.start == "committed":
            # an offset past the log's end (a commit from before the log was lost) resets to
            # the beginning, as auto_offset_reset="earliest" does in the real consumer
            self._pos = [o if (o := self.broker._offsets.get(
                (self.group_id or "", self.topic, p), 0)) <= len(log) else 0
                for p, log in enumerate(logs)]
        else:
            self._pos = [self._find_latest_frame(p, log) for p, log in enumerate(logs)]
        self._epoch = epoch
        return self

    def _find_latest_frame(self, partition: int, log: list[KafkaRecord]) -> int:
        """The position after partition's newest complete frame, kept as a backlog item
        (a frame still being written resumes at its first chunk, as in the real consumer)."""
        scratch = Reassembler(max_frame_bytes=self._max_frame_bytes)
        newest: KafkaInbound | None = None
        last_complete = -1
        for r in log:
            try:
                frame = scratch.feed(r.value, r.offset)
            except HierflError:
                continue
            if frame is not None:
                last_complete = r.offset
                newest = self._inbound(partition, r, frame)
        if newest is not None:
            self._backlog = [newest]  # the newest over all partitions wins, as in the real one
        open_from = [o for o in scratch.pending_offsets() if o > last_complete]
        return min(open_from) if open_from else len(log)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._epoch = None

    def _live(self, action: str) -> int:
        if self._epoch is None:
            raise DisconnectedError(f"Kafka {action} (memory) failed: not connected")
        self.broker._check(self._epoch, action, self.client_id)
        return self._epoch

    def _inbound(self, partition: int, record: KafkaRecord, frame: bytes = b"",
                 error: HierflError | None = None) -> Inbound:
        return Inbound(self.topic, frame, key=record.key, partition=partition,
                       offset=record.offset, error=error, acker=self.commit)

    async def messages(self) -> AsyncIterator[KafkaInbound]:
        """Yield reassembled frames (or typed errors for bad records) in log order.

        Raises:
            DisconnectedError: when the cluster stops or restarts.
        """
        while self._backlog:
            yield self._backlog.pop(0)
        while True:
            self._live("receive")
            changed = self.broker._changed
            logs = self.broker._topic(self.topic)
            progressed = False
            for p, log in enumerate(logs):
                while self._pos[p] < len(log):
                    r = log[self._pos[p]]
                    self._pos[p] += 1
                    progressed = True
                    try:
                        frame = self._reassembler.feed(r.value, r.offset)
                    except HierflError as exc:
                        yield self._inbound(p, r, error=exc)
                    else:
                        if frame is not None:
                            yield self._inbound(p, r, frame)
                    self._live("receive")
            if not progressed:
                await changed.wait()

    async def commit(self, inbound: KafkaInbound) -> None:
        """Commit up to and including ``inbound`` (never past an incomplete chunked frame).

        Raises:
            DisconnectedError: when not connected.
        """
        if self.group_id is None:
            return
        if inbound.offset is None or inbound.partition is None:
            raise ValueError("not a Kafka delivery: nothing to commit")
        self._live("commit")
        offset = inbound.offset + 1
        pending = self._reassembler.min_pending_offset()
        if pending is not None:
            offset = min(offset, pending)
        self.broker._offsets[(self.group_id, inbound.topic, inbound.partition)] = offset

    def expect(self, due: bool) -> None:
        """A no-op: the in-memory broker delivers at once, it is never polled."""

    async def committed(self) -> dict[int, int | None]:
        """Committed offsets of the group, by partition."""
        self._live("committed")
        return {p: (self.broker._offsets.get((self.group_id, self.topic, p))
                    if self.group_id is not None else None)
                for p in range(len(self._pos))}
