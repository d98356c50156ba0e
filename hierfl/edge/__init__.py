"""Edge tier: train locally, publish deltas to the fog.

:class:`EdgeClient` itself needs no torch: a task whose model is a
:class:`~hierfl.edge.vector.VectorModel` trains with numpy. The torch tasks
(:class:`SupervisedTask`, models that are ``torch.nn.Module``) need ``hierfl[edge]``; importing
them without torch raises :class:`~hierfl.errors.ConfigError` saying so.
"""

from __future__ import annotations

from typing import Any

from hierfl.edge.client import EdgeClient
from hierfl.edge.result import TrainResult
from hierfl.edge.vector import VectorModel

__all__ = ["EdgeClient", "EdgeTask", "SupervisedTask", "TrainResult", "VectorModel"]


def __getattr__(name: str) -> Any:
    if name in ("EdgeTask", "SupervisedTask"):
        try:
            from hierfl.edge import trainer  # noqa: PLC0415
        except ImportError as exc:  # pragma: no cover - exercised by the no-torch test
            from hierfl.errors import ConfigError  # noqa: PLC0415

            raise ConfigError("hierfl[edge] is required: pip install 'hierfl[edge]'") from exc
        return getattr(trainer, name)
    raise AttributeError(f"module 'hierfl.edge' has no attribute {name!r}")
