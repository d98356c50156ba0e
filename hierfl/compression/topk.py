"""Top-k sparsification: send only the k largest-magnitude coordinates.

Biased on its own; pair it with :class:`~hierfl.compression.error_feedback.ErrorFeedback`, which
makes it converge like uncompressed SGD [Stich et al., 2018, "Sparsified SGD with Memory"].

Paper: arxiv.org/abs/1809.07599
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hierfl.compression._fields import (
    CODEC_KEY,
    VALUES_PREFIX,
    check_codec_name,
    check_input,
    check_keys,
    check_size,
    get_bytes,
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
from hierfl.compression._varint import decode_uvarints, encode_uvarints, max_gaps_len
from hierfl.compression.raw import RawCodec
from hierfl.errors import BadTensorError
from hierfl.types import Float32Vector

if TYPE_CHECKING:
    from hierfl.compression.base import Codec

__all__ = ["TopKCodec", "topk_indices"]

_KEYS = frozenset({"k", "idx"})


def topk_indices(x: Float32Vector, k: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Return the sorted indices of the ``k`` largest ``|x|`` (ties broken arbitrarily).

    O(d) via ``np.argpartition`` plus O(k log k) to sort the survivors.
    """
    d = x.size
    if k >= d:
        return np.arange(d, dtype=np.int64)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    idx = np.argpartition(np.abs(x), d - k)[d - k :]
    idx.sort()
    return idx.astype(np.int64, copy=False)


@dataclass(frozen=True, slots=True)
class TopKCodec:
    """Keep the ``k = ceil(fraction * d)`` largest-magnitude entries.

    Fields: ``{"codec": "topk" | "topk+<dense>", "k": int, "idx": bytes, "values.*": ...}``.
    ``idx`` holds the k sorted indices as LEB128 varint gaps ``g[0] = i[0]``,
    ``g[j] = i[j] - i[j-1] - 1``, so duplicated or unsorted indices cannot even be written.
    The picked values are encoded by ``values`` (raw float32 by default) with its fields under
    the ``values.`` prefix, e.g. ``values.data`` for raw, ``values.chunk``/``values.absmax``/
    ``values.q`` for int8.

    Args:
        fraction: share of coordinates kept, 0 < fraction <= 1.
        values: dense codec for the kept values (``RawCodec``, ``Fp16Codec`` or ``Int8Codec``).

    Raises:
        ConfigError: if ``fraction`` is out of range or ``values`` is not a dense codec.
    """

    fraction: float = 0.01
    values: Codec = field(default_factory=RawCodec)

    sparse: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_fraction("topk", self.fraction)
        check_values_codec("topk", self.values)

    @property
    def name(self) -> str:
        """``"topk"``, or ``"topk+<values codec>"`` when values are not raw."""
        return name_of("topk", self.values)

    @property
    def lossless(self) -> bool:
        """False: only k of d values survive."""
        return False

    def k_for(self, size: int) -> int:
        """Return how many coordinates a vector of ``size`` keeps: ``ceil(fraction * size)``."""
        return sparse_k(self.fraction, size)

    def encode(self, vec: Float32Vector, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Encode the top-k entries of ``vec``.

        Args:
            vec: 1-D finite float32 vector; not modified.
            rng: passed to the values codec (int8 rounding noise).

        Raises:
            CompressionError: if ``vec`` is not a finite 1-D float32 vector.
        """
        x = check_input(vec)
        idx = topk_indices(x, self.k_for(x.size))
        gaps = np.diff(idx, prepend=-1) - 1
        return {
            CODEC_KEY: self.name,
            "k": int(idx.size),
            "idx": encode_uvarints(gaps.astype(np.uint32)),
            **encode_values(self.values, x[idx], rng),
        }

    def decode(self, fields: Mapping[str, Any], size: int) -> Float32Vector:
        """Decode ``fields`` into a new float32 vector of length ``size``, zeros elsewhere.

        Raises:
            BadTensorError: if ``k`` exceeds ``size`` (or is 0 while ``size`` is not),
                ``idx`` is malformed, longer than ``k`` gaps below ``size`` can take, or
                points past ``size``, or the value fields are malformed.
        """
        size = check_size(size)
        check_codec_name(fields, self.name)
        check_keys(fields, _KEYS, prefix=VALUES_PREFIX)
        k = get_int(fields, "k", lo=0, hi=size)
        check_sparse_k(k, size)
        # SAFETY: the stream's length is bounded by what k gaps of indices below size can
        # take (1..5 bytes each, fewer for a small size) before a byte of it is decoded.
        raw_idx = get_bytes(fields, "idx", lo=k, hi=max_gaps_len(k, size))
        gaps = decode_uvarints(raw_idx, k, field="idx")
        if k and int(gaps.max()) >= size:
            raise BadTensorError(f"field 'idx': index gap beyond size {size}")
        # Gaps < size <= 2**31 and k <= size keep the running sum far inside int64.
        idx = np.cumsum(gaps.astype(np.int64) + 1) - 1
        if k and idx[-1] >= size:
            raise BadTensorError(f"field 'idx': index {int(idx[-1])} out of range for size {size}")
        values = decode_values(self.values, fields, k)
        out = np.zeros(size, dtype=np.float32)
        out[idx] = values
        return out
