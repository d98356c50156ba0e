"""Per-chunk absmax int8 quantisation with stochastic rounding.

Each chunk of ``chunk`` consecutive values is scaled by its largest magnitude ``a`` so that it
spans [-127, 127], then rounded up or down at random with probability equal to the distance,
which makes the codec unbiased: E[decode(encode(x))] = x. This is the stochastic rounding of
QSGD [Alistarh et al., 2017] with an absmax (infinity-norm) scale and 8-bit levels.

Paper: arxiv.org/abs/1610.02132
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt

from hierfl.compression._fields import (
    CODEC_KEY,
    F32_LE,
    check_codec_name,
    check_input,
    check_keys,
    check_size,
    get_bytes,
    get_int,
)
from hierfl.errors import BadTensorError, ConfigError
from hierfl.types import Float32Vector

__all__ = ["DEFAULT_CHUNK", "LEVELS", "MAX_CHUNK", "Int8Codec"]

#: Values per scale by default: 4 bytes of scale per 4096 bytes of payload (0.1 % overhead).
DEFAULT_CHUNK: Final = 4096
#: Largest chunk accepted on either side.
MAX_CHUNK: Final = 1 << 24
#: Quantisation levels each side of zero; -128 is never produced and rejected on decode.
LEVELS: Final = 127

_I8: Final = np.dtype("i1")
_KEYS = frozenset({"chunk", "absmax", "q"})


@dataclass(frozen=True, slots=True)
class Int8Codec:
    """Quantise to int8 with one float32 absmax scale per chunk and stochastic rounding.

    Fields: ``{"codec": "int8", "chunk": int, "absmax": bytes, "q": bytes}`` where ``absmax``
    is ``ceil(size / chunk)`` little-endian float32 chunk maxima (finite, >= 0) and ``q`` is
    ``size`` int8 levels in [-127, 127]. A value decodes to ``q * absmax / 127``, so the
    per-element error is below one step, ``absmax / 127``, of its chunk.

    Args:
        chunk: values per scale, 1 <= chunk <= 2**24.
        stochastic: stochastic rounding (default; unbiased, ``E[decode] = x``). ``False``
            rounds to nearest: biased, half the worst-case error and no noise, the better
            pairing with error feedback, which carries the rounding error into the next
            update anyway. Receivers need not know which was used.

    Raises:
        ConfigError: if ``chunk`` is out of range.
    """

    chunk: int = DEFAULT_CHUNK
    stochastic: bool = True

    name: ClassVar[str] = "int8"
    lossless: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int):
            raise ConfigError(f"int8 chunk must be an int, got {self.chunk!r}")
        if not 1 <= self.chunk <= MAX_CHUNK:
            raise ConfigError(f"int8 chunk must be in [1, {MAX_CHUNK}], got {self.chunk}")
        if not isinstance(self.stochastic, bool):
            raise ConfigError(f"int8 stochastic must be true or false, got {self.stochastic!r}")

    def encode(self, vec: Float32Vector, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Quantise ``vec``.

        Args:
            vec: 1-D finite float32 vector; not modified.
            rng: source of the rounding noise; pass a seeded generator for reproducible
                output, ``None`` for fresh OS entropy.

        Raises:
            CompressionError: if ``vec`` is not a finite 1-D float32 vector.
        """
        x = check_input(vec)
        absmax = _chunk_absmax(x, self.chunk)
        y = _scaled(x, absmax, self.chunk)
        if self.stochastic:
            rng = np.random.default_rng() if rng is None else rng
            # Stochastic rounding: q = floor(y) + [u < frac(y)], so E[q] = y. Written this way
            # rather than floor(y + u) because y + u can round up to 128 in float32.
            q = np.floor(y)
            y -= q
            q += rng.random(x.size, dtype=np.float32) < y
        else:
            q = np.rint(y)  # |y| <= 127, so |q| <= 127
        return {
            CODEC_KEY: self.name,
            "chunk": self.chunk,
            "absmax": absmax.astype(F32_LE, copy=False).tobytes(),
            "q": q.astype(_I8).tobytes(),
        }

    def decode(self, fields: Mapping[str, Any], size: int) -> Float32Vector:
        """Decode ``fields`` into a new float32 vector of length ``size``.

        Raises:
            BadTensorError: if ``chunk`` is out of range, ``absmax`` or ``q`` has the wrong
                length, a scale is negative or not finite, or a level is -128.
        """
        size = check_size(size)
        check_codec_name(fields, self.name)
        check_keys(fields, _KEYS)
        chunk = get_int(fields, "chunk", lo=1, hi=MAX_CHUNK)
        n_chunks = -(-size // chunk)
        # SAFETY: both lengths are checked against the trusted size before interpreting.
        absmax_bytes = get_bytes(fields, "absmax", lo=F32_LE.itemsize * n_chunks)
        q_bytes = get_bytes(fields, "q", lo=size)
        absmax = np.frombuffer(absmax_bytes, dtype=F32_LE).astype(np.float32)
        if n_chunks and not (np.isfinite(absmax).all() and absmax.min() >= 0):
            raise BadTensorError("field 'absmax': scales must be finite and >= 0")
        q = np.frombuffer(q_bytes, dtype=_I8)
        if size and q.min() < -LEVELS:
            raise BadTensorError(f"field 'q': level below -{LEVELS}")
        # q / 127 first, in [-1, 1]: q * absmax could overflow to Inf for absmax near float32
        # max, and absmax / 127 loses the scale for subnormal absmax. |out| <= absmax, finite.
        out = q.astype(np.float32)
        out /= np.float32(LEVELS)
        _per_chunk(out, absmax, chunk, np.multiply)
        return out


def _chunk_absmax(x: Float32Vector, chunk: int) -> Float32Vector:
    """Return max |x| over each chunk (the last may be short)."""
    n_full, tail = divmod(x.size, chunk)
    absmax = np.empty(n_full + (tail > 0), dtype=np.float32)
    if n_full:
        blocks = x[: n_full * chunk].reshape(n_full, chunk)
        # max and -min avoid materialising |x|.
        np.maximum(blocks.max(axis=1), -blocks.min(axis=1), out=absmax[:n_full])
    if tail:
        rest = x[n_full * chunk :]
        absmax[n_full] = max(rest.max(), -rest.min())
    return absmax


def _scaled(x: Float32Vector, absmax: Float32Vector, chunk: int) -> Float32Vector:
    """Return 127 * x / absmax per chunk, in [-127, 127]; all-zero chunks map to 0."""
    # Divide by absmax itself rather than multiplying by 127 / absmax, which overflows to Inf
    # for subnormal absmax; |x| <= absmax keeps the quotient in [-1, 1] exactly.
    y = x.copy()
    _per_chunk(y, np.where(absmax > 0, absmax, np.float32(1)), chunk, np.divide)
    y *= np.float32(LEVELS)
    return y


def _per_chunk(
    values: Float32Vector,
    per_chunk: Float32Vector,
    chunk: int,
    op: np.ufunc,
) -> None:
    """Apply ``values[i] = op(values[i], per_chunk[i // chunk])`` in place."""
    n_full, tail = divmod(values.size, chunk)
    if n_full:
        blocks: npt.NDArray[np.float32] = values[: n_full * chunk].reshape(n_full, chunk)
        op(blocks, per_chunk[:n_full, None], out=blocks)
    if tail:
        rest = values[n_full * chunk :]
        op(rest, per_chunk[n_full], out=rest)
