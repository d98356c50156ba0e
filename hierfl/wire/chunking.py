"""Split frames into chunks under a broker's record limit, and reassemble them in order.

Stock Apache Kafka refuses records over ``message.max.bytes`` (about 1 MB). Every frame
hierfl puts on Kafka travels as one or more chunks, each a record of its own, all with
the same key so they land on one partition in order. Chunk layout (little-endian)::

    offset 0   4 bytes   magic b"HFLC"
    offset 4   u8        chunk format version (1)
    offset 5   3 bytes   reserved, 0
    offset 8   16 bytes  frame id (random; the same in every chunk of one frame)
    offset 24  u32       chunk index, 0-based
    offset 28  u32       chunk count (>= 1)
    offset 32  u32       total frame length in bytes
    offset 36  u32       CRC-32 of this chunk's data
    offset 40  ...       data

The :class:`Reassembler` is bounded: at most ``max_pending`` frames in flight and
``max_frame_bytes`` per frame; the oldest partial frame is evicted (and counted) first.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

from hierfl.errors import ChunkError, FrameTooLargeError

__all__ = ["CHUNK_HEADER_SIZE", "DEFAULT_CHUNK_BYTES", "Chunk", "Reassembler", "parse_chunk",
           "split_frame"]

CHUNK_MAGIC = b"HFLC"
CHUNK_VERSION = 1
_HDR = struct.Struct("<4sB3s16sIIII")
CHUNK_HEADER_SIZE = _HDR.size  # 40
# Kafka's default message.max.bytes is 1048588 incl. record overhead; stay well under it.
DEFAULT_CHUNK_BYTES = 900_000


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
        self.evicted = 0

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
        p = self._pending.get(c.frame_id)
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
        return b"".join(p.parts)

    def min_pending_offset(self) -> int | None:
        """Smallest log offset of a frame still incomplete (commit no further than this)."""
        offs = [p.first_offset for p in self._pending.values() if p.first_offset is not None]
        return min(offs) if offs else None

    def __len__(self) -> int:
        return len(self._pending)
