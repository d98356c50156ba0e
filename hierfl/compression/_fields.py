"""Strict, bounded readers for codec field dicts, and encoder input checks (internal).

Every reader raises :class:`~hierfl.errors.BadTensorError` naming the offending field, so a
decoder fed attacker-controlled input fails with one error type and never allocates more than
the receiver's expected vector size allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hierfl.errors import BadTensorError, CompressionError, NonFiniteTensorError
from hierfl.types import Float32Vector

__all__ = [
    "CODEC_KEY",
    "F32_LE",
    "MAX_VECTOR_SIZE",
    "VALUES_PREFIX",
    "check_codec_name",
    "check_finite_output",
    "check_input",
    "check_keys",
    "check_size",
    "dense_data",
    "get_bytes",
    "get_int",
    "short_repr",
    "split_prefixed",
]

#: Key holding the codec name in every field dict.
CODEC_KEY: Final = "codec"
#: Prefix of the value sub-codec's fields inside a sparse codec's dict ("values.data", ...).
VALUES_PREFIX: Final = "values."
#: Largest vector a codec handles: indices travel as uint32 and a few buffers are int64.
MAX_VECTOR_SIZE: Final = 2**31 - 1
#: Longest untrusted value echoed in an error message.
_SHOW_MAX: Final = 40
#: Explicit little-endian dtypes: the wire is little-endian whatever the host is.
F32_LE: Final = np.dtype("<f4")


def check_size(size: object) -> int:
    """Return the receiver's expected vector length, or raise if the caller passed nonsense.

    ``size`` comes from the receiver's model spec, not from the wire, so a bad value is a
    programming error rather than malformed input.

    Raises:
        CompressionError: if ``size`` is not an int in ``[0, MAX_VECTOR_SIZE]``.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise CompressionError(f"size must be an int, got {type(size).__name__}")
    if not 0 <= int(size) <= MAX_VECTOR_SIZE:
        raise CompressionError(f"size must be in [0, {MAX_VECTOR_SIZE}], got {size}")
    return int(size)


def check_input(vec: object) -> Float32Vector:
    """Return ``vec`` as a C-contiguous 1-D float32 array after checking it is finite.

    Raises:
        CompressionError: if ``vec`` is not a 1-D float32 ndarray, is too long, or holds
            NaN or Inf.
    """
    if not isinstance(vec, np.ndarray):
        raise CompressionError(f"expected a numpy float32 vector, got {type(vec).__name__}")
    if vec.dtype != np.float32 or vec.ndim != 1:
        raise CompressionError(
            f"expected a 1-D float32 vector, got dtype={vec.dtype} shape={vec.shape}"
        )
    if vec.size > MAX_VECTOR_SIZE:
        raise CompressionError(f"vector of {vec.size} values exceeds {MAX_VECTOR_SIZE}")
    out: Float32Vector = np.ascontiguousarray(vec)
    # min/max propagate NaN and expose Inf without allocating a boolean mask.
    if out.size and not (np.isfinite(out.min()) and np.isfinite(out.max())):
        raise CompressionError("cannot encode a vector holding NaN or Inf")
    return out


def check_codec_name(fields: object, expected: str) -> Mapping[str, Any]:
    """Check that ``fields`` is a mapping whose ``codec`` entry equals ``expected``.

    Raises:
        BadTensorError: if ``fields`` is not a mapping or names another codec.
    """
    if not isinstance(fields, Mapping):
        raise BadTensorError(f"codec fields must be a mapping, got {type(fields).__name__}")
    name = fields.get(CODEC_KEY)
    if name != expected:
        raise BadTensorError(f"field 'codec': expected {expected!r}, got {short_repr(name)}")
    return fields


def check_keys(fields: Mapping[str, Any], required: frozenset[str], *, prefix: str = "") -> None:
    """Require exactly ``required`` (plus ``codec``) among the keys not starting with ``prefix``.

    Keys starting with ``prefix`` (when non-empty) belong to a sub-codec that checks its own.

    Raises:
        BadTensorError: naming the first missing or unexpected field.
    """
    for key in required:
        if key not in fields:
            raise BadTensorError(f"field {key!r}: missing")
    for key in fields:
        if key == CODEC_KEY or key in required:
            continue
        if prefix and isinstance(key, str) and key.startswith(prefix):
            continue
        raise BadTensorError(f"field {short_repr(key)}: unexpected")


def get_int(fields: Mapping[str, Any], key: str, *, lo: int, hi: int) -> int:
    """Return ``fields[key]`` as an int in ``[lo, hi]`` (bool is not an int here).

    Raises:
        BadTensorError: if the field is missing, not an int, or out of range.
    """
    value = fields.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadTensorError(f"field {key!r}: expected int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise BadTensorError(f"field {key!r}: {value} outside [{lo}, {hi}]")
    return value


def get_bytes(fields: Mapping[str, Any], key: str, *, lo: int, hi: int | None = None) -> bytes:
    """Return ``fields[key]`` as bytes whose length lies in ``[lo, hi]`` (``hi=None``: exactly lo).

    The length is checked before anything is decoded from the bytes, so callers can size
    their buffers from it safely.

    Raises:
        BadTensorError: if the field is missing, not bytes, or of the wrong length.
    """
    value = fields.get(key)
    if not isinstance(value, bytes):
        raise BadTensorError(f"field {key!r}: expected bytes, got {type(value).__name__}")
    hi = lo if hi is None else hi
    if not lo <= len(value) <= hi:
        want = str(lo) if lo == hi else f"[{lo}, {hi}]"
        raise BadTensorError(f"field {key!r}: {len(value)} bytes, expected {want}")
    return value


def check_finite_output(values: npt.NDArray[np.floating[Any]], key: str) -> None:
    """Reject decoded values that hold NaN or Inf.

    Raises:
        NonFiniteTensorError: naming ``key`` if any value is not finite (the same error, and
            rejection reason ``wire.non_finite``, as a raw vector gets).
    """
    if values.size and not (np.isfinite(values.min()) and np.isfinite(values.max())):
        raise NonFiniteTensorError(f"field {key!r}: holds NaN or Inf")


def split_prefixed(fields: Mapping[str, Any], prefix: str, codec: str) -> dict[str, Any]:
    """Return the sub-codec's fields: the keys under ``prefix``, stripped, plus its name.

    Raises:
        BadTensorError: if a stripped key would shadow the sub-codec's ``codec`` entry.
    """
    sub: dict[str, Any] = {CODEC_KEY: codec}
    for key, value in fields.items():
        if isinstance(key, str) and key.startswith(prefix):
            inner = key[len(prefix) :]
            if inner == CODEC_KEY:
                raise BadTensorError(f"field {key!r}: unexpected")
            sub[inner] = value
    return sub


def short_repr(value: object) -> str:
    """Return a bounded repr of an untrusted value for an error message."""
    text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


_DATA_KEYS: Final = frozenset({"data"})


def dense_data(fields: Mapping[str, Any], name: str, size: object, bytes_per_value: int
               ) -> tuple[int, bytes]:
    """Check a dense codec's fields, ``{"codec": name, "data": bytes}``, and return
    ``(size, data)`` with ``len(data) == bytes_per_value * size`` (checked before anything is
    interpreted or allocated).

    Raises:
        BadTensorError: for another codec name, another key set, or data of the wrong type
            or length.
        CompressionError: if ``size`` itself is invalid (a caller bug).
    """
    n = check_size(size)
    check_codec_name(fields, name)
    check_keys(fields, _DATA_KEYS)
    return n, get_bytes(fields, "data", lo=bytes_per_value * n)
