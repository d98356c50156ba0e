"""Random-k sparsification: send k uniformly chosen coordinates and the seed that chose them.

Each coordinate is kept with probability k/d, so scaling the kept values by d/k makes the codec
unbiased [Stich et al., 2018; Wangni et al., 2018]. With error feedback, send them unscaled
(``scaled=False``): the residual then carries the rest, and the d/k scaling would only add
variance.

Paper: arxiv.org/abs/1809.07599

The indices are not sent: encoder and decoder regenerate them from ``seed`` with
:func:`randk_indices`, which uses only the raw output of ``np.random.PCG64`` seeded through
``SeedSequence``. numpy guarantees that bit stream across versions (NEP 19), unlike the
``Generator`` distribution methods, so an edge and a fog on different numpy versions agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final

import numpy as np

from hierfl.compression._fields import (
    CODEC_KEY,
    VALUES_PREFIX,
    check_codec_name,
    check_input,
    check_keys,
    check_size,
    get_int,
)
from hierfl.compression._sparse import (
    check_fraction,
    check_sparse_k,
    check_values_codec,
    decode_values,
    encode_values,
    name_of,
    sparse_k,
)
from hierfl.compression.raw import RawCodec
from hierfl.errors import CompressionError, ConfigError
from hierfl.types import Float32Vector

if TYPE_CHECKING:
    from hierfl.compression.base import Codec

__all__ = ["MAX_SEED", "RandKCodec", "randk_indices"]

#: Frame seeds lie in [0, MAX_SEED].
MAX_SEED: Final = 2**63 - 1

_KEYS = frozenset({"k", "seed"})
_U32_MASK: Final = np.uint64(0xFFFF_FFFF)
_SHIFT32: Final = np.uint64(32)


def randk_indices(seed: int, k: int, size: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Return ``k`` distinct indices in ``[0, size)``, sorted, uniformly chosen from ``seed``.

    The chosen set is the first ``m = min(k, size - k)`` distinct values of a stream of
    uniform draws (the complement when ``k > size / 2``), each draw unbiased by Lemire's
    multiply-and-reject on the upper 32 bits of a PCG64 output word. Batching only changes how
    far the stream is read, never the result. Expected work is O(k) for small fractions and
    at most about 0.7 * size draws.

    Args:
        seed: 0 <= seed <= MAX_SEED.
        k: 0 <= k <= size.
        size: 0 <= size < 2**32.
    """
    m = min(k, size - k)
    chosen = _first_distinct(seed, m, size)
    if m == k:
        chosen.sort()
        return chosen
    mask = np.ones(size, dtype=bool)
    mask[chosen] = False
    return np.flatnonzero(mask).astype(np.int64, copy=False)


