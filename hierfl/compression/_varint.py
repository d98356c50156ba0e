"""Vectorised LEB128 varints for uint32 arrays (internal): 7 bits per byte, low bits first.

Used for top-k index gaps: a gap below 128 costs one byte, below 16384 two.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from hierfl.errors import BadTensorError

__all__ = ["MAX_VARINT_BYTES", "decode_uvarints", "encode_uvarints", "max_gaps_len"]

#: Bytes of the longest uint32 varint.
MAX_VARINT_BYTES: Final = 5

_U32 = npt.NDArray[np.uint32]
_MORE: Final = 0x80  # continuation bit
_TOP_BYTE_MAX: Final = 0x0F  # the fifth byte of a uint32 carries only its top 4 bits
_LIMITS: Final = np.array([1 << (7 * j) for j in range(1, MAX_VARINT_BYTES)], dtype=np.uint64)


def max_gaps_len(k: int, size: int) -> int:
    """Return the most bytes ``k`` varint gaps of sorted distinct indices below ``size`` take.

    The gaps sum to at most ``size - k``, and a gap takes a ``j + 1``-th byte only when it is
    at least ``128 ** j``: at most ``(size - k) // 128 ** j`` of them can, and at most ``k``.
    """
    room = max(0, size - k)
    return k + sum(min(k, room // 128**j) for j in range(1, MAX_VARINT_BYTES))


def encode_uvarints(values: _U32) -> bytes:
    """Encode uint32 values as concatenated LEB128 varints."""
    v = values.astype(np.uint64)
    n_bytes = 1 + (v[:, None] >= _LIMITS[None, :]).sum(axis=1)
    starts = np.cumsum(n_bytes) - n_bytes
    out = np.empty(int(n_bytes.sum()), dtype=np.uint8)
    for j in range(MAX_VARINT_BYTES):
        has = n_bytes > j
        if not has.any():
            break
        byte = (v[has] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (n_bytes[has] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has] + j] = byte | more
    return out.tobytes()


def decode_uvarints(data: bytes, count: int, *, field: str) -> _U32:
    """Decode exactly ``count`` canonical LEB128 uint32 varints that fill ``data``.

    Args:
        data: the bytes; the caller has bounded ``len(data)`` to ``[count, 5 * count]``.
        count: how many numbers ``data`` must hold.
        field: field name for error messages.

    Raises:
        BadTensorError: if the count differs, the last number is unterminated, a number is
            longer than 5 bytes, overflows uint32, or is not minimally encoded.
    """
    b = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(b < _MORE)
    if ends.size != count or (b.size and (ends.size == 0 or ends[-1] != b.size - 1)):
        raise BadTensorError(f"field {field!r}: expected {count} terminated varints")
    if count == 0:
        return np.empty(0, dtype=np.uint32)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > MAX_VARINT_BYTES:
        raise BadTensorError(f"field {field!r}: varint longer than {MAX_VARINT_BYTES} bytes")
    # Canonical form: a multi-byte number never ends in a zero byte (that would be padding).
    if ((lengths > 1) & (b[ends] == 0)).any():
        raise BadTensorError(f"field {field!r}: varint not minimally encoded")
    if ((lengths == MAX_VARINT_BYTES) & (b[ends] > _TOP_BYTE_MAX)).any():
        raise BadTensorError(f"field {field!r}: varint overflows uint32")
    shift = (np.arange(b.size) - np.repeat(starts, lengths)) * 7
    parts = (b & 0x7F).astype(np.uint64) << shift.astype(np.uint64)
    return np.add.reduceat(parts, starts).astype(np.uint32)
