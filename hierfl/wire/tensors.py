"""Flat vectors <-> wire fields: ``{"codec", "size", ...codec fields}``.

A vector on the wire is a msgpack map. ``codec`` names how it is encoded and ``size``
is the number of float32 values it decodes to. The ``raw`` codec carries the values as
little-endian float32 bytes in ``data``; other codecs (``fp16``, ``int8``, ``topk``, ...)
are defined in :mod:`hierfl.compression` and dispatched there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hierfl.errors import BadTensorError, NonFiniteTensorError, ShapeMismatchError
from hierfl.types import Float32Vector

__all__ = ["RAW", "decode_vector", "encode_vector"]

RAW = "raw"
_F32 = np.dtype("<f4")


def encode_vector(vec: Float32Vector, codec: Any = None) -> dict[str, Any]:
    """Encode a flat float32 vector as wire fields.

    Args:
        vec: 1-D array; converted to little-endian float32.
        codec: ``None`` for ``raw``, else a :class:`hierfl.compression.Codec`
            (or spec string) whose ``encode`` produces the fields.

    Returns:
        The msgpack-able field map, with ``codec`` and ``size`` set.

    Raises:
        BadTensorError: if ``vec`` is not 1-D.
    """
    arr = np.asarray(vec)
    if arr.ndim != 1:
        raise BadTensorError(f"vectors must be 1-D, got shape {arr.shape}")
    if codec is None or codec == RAW:
        return {"codec": RAW, "size": int(arr.size), "data": arr.astype(_F32, copy=False).tobytes()}
    from hierfl.compression import make_codec  # noqa: PLC0415 - optional layer

    c = make_codec(codec) if isinstance(codec, str | Mapping) else codec
    fields = dict(c.encode(arr.astype(np.float32, copy=False)))
    fields["codec"] = c.name
    fields["size"] = int(arr.size)
    return fields


def decode_vector(
    fields: Any, *, max_size: int, field: str = "vector", expected_size: int | None = None
) -> Float32Vector:
    """Decode wire fields into a new, writable float32 vector, strictly.

    Args:
        fields: the msgpack map as decoded (untrusted).
        max_size: largest ``size`` accepted; checked before anything is allocated.
        field: the frame field name, for error messages.
        expected_size: the length the receiver's model has (trusted), when it knows it; a
            vector declaring another size is refused before anything is allocated.

    Returns:
        The vector (native float32, finite).

    Raises:
        BadTensorError: on a missing/mistyped key, a size over ``max_size``, or a byte
            length that does not match ``size`` x 4.
        ShapeMismatchError: (reason ``validation.shape``, as the receiver's own shape check
            would say after decoding) if ``size`` differs from ``expected_size``.
        NonFiniteTensorError: if the vector holds NaN or Inf.
    """
    if not isinstance(fields, dict):
        raise BadTensorError(f"{field}: expected a map, got {type(fields).__name__}")
    codec = fields.get("codec")
    size = fields.get("size")
    if not isinstance(codec, str):
        raise BadTensorError(f"{field}.codec: expected a string")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadTensorError(f"{field}.size: expected a non-negative integer, got {size!r}")
    # SAFETY: both size checks come before any allocation: a 200-byte sparse frame may
    # declare 50 M values, and decoding it would allocate 200 MB of zeros.
    if expected_size is not None and size != expected_size:
        raise ShapeMismatchError(
            f"{field}.size: {size} values, the receiver's model has {expected_size}"
        )
    if size > max_size:
        raise BadTensorError(f"{field}.size: {size} exceeds the limit of {max_size} values")
    if codec == RAW:
        if set(fields) != {"codec", "size", "data"}:
            raise BadTensorError(f"{field}: a raw vector holds exactly codec, size and data")
        data = fields.get("data")
        if not isinstance(data, bytes):
            raise BadTensorError(f"{field}.data: expected bytes")
        if len(data) != size * _F32.itemsize:
            raise BadTensorError(
                f"{field}.data: {len(data)} bytes do not match size {size} x float32"
            )
        out = np.frombuffer(data, dtype=_F32).astype(np.float32)  # copy: writable, native
    else:
        from hierfl.compression import decode_vector as _decode  # noqa: PLC0415

        inner = {k: v for k, v in fields.items() if k != "size"}
        try:
            out = np.asarray(_decode(inner, size), dtype=np.float32)
        except BadTensorError as exc:
            raise BadTensorError(f"{field}: {exc}") from exc
        if out.shape != (size,):
            raise BadTensorError(f"{field}: codec {codec!r} decoded to shape {out.shape}")
    if not np.isfinite(out).all():
        raise NonFiniteTensorError(f"{field}: holds NaN or Inf")
    return out
