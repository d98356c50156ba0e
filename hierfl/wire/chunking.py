"""Split frames into chunks under a broker's message limit, and reassemble them.

Stock Apache Kafka refuses records over ``message.max.bytes`` (about 1 MB). Every frame
hierfl puts on Kafka travels as one or more chunks, each a record of its own, all with
the same key so they land on one partition in order. MQTT brokers have a packet limit too
(AWS IoT Core: 128 KB); there only frames over ``MqttSettings.max_packet_bytes`` are split,
and chunks may arrive out of order, twice, or interleaved with other senders' chunks.
Chunk layout (little-endian)::

    offset 0   4 bytes   magic b"HFLC"
    offset 4   u8        chunk format version (1)
    offset 5   3 bytes   reserved, 0
    offset 8   16 bytes  frame id (random; the same in every chunk of one frame)
    offset 24  u32       chunk index, 0-based
    offset 28  u32       chunk count (>= 1)
    offset 32  u32       total frame length in bytes
    offset 36  u32       CRC-32 of this chunk's data
    offset 40  ...       data

The :class:`Reassembler` (Kafka: in-order chunks) is bounded: at most ``max_pending``
frames in flight and ``max_frame_bytes`` per frame; the oldest partial frame is evicted
(and counted) first. The :class:`ChunkCollector` (MQTT) accepts chunks in any order, keyed
by the topic they came on, within a byte budget, a frame budget and a timeout.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from hierfl.errors import ChunkError, FrameTooLargeError, IncompleteFrameError

__all__ = ["CHUNK_HEADER_SIZE", "CHUNK_MAGIC", "DEFAULT_CHUNK_BYTES", "MIN_CHUNK_DATA", "Chunk",
           "ChunkCollector", "Completed", "Reassembler", "parse_chunk", "split_frame"]

CHUNK_MAGIC = b"HFLC"
CHUNK_VERSION = 1
_HDR = struct.Struct("<4sB3s16sIIII")
CHUNK_HEADER_SIZE = _HDR.size  # 40
# Kafka's default message.max.bytes is 1048588 incl. record overhead; stay well under it.
DEFAULT_CHUNK_BYTES = 900_000
# A ChunkCollector refuses frames cut into smaller pieces (every chunk but the last carries
# at least this much), so a frame of ``total`` bytes has at most ``total / 1024 + 1`` chunks.
MIN_CHUNK_DATA = 1024


@dataclass(frozen=True, slots=True)
class Chunk:
    """A parsed chunk header and its data."""

    frame_id: bytes
    index: int
    count: int
    total: int
    data: bytes


def split_frame(frame: bytes, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[bytes]:
    """Split encoded frame bytes into chunk records of at most ``chunk_bytes`` each.

    Args:
        frame: the encoded frame.
        chunk_bytes: largest record produced, header included.

    Returns:
        The chunk records, in order.

    Raises:
        ValueError: if ``chunk_bytes`` leaves no room for data.
    """
    room = chunk_bytes - CHUNK_HEADER_SIZE
    if room <= 0:
        raise ValueError(f"chunk_bytes must exceed the {CHUNK_HEADER_SIZE}-byte header")
    frame_id = os.urandom(16)
    count = max(1, -(-len(frame) // room))
    out = []
    for i in range(count):
        data = frame[i * room : (i + 1) * room]
        hdr = _HDR.pack(CHUNK_MAGIC, CHUNK_VERSION, b"\0\0\0", frame_id, i, count, len(frame),
                        zlib.crc32(data))
        out.append(hdr + data)
    return out


def parse_chunk(record: bytes, *, max_frame_bytes: int) -> Chunk:
    """Parse and check one chunk record.

    Args:
        record: the record value (untrusted).
        max_frame_bytes: largest whole frame accepted.

    Returns:
        The chunk.

    Raises:
        ChunkError: on a bad magic, version, header field or checksum.
        FrameTooLargeError: if the declared frame length exceeds ``max_frame_bytes``.
    """
    if not isinstance(record, bytes) or len(record) < CHUNK_HEADER_SIZE:
        raise ChunkError("record shorter than a chunk header")
    magic, version, reserved, frame_id, index, count, total, crc = _HDR.unpack_from(record)
    if magic != CHUNK_MAGIC or version != CHUNK_VERSION or reserved != b"\0\0\0":
        raise ChunkError(f"not a v1 hierfl chunk (magic {magic!r}, version {version})")
    if total > max_frame_bytes:
        raise FrameTooLargeError(f"chunked frame of {total} bytes exceeds {max_frame_bytes}")
    if count < 1 or index >= count:
        raise ChunkError(f"chunk index {index} / count {count} inconsistent")
    data = record[CHUNK_HEADER_SIZE:]
    if zlib.crc32(data) != crc:
        raise ChunkError(f"chunk {index}/{count} fails its CRC")
    return Chunk(frame_id, index, count, total, data)


@dataclass(slots=True)
class _Partial:
    count: int
    total: int
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    first_offset: int | None = None


class Reassembler:
    """Rebuild frames from in-order chunks, with bounded memory.

    Args:
        max_frame_bytes: largest frame accepted.
        max_pending: most partial frames held at once; the oldest is evicted beyond it.

    Usage::

        r = Reassembler(max_frame_bytes=64 << 20)
        for record in records:
            frame = r.feed(record)      # None until the last chunk of a frame arrives
    """

    def __init__(self, *, max_frame_bytes: int, max_pending: int = 32) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_pending = max_pending
        self._pending: OrderedDict[bytes, _Partial] = OrderedDict()
        # ids of recently completed frames: a repeated chunk of one (a producer retry) is
        # ignored instead of starting a partial frame that would never complete
        self._done: OrderedDict[bytes, None] = OrderedDict()
        self.evicted = 0
        self.duplicates = 0

    def feed(self, record: bytes, offset: int | None = None) -> bytes | None:
        """Add a chunk; return the whole frame when this chunk completes it.

        Args:
            record: chunk record bytes (untrusted).
            offset: the record's log offset, remembered for :meth:`min_pending_offset`.

        Returns:
            The reassembled frame, or None while it is incomplete.

        Raises:
            ChunkError: for a malformed chunk or one out of order (its frame is dropped).
            FrameTooLargeError: for a frame over the limit.
        """
        c = parse_chunk(record, max_frame_bytes=self.max_frame_bytes)
        if c.count == 1:
            if len(c.data) != c.total:
                raise ChunkError(f"single chunk holds {len(c.data)} of {c.total} bytes")
            return c.data
        if c.frame_id in self._done:
            self.duplicates += 1
            return None
        p = self._pending.get(c.frame_id)
        if p is not None and c.index < len(p.parts) and p.parts[c.index] == c.data:
            self.duplicates += 1  # the same chunk again (a retried send): nothing new
            return None
        if p is None:
            if c.index != 0:
                raise ChunkError(f"chunk {c.index}/{c.count} arrived without its predecessors")
            p = _Partial(c.count, c.total, first_offset=offset)
            self._pending[c.frame_id] = p
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
                self.evicted += 1
        elif c.index != len(p.parts) or c.count != p.count or c.total != p.total:
            del self._pending[c.frame_id]
            raise ChunkError(f"chunk {c.index}/{c.count} out of order or inconsistent")
        p.parts.append(c.data)
        p.size += len(c.data)
        if p.size > p.total:
            del self._pending[c.frame_id]
            raise ChunkError("chunks exceed their declared total length")
        if len(p.parts) < p.count:
            return None
        del self._pending[c.frame_id]
        if p.size != p.total:
            raise ChunkError(f"chunks hold {p.size} of {p.total} declared bytes")
        self._done[c.frame_id] = None
        while len(self._done) > 4 * self.max_pending:
            self._done.popitem(last=False)
        return b"".join(p.parts)

    def pending_offsets(self) -> list[int]:
        """Log offsets of the first chunks of the frames still incomplete."""
        return [p.first_offset for p in self._pending.values() if p.first_offset is not None]

    def min_pending_offset(self) -> int | None:
        """Smallest log offset of a frame still incomplete (commit no further than this)."""
        offs = [p.first_offset for p in self._pending.values() if p.first_offset is not None]
        return min(offs) if offs else None

    def __len__(self) -> int:
        return len(self._pending)


class Completed(NamedTuple):
    """A frame rebuilt by :class:`ChunkCollector`: its bytes and whether every chunk came
    from the broker's retained store (delivered because of a new subscription)."""

    frame: bytes
    retained: bool


