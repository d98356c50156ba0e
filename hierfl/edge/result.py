"""What one local training pass reports (torch-free, shared by every kind of task)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TrainResult"]


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What one local training pass reports: its sample count and metrics."""

    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
