"""Named arrays <-> one flat float32 vector, described by a layout (numpy only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from hierfl.errors import ShapeMismatchError
from hierfl.types import Float32Vector
from hierfl.wire.frames import LayoutEntry

__all__ = ["flatten", "layout_size", "unflatten"]


def layout_size(layout: Sequence[LayoutEntry]) -> int:
    """Total number of values described by ``layout``."""
    return sum(e.size for e in layout)


def flatten(named: Mapping[str, npt.ArrayLike]) -> tuple[Float32Vector, tuple[LayoutEntry, ...]]:
    """Concatenate named arrays (in mapping order) into one float32 vector.

    Args:
        named: tensor name -> array.

    Returns:
        The flat vector and its layout.
    """
    layout = []
    parts = []
    for name, arr in named.items():
        a = np.asarray(arr, dtype=np.float32)
        layout.append(LayoutEntry(name, tuple(int(d) for d in a.shape)))
        parts.append(a.reshape(-1))
    vec = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return vec.astype(np.float32, copy=False), tuple(layout)


def unflatten(vec: Float32Vector, layout: Sequence[LayoutEntry]) -> dict[str, Float32Vector]:
    """Split a flat vector back into named arrays (views of ``vec``).

    Raises:
        ShapeMismatchError: if the vector's length does not match the layout.
    """
    if vec.ndim != 1 or vec.size != layout_size(layout):
        raise ShapeMismatchError(
            f"vector of {vec.size} values does not match a layout of {layout_size(layout)}"
        )
    out = {}
    pos = 0
    for e in layout:
        out[e.name] = vec[pos : pos + e.size].reshape(e.shape)
        pos += e.size
    return out