@dataclass(slots=True, eq=False)
class _Open:
    key: str
    frame_id: bytes
    count: int
    total: int
    touched: float
    retained: bool
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    room: int | None = None  # data bytes of every chunk but the last, once known


class ChunkCollector:
    """Rebuild frames from chunks that may arrive in any order, duplicated or interleaved.

    Partial frames are keyed by ``(key, frame id)``; the key is where the chunks came from
    (the MQTT topic), so one sender cannot add chunks to another sender's frame. Memory is
    bounded: at most ``max_frames`` partial frames (``max_frames_per_key`` per key) and
    ``max_bytes`` of chunk data in all. When a budget is exceeded the oldest partial frame of
    the key holding the most (frames, or bytes) is dropped, so one flooding sender evicts its
    own frames first. A partial frame that receives no chunk for ``timeout_s`` expires (its
    sender died mid-frame). Every dropped partial frame is counted and passed to ``on_drop``
    as an :class:`~hierfl.errors.IncompleteFrameError`. Several publishers may share a key;
    beyond ``max_frames_per_key`` concurrent frames on one key the oldest is dropped.

    Args:
        max_frame_bytes: largest frame accepted (its declared total is checked first; never
            more than ``max_bytes``).
        max_bytes: budget of buffered chunk data over all partial frames.
        max_frames: most partial frames held at once.
        max_frames_per_key: most partial frames held for one key.
        timeout_s: a partial frame idle this long is dropped.
        min_chunk_data: smallest data of a chunk that is not the last of its frame.
        on_drop: called with ``(key, error)`` for each partial frame dropped.
        clock: monotonic time source, seconds.

    Usage::

        c = ChunkCollector(max_frame_bytes=64 << 20)
        done = c.feed("hierfl/f/g/update/e", record)   # None until the frame is complete
    """

    def __init__(
        self,
        *,
        max_frame_bytes: int,
        max_bytes: int = 256 << 20,
        max_frames: int = 1024,
        max_frames_per_key: int = 4,
        timeout_s: float = 60.0,
        min_chunk_data: int = MIN_CHUNK_DATA,
        on_drop: Callable[[str, IncompleteFrameError], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(max_frame_bytes, max_bytes, max_frames, max_frames_per_key, min_chunk_data) < 1:
            raise ValueError("ChunkCollector limits must be positive")
        self.max_frame_bytes = min(max_frame_bytes, max_bytes)  # a larger one could not fit
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self.max_frames_per_key = max_frames_per_key
        self.timeout_s = timeout_s
        self.min_chunk_data = min_chunk_data
        self._on_drop = on_drop
        self._clock = clock
        # every partial frame, least recently touched first (expiry scans from the front)
        self._open: OrderedDict[tuple[str, bytes], _Open] = OrderedDict()
        # per key: its partial frames, oldest started first; and their buffered bytes
        self._by_key: dict[str, dict[bytes, _Open]] = {}
        self._key_bytes: dict[str, int] = {}
        # recently completed frames: late duplicates (QoS 1 redelivery) are ignored
        self._done: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self.buffered_bytes = 0
        self.counts: dict[str, int] = dict.fromkeys(
            ("completed", "duplicates", "expired", "evicted"), 0
        )

    def __len__(self) -> int:
        return len(self._open)

    def feed(
        self, key: str, record: bytes, *, retained: bool = False, index: int | None = None
    ) -> Completed | None:
        """Add one chunk; return the whole frame when this chunk completes it.

        Args:
            key: where the chunk came from (its topic, without any chunk sub-topic).
            record: the chunk (untrusted).
            retained: whether the broker delivered it from its retained store.
            index: the chunk index its sub-topic names, when it came on one; it must match.

        Returns:
            The frame, or None while it is incomplete (or for a duplicate chunk).

        Raises:
            ChunkError: for a malformed chunk, or one inconsistent with its frame's other
                chunks (the chunk is refused; the partial frame is kept).
            FrameTooLargeError: for a declared total over ``max_frame_bytes``.
        """
        now = self._clock()
        self._expire(now)
        c = parse_chunk(record, max_frame_bytes=self.max_frame_bytes)
        if index is not None and c.index != index:
            raise ChunkError(f"chunk {c.index}/{c.count} on the sub-topic of chunk {index}")
        if c.count == 1 and len(c.data) != c.total:
            raise ChunkError(f"single chunk holds {len(c.data)} of {c.total} bytes")
        if c.total <= (c.count - 1) * self.min_chunk_data:
            raise ChunkError(f"{c.count} chunks for {c.total} bytes: chunks are too small")
        ident = (key, c.frame_id)
        if ident in self._done:
            self.counts["duplicates"] += 1
            return None
        if c.count == 1:
            self._finish(ident)
            return Completed(c.data, retained)
        o = self._open.get(ident)
        if o is None:
            self._check_size(c, None)
            o = self._start(key, c, now, retained)
        else:
            if c.count != o.count or c.total != o.total:
                raise ChunkError(
                    f"chunk {c.index} says {c.count} chunks / {c.total} bytes, its frame "
                    f"{o.count} / {o.total}"
                )
            if c.index in o.parts:
                if o.parts[c.index] != c.data:
                    raise ChunkError(f"chunk {c.index}/{c.count} repeated with other data")
                self.counts["duplicates"] += 1
                return None
            self._check_size(c, o)
            o.touched = now
            o.retained = o.retained and retained
            self._open.move_to_end(ident)
        o.room = o.room if c.index == c.count - 1 else len(c.data)
        if o.room is None:  # the last chunk came first: it fixes the size of the others
            o.room = (c.total - len(c.data)) // (c.count - 1)
        o.parts[c.index] = c.data
        o.size += len(c.data)
        self.buffered_bytes += len(c.data)
        self._key_bytes[key] += len(c.data)
        self._enforce_budgets(key)
        if ident not in self._open or len(o.parts) < o.count:
            return None
        self._remove(o)
        frame = b"".join(o.parts[i] for i in range(o.count))
        self._finish(ident)
        return Completed(frame, o.retained)

    def _finish(self, ident: tuple[str, bytes]) -> None:
        self._done[ident] = None
        while len(self._done) > 4 * self.max_frames:
            self._done.popitem(last=False)
        self.counts["completed"] += 1

    def _check_size(self, c: Chunk, o: _Open | None) -> None:
        """Every chunk but the last carries ``room`` bytes, the last the rest (1..room)."""
        n, got = c.count, len(c.data)
        if c.index < n - 1:
            room = got
            ok = o is None or o.room is None or got == o.room
        else:
            rest = c.total - got
            room = rest // (n - 1) if rest > 0 and rest % (n - 1) == 0 else 0
            ok = room >= got and (o is None or o.room is None or room == o.room)
        if not (ok and room >= self.min_chunk_data and (n - 1) * room < c.total <= n * room):
            raise ChunkError(f"chunk {c.index}/{n} of {got} bytes does not fit a {c.total}-byte "
                             "frame cut into equal chunks")

    def _start(self, key: str, c: Chunk, now: float, retained: bool) -> _Open:
        o = _Open(key, c.frame_id, c.count, c.total, now, retained)
        self._open[(key, c.frame_id)] = o
        self._by_key.setdefault(key, {})[c.frame_id] = o
        self._key_bytes.setdefault(key, 0)
        return o

    def _enforce_budgets(self, key: str) -> None:
        frames = self._by_key[key]
        while len(frames) > self.max_frames_per_key:
            self._drop(next(iter(frames.values())), "evicted",
                       f"more than {self.max_frames_per_key} partial frames from one sender")
        while len(self._open) > self.max_frames:
            key = max(self._by_key, key=lambda k: len(self._by_key[k]))
            self._drop(next(iter(self._by_key[key].values())), "evicted",
                       f"more than {self.max_frames} partial frames in all")
        while self.buffered_bytes > self.max_bytes:
            key = max(self._key_bytes, key=self._key_bytes.__getitem__)
            self._drop(next(iter(self._by_key[key].values())), "evicted",
                       f"more than {self.max_bytes} bytes of partial frames buffered")

    def _expire(self, now: float) -> None:
        while self._open:
            o = next(iter(self._open.values()))
            if now - o.touched < self.timeout_s:
                return
            self._drop(o, "expired", f"no chunk for {self.timeout_s:g} s")

    def _remove(self, o: _Open) -> None:
        del self._open[(o.key, o.frame_id)]
        frames = self._by_key[o.key]
        del frames[o.frame_id]
        self.buffered_bytes -= o.size
        self._key_bytes[o.key] -= o.size
        if not frames:
            del self._by_key[o.key]
            del self._key_bytes[o.key]

    def _drop(self, o: _Open, why: str, detail: str) -> None:
        self._remove(o)
        self.counts[why] += 1
        if self._on_drop is not None:
            self._on_drop(o.key, IncompleteFrameError(
                f"chunked frame {o.frame_id.hex()[:8]} from {o.key!r} dropped ({why}: {detail}) "
                f"with {len(o.parts)} of {o.count} chunks"
            ))
