"""Fixed-point encoding of clipped float updates into the ring Z_{2^32}.

An update is clipped to an L2 norm bound ``clip_norm`` (so every coordinate satisfies
``|x_i| <= clip_norm``), scaled by ``scale`` (a power of two) and rounded to the nearest
integer, then reduced modulo 2^32. Masks are added modulo 2^32 as well, so after unmasking the
server holds ``sum_u round(x_u * scale) mod 2^32``. The sum is exact, not merely close, because
``max_summands * (clip_norm * scale + 0.5) < 2^31``: the true integer sum lies in
``(-2^31, 2^31)``, so reading the modular sum as a two's-complement int32 gives it back, with no
wrap-around. Dividing by the power-of-two scale is exact in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hierfl.secagg.errors import SecAggError, SecAggMessageError

__all__ = ["FixedPoint"]

_HALF_RING = 2**31


@dataclass(frozen=True, slots=True)
class FixedPoint:
    """Validated fixed-point parameters for one region.

    Args:
        clip_norm: L2 bound every update is clipped to before encoding (> 0).
        scale: multiplier before rounding; a power of two so decoding is exact.
        max_summands: the most updates that may be summed (the region's size).

    Raises:
        SecAggError: if the parameters could overflow the int32 range of the sum.
    """

    clip_norm: float
    scale: float
    max_summands: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise SecAggError(f"clip_norm must be finite and > 0, got {self.clip_norm}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise SecAggError(f"scale must be finite and > 0, got {self.scale}")
        if math.frexp(self.scale)[0] != 0.5:
            raise SecAggError(f"scale must be a power of two, got {self.scale}")
        if self.max_summands < 1:
            raise SecAggError(f"max_summands must be >= 1, got {self.max_summands}")
        if self.max_summands * (self.clip_norm * self.scale + 0.5) >= _HALF_RING:
            raise SecAggError(
                f"overflow: {self.max_summands} * ({self.clip_norm} * {self.scale} + 0.5) "
                f">= 2^31; lower the scale or the clip norm"
            )

    @classmethod
    def for_region(cls, max_summands: int, clip_norm: float) -> FixedPoint:
        """The largest power-of-two scale that cannot overflow for ``max_summands`` updates.

        Args:
            max_summands: the region's size n.
            clip_norm: the L2 bound.

        Returns:
            FixedPoint with ``scale = 2^floor(log2((2^31 / n - 0.5) / clip_norm))`` (one step
            lower when that equality would be reached).

        Raises:
            SecAggError: if no scale >= 2^-30 fits.
        """
        if max_summands < 1 or not (math.isfinite(clip_norm) and clip_norm > 0):
            raise SecAggError("max_summands must be >= 1 and clip_norm finite and > 0")
        exponent = math.floor(math.log2((_HALF_RING / max_summands - 0.5) / clip_norm))
        while exponent > -30:
            scale = 2.0**exponent
            if max_summands * (clip_norm * scale + 0.5) < _HALF_RING:
                return cls(clip_norm=clip_norm, scale=scale, max_summands=max_summands)
            exponent -= 1
        raise SecAggError(f"no fixed-point scale fits {max_summands} summands of norm {clip_norm}")

    @property
    def resolution(self) -> float:
        """The quantisation step, 1 / scale."""
        return 1.0 / self.scale

    def clip(self, update: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Scale ``update`` down to L2 norm ``clip_norm`` if it is longer; NaN/Inf refused.

        Raises:
            SecAggMessageError: if the update is not a finite 1-d vector.
        """
        x = np.asarray(update, dtype=np.float64)
        if x.ndim != 1:
            raise SecAggMessageError(f"update must be 1-d, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise SecAggMessageError("update holds NaN or Inf")
        norm = float(np.linalg.norm(x))
        if norm > self.clip_norm:
            x = x * (self.clip_norm / norm)
        return x

    def quantize(self, update: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Clip then round to integers: ``rint(clip(x) * scale)`` as int64 (not reduced)."""
        q = np.rint(self.clip(update) * self.scale).astype(np.int64)
        # Rounding after clipping can only add 0.5; the bound is the one __post_init__ checked.
        bound = math.floor(self.clip_norm * self.scale + 0.5)
        np.clip(q, -bound, bound, out=q)
        return q

    def encode(self, update: npt.ArrayLike) -> npt.NDArray[np.uint32]:
        """Clip, quantise and reduce modulo 2^32."""
        return self.quantize(update).astype(np.uint32)

    def decode_sum(self, total: npt.NDArray[np.uint32]) -> npt.NDArray[np.float64]:
        """Read a modular sum of at most ``max_summands`` encodings back as floats.

        Args:
            total: uint32 vector, ``sum_u encode(x_u) mod 2^32``.

        Returns:
            float64 vector ``sum_u rint(clip(x_u) * scale) / scale``, exactly.
        """
        return self.decode_integers(total).astype(np.float64) / self.scale

    @staticmethod
    def decode_integers(total: npt.NDArray[np.uint32]) -> npt.NDArray[np.int64]:
        """The modular sum as signed integers (two's complement int32), widened to int64."""
        return np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.int64)
