"""Half-precision codec: 2 bytes per value, relative error at most 2**-11 in the normal range.

Values beyond the float16 range (|x| > 65504) are clipped to +-65504 before the cast rather than
silently becoming Inf; values below 2**-24 in magnitude flush to zero, and those between
2**-24 and 2**-14 keep a float16 subnormal's absolute precision of 2**-25. Updates that large
or small are rare for deltas; use ``int8`` (per-chunk scaling) or ``raw`` when range matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import numpy as np

from hierfl.compression._fields import (
    CODEC_KEY,
    check_finite_output,
    check_input,
    dense_data,
)
from hierfl.types import Float32Vector

__all__ = ["FP16_MAX", "Fp16Codec"]

#: Largest finite float16; encoder input is clipped to +-FP16_MAX.
FP16_MAX: Final = float(np.finfo(np.float16).max)

_F16_LE: Final = np.dtype("<f2")


@dataclass(frozen=True, slots=True)
class Fp16Codec:
    """Send the vector as IEEE float16 little-endian bytes, clipping to +-65504.

    Fields: ``{"codec": "fp16", "data": bytes}`` with ``len(data) == 2 * size``.
    """

    name: ClassVar[str] = "fp16"
    lossless: ClassVar[bool] = False

    def encode(self, vec: Float32Vector, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Encode ``vec`` (``rng`` is unused); out-of-range values are clipped, not made Inf.

        Raises:
            CompressionError: if ``vec`` is not a finite 1-D float32 vector.
        """
        del rng
        x = check_input(vec)
        # Clip first: astype(float16) turns |x| >= 65520 into Inf.
        clipped = np.clip(x, -FP16_MAX, FP16_MAX)
        return {CODEC_KEY: self.name, "data": clipped.astype(_F16_LE).tobytes()}

    def decode(self, fields: Mapping[str, Any], size: int) -> Float32Vector:
        """Decode ``fields`` into a new float32 vector of length ``size``.

        Raises:
            BadTensorError: if ``data`` is not ``2 * size`` bytes or holds NaN/Inf.
        """
        # SAFETY: length checked before interpreting; explicit little-endian dtype.
        _, data = dense_data(fields, self.name, size, _F16_LE.itemsize)
        out = np.frombuffer(data, dtype=_F16_LE).astype(np.float32)
        check_finite_output(out, "data")  # on float32: numpy reduces float16 slowly
        return out
