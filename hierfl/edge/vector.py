"""Models that are plain float32 vectors: edges that train with numpy, not torch.

An :class:`~hierfl.edge.client.EdgeClient` accepts a task whose ``build_model`` returns a
:class:`VectorModel`: the fog's weights are written to ``model.weights`` and whatever the
task's ``train`` leaves there is the trained model. Nothing imports torch on that path, so a
device (or the deterministic simulator, ``hierfl simtest``) runs an edge without it.

Usage::

    class MeanTask:
        def build_model(self) -> VectorModel:
            return VectorModel(np.zeros(10, np.float32))

        def train(self, model: VectorModel, epochs: int) -> TrainResult:
            model.weights += 0.1 * (target - model.weights)
            return TrainResult(num_samples=32)
"""

from __future__ import annotations

import numpy as np

from hierfl.errors import ShapeMismatchError
from hierfl.types import Float32Vector

__all__ = ["VectorModel"]


class VectorModel:
    """A model whose parameters are one float32 vector.

    Args:
        weights: the initial parameters (copied, as float32).
    """

    def __init__(self, weights: Float32Vector) -> None:
        self.weights: Float32Vector = np.array(weights, dtype=np.float32).reshape(-1)

    def to_vector(self) -> Float32Vector:
        """A copy of the parameters."""
        return self.weights.copy()

    def load(self, vec: Float32Vector) -> None:
        """Replace the parameters with ``vec``.

        Raises:
            ShapeMismatchError: if ``vec`` has another length.
        """
        if vec.ndim != 1 or vec.size != self.weights.size:
            raise ShapeMismatchError(f"vector of {vec.size} values; the model has "
                                     f"{self.weights.size}")
        self.weights = np.array(vec, dtype=np.float32)
