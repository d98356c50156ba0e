"""Edge tier: train locally with torch, publish deltas to the fog (needs ``hierfl[edge]``)."""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the no-torch test
    from hierfl.errors import ConfigError

    raise ConfigError("hierfl[edge] is required: pip install 'hierfl[edge]'") from exc

from hierfl.edge.client import EdgeClient
from hierfl.edge.trainer import EdgeTask, SupervisedTask, TrainResult

__all__ = ["EdgeClient", "EdgeTask", "SupervisedTask", "TrainResult"]
