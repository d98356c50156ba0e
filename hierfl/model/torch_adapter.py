"""torch modules <-> flat float32 vectors (edge only: the one library module importing torch)."""

from __future__ import annotations

import numpy as np
import torch

from hierfl.errors import ShapeMismatchError
from hierfl.types import Float32Vector
from hierfl.wire.frames import LayoutEntry

__all__ = ["model_layout", "model_to_vector", "vector_to_model"]


def _float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Parameters and float buffers (e.g. BatchNorm running stats); integer buffers such as
    # num_batches_tracked stay local to the device.
    return {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}


def model_layout(model: torch.nn.Module) -> tuple[LayoutEntry, ...]:
    """The layout (names and shapes) of a module's float state."""
    return tuple(LayoutEntry(k, tuple(v.shape)) for k, v in _float_state(model).items())


def model_to_vector(model: torch.nn.Module) -> Float32Vector:
    """Copy a module's float state into one float32 vector (state_dict order)."""
    state = list(_float_state(model).values())
    out = np.empty(sum(v.numel() for v in state), np.float32)
    flat = torch.from_numpy(out)  # shares out's memory: one copy per tensor, no concatenation
    pos = 0
    with torch.no_grad():
        for v in state:
            n = v.numel()
            flat[pos : pos + n].copy_(v.detach().reshape(-1))
            pos += n
    return out


def vector_to_model(model: torch.nn.Module, vec: Float32Vector) -> None:
    """Load a flat vector into a module's float state, in place.

    Raises:
        ShapeMismatchError: if the vector's length does not match the module.
    """
    state = _float_state(model)
    total = sum(v.numel() for v in state.values())
    if vec.ndim != 1 or vec.size != total:
        raise ShapeMismatchError(f"vector of {vec.size} values; the model has {total}")
    t = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float32))
    pos = 0
    with torch.no_grad():
        for v in state.values():
            n = v.numel()
            v.copy_(t[pos : pos + n].view_as(v).to(v.dtype))
            pos += n