def _first_distinct(seed: int, m: int, size: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Return the first ``m`` distinct uniform draws from ``[0, size)``, in stream order."""
    if m == 0:
        return np.empty(0, dtype=np.int64)
    bits = np.random.PCG64(seed)
    threshold = np.uint64((2**32 - size) % size)
    seen = np.zeros(size, dtype=bool)
    picked: list[np.ndarray[Any, np.dtype[np.int64]]] = []
    have = 0
    while have < m:
        need = m - have
        free = size - have
        # Expected draws to collect `need` new values: free-size coupon collector, + slack.
        expected = size * math.log(free / (free - need)) if need < free else size * 20
        words = bits.random_raw(int(expected * 1.1) + 64) >> _SHIFT32
        prod = words * np.uint64(size)
        draws = (prod[(prod & _U32_MASK) >= threshold] >> _SHIFT32).astype(np.int64)
        # First occurrence of each value in this batch, in stream order, not seen before.
        _, first = np.unique(draws, return_index=True)
        first.sort()
        fresh = draws[first]
        fresh = fresh[~seen[fresh]][:need]
        seen[fresh] = True
        picked.append(fresh)
        have += fresh.size
    return np.concatenate(picked)


@dataclass(frozen=True, slots=True)
class RandKCodec:
    """Keep ``k = ceil(fraction * d)`` coordinates chosen uniformly from a per-frame seed.

    Fields: ``{"codec": "randk" | "randk+<dense>", "k": int, "seed": int, "values.*": ...}``,
    where ``0 <= seed <= 2**63 - 1`` and the values (multiplied by d/k when ``scaled``) are
    those at :func:`randk_indices` ``(seed, k, d)``, in ascending index order, encoded by
    ``values`` under the ``values.`` prefix as for top-k.

    Args:
        fraction: share of coordinates kept, 0 < fraction <= 1.
        seed: seeds this codec's own generator of frame seeds, for a reproducible sequence of
            frames; ``None`` uses OS entropy. An ``rng`` passed to :meth:`encode` wins.
        scaled: multiply kept values by d/k (unbiased); ``False`` for use with error feedback.
        values: dense codec for the kept values.

    Raises:
        ConfigError: if a parameter is out of range.
    """

    fraction: float = 0.01
    seed: int | None = None
    scaled: bool = True
    values: Codec = field(default_factory=RawCodec)
    _seeds: np.random.Generator = field(init=False, repr=False, compare=False)

    sparse: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_fraction("randk", self.fraction)
        check_values_codec("randk", self.values)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ConfigError(f"randk seed must be an int or None, got {self.seed!r}")
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"randk seed must be >= 0, got {self.seed}")
        if not isinstance(self.scaled, bool):
            raise ConfigError(f"randk scaled must be a bool, got {self.scaled!r}")
        # The frozen dataclass still needs one piece of private state: the frame-seed stream.
        object.__setattr__(self, "_seeds", np.random.default_rng(self.seed))

    @property
    def name(self) -> str:
        """``"randk"``, or ``"randk+<values codec>"`` when values are not raw."""
        return name_of("randk", self.values)

    @property
    def lossless(self) -> bool:
        """False: only k of d values survive."""
        return False

    def k_for(self, size: int) -> int:
        """Return how many coordinates a vector of ``size`` keeps: ``ceil(fraction * size)``."""
        return sparse_k(self.fraction, size)

    def encode(self, vec: Float32Vector, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Encode k random entries of ``vec``.

        Args:
            vec: 1-D finite float32 vector; not modified.
            rng: draws the frame seed and the values codec's noise; ``None`` uses the
                codec's own generator (seeded by ``seed``), so a seeded codec is reproducible.

        Raises:
            CompressionError: if ``vec`` is not a finite 1-D float32 vector, or scaling by
                d/k overflows float32.
        """
        return self._encode(vec, rng)[0]

    def encode_decoded(
        self, vec: Float32Vector, rng: np.random.Generator | None = None
    ) -> tuple[dict[str, Any], Float32Vector]:
        """Encode ``vec`` and return what :meth:`decode` makes of the fields, in one pass.

        Error feedback needs both; decoding would draw the k indices a second time (the
        costly part of this codec), while here the encoder's own indices are reused.

        Returns:
            ``(fields, decoded)``, ``decoded`` equal to ``decode(fields, vec.size)``.

        Raises:
            CompressionError: as :meth:`encode`.
        """
        fields, idx = self._encode(vec, rng)
        out = np.zeros(np.size(vec), dtype=np.float32)
        out[idx] = decode_values(self.values, fields, idx.size)
        return fields, out

    def _encode(
        self, vec: Float32Vector, rng: np.random.Generator | None
    ) -> tuple[dict[str, Any], np.ndarray[Any, np.dtype[np.int64]]]:
        x = check_input(vec)
        source = self._seeds if rng is None else rng
        seed = int(source.integers(0, MAX_SEED, endpoint=True))
        k = self.k_for(x.size)
        idx = randk_indices(seed, k, x.size)
        picked = x[idx]
        if self.scaled and k:
            picked *= np.float32(x.size / k)
            if not np.isfinite(picked).all():
                raise CompressionError("randk: scaling by d/k overflowed float32")
        fields = {
            CODEC_KEY: self.name,
            "k": k,
            "seed": seed,
            **encode_values(self.values, picked, source),
        }
        return fields, idx

    def decode(self, fields: Mapping[str, Any], size: int) -> Float32Vector:
        """Decode ``fields`` into a new float32 vector of length ``size``, zeros elsewhere.

        Raises:
            BadTensorError: if ``k`` exceeds ``size`` (or is 0 while ``size`` is not),
                ``seed`` is out of range, or the value fields are malformed.
        """
        size = check_size(size)
        check_codec_name(fields, self.name)
        check_keys(fields, _KEYS, prefix=VALUES_PREFIX)
        # SAFETY: k <= size bounds the index regeneration below by the trusted size; the seed
        # only seeds PCG64 and is never used as a size or an index.
        k = get_int(fields, "k", lo=0, hi=size)
        check_sparse_k(k, size)
        seed = get_int(fields, "seed", lo=0, hi=MAX_SEED)
        # Decode (and so validate) the values before spending O(k) regenerating indices.
        values = decode_values(self.values, fields, k)
        out = np.zeros(size, dtype=np.float32)
        out[randk_indices(seed, k, size)] = values
        return out
