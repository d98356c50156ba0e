"""Model handling: flat vectors <-> named arrays, versioned checkpoints, the torch adapter."""

from hierfl.model.flatten import flatten, layout_size, unflatten
from hierfl.model.store import Checkpoint, ModelStore, load_weights_file

__all__ = ["Checkpoint", "ModelStore", "flatten", "layout_size", "load_weights_file", "unflatten"]
