"""Type aliases shared by every layer."""

from __future__ import annotations

from typing import NewType

import numpy as np
import numpy.typing as npt

__all__ = [
    "EdgeId",
    "FederationId",
    "Float32Matrix",
    "Float32Vector",
    "Float64Vector",
    "FogId",
]

Float32Vector = npt.NDArray[np.float32]
Float32Matrix = npt.NDArray[np.float32]
Float64Vector = npt.NDArray[np.float64]

FederationId = NewType("FederationId", str)
FogId = NewType("FogId", str)
EdgeId = NewType("EdgeId", str)
