"""Uncompressed float32 codec: the lossless baseline every other codec is measured against."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from hierfl.compression._fields import (
    CODEC_KEY,
    F32_LE,
    check_finite_output,
    check_input,
    dense_data,
)
from hierfl.types import Float32Vector

__all__ = ["RawCodec"]


@dataclass(frozen=True, slots=True)
class RawCodec:
    """Send the vector as float32 little-endian bytes.

    Fields: ``{"codec": "raw", "data": bytes}`` with ``len(data) == 4 * size``.

    Example:
        >>> fields = RawCodec().encode(np.ones(3, np.float32))
        >>> RawCodec().decode(fields, 3)
        array([1., 1., 1.], dtype=float32)
    """

    name: ClassVar[str] = "raw"
    lossless: ClassVar[bool] = True

    def encode(self, vec: Float32Vector, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Encode ``vec`` (``rng`` is unused).

        Raises:
            CompressionError: if ``vec`` is not a finite 1-D float32 vector.
        """
        del rng
        x = check_input(vec)
        return {CODEC_KEY: self.name, "data": x.astype(F32_LE, copy=False).tobytes()}

    def decode(self, fields: Mapping[str, Any], size: int) -> Float32Vector:
        """Decode ``fields`` into a new float32 vector of length ``size``.

        Raises:
            BadTensorError: if ``data`` is not ``4 * size`` bytes or holds NaN/Inf.
        """
        # SAFETY: length checked before interpreting; explicit little-endian dtype; the copy
        # gives the caller a writable array that does not alias the frame's bytes.
        _, data = dense_data(fields, self.name, size, F32_LE.itemsize)
        out = np.frombuffer(data, dtype=F32_LE).astype(np.float32)
        check_finite_output(out, "data")
        return out
