"""Shared plumbing of the sparse codecs (top-k, rand-k) and their value sub-codec (internal).

A sparse codec picks k coordinates and hands the k picked values to a dense codec (raw,
shuffle, fp16 or int8). The dense codec's fields travel in the same flat dict under the
``values.`` prefix, without its own ``codec`` entry: the composite's name ("topk+int8")
already names it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from hierfl.compression._fields import CODEC_KEY, VALUES_PREFIX, split_prefixed
from hierfl.errors import BadTensorError, ConfigError
from hierfl.types import Float32Vector

if TYPE_CHECKING:
    from hierfl.compression.base import Codec

__all__ = [
    "check_fraction",
    "check_sparse_k",
    "check_values_codec",
    "decode_values",
    "encode_values",
    "name_of",
    "sparse_k",
]


def check_fraction(owner: str, fraction: object) -> None:
    """Raise unless ``fraction`` is a real number in (0, 1].

    Raises:
        ConfigError: naming ``owner`` and the bad value.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ConfigError(f"{owner} fraction must be a number, got {fraction!r}")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"{owner} fraction must be in (0, 1], got {fraction!r}")


def sparse_k(fraction: float, size: int) -> int:
    """Return ``ceil(fraction * size)`` computed exactly on the fraction as written.

    ``math.ceil(0.07 * 100)`` is 8 in floating point; the decimal the user wrote (the float's
    shortest repr) gives 7.
    """
    return min(size, math.ceil(Fraction(repr(float(fraction))) * size))


def check_sparse_k(k: int, size: int) -> None:
    """Refuse a count of kept coordinates no encoder writes: ``k = ceil(fraction * size)``
    with ``fraction > 0`` is at least 1 for any ``size >= 1``.

    A sparse frame costs the receiver ``4 * size`` bytes of output whatever ``k`` is; ``k = 0``
    would let a frame of a few bytes claim a vector of any declared size.

    Raises:
        BadTensorError: if ``k`` is 0 while ``size`` is not.
    """
    if size and not k:
        raise BadTensorError(f"field 'k': 0 kept of {size} values (an encoder keeps >= 1)")


def check_values_codec(owner: str, values: object) -> None:
    """Raise unless ``values`` is a dense codec (one that is not itself sparse or composed).

    Raises:
        ConfigError: if ``values`` is not a codec or is sparse.
    """
    name = getattr(values, "name", None)
    if not isinstance(name, str) or not hasattr(values, "encode") or not hasattr(values, "decode"):
        raise ConfigError(f"{owner} values= must be a codec, got {values!r}")
    if getattr(values, "sparse", False) or "+" in name:
        raise ConfigError(
            f"{owner} values= must be a dense codec (raw, shuffle, fp16, int8), got {name!r}")


def name_of(base: str, values: Codec) -> str:
    """Return the composite name: ``base`` alone for raw values, else ``base+values``."""
    return base if values.name == "raw" else f"{base}+{values.name}"


def encode_values(
    values_codec: Codec, picked: Float32Vector, rng: np.random.Generator | None
) -> dict[str, Any]:
    """Encode the picked values and return their fields under the ``values.`` prefix."""
    sub = values_codec.encode(picked, rng)
    return {VALUES_PREFIX + key: value for key, value in sub.items() if key != CODEC_KEY}


def decode_values(values_codec: Codec, fields: Mapping[str, Any], k: int) -> Float32Vector:
    """Decode the ``values.``-prefixed fields into k values (the sub-codec validates them).

    Raises:
        BadTensorError: if the value fields are malformed.
    """
    try:
        return values_codec.decode(split_prefixed(fields, VALUES_PREFIX, values_codec.name), k)
    except BadTensorError as exc:
        # Sub-codec messages name the bare key ('q'); say where it lives on the wire.
        raise BadTensorError(f"{VALUES_PREFIX}* ({values_codec.name} values): {exc}") from exc
