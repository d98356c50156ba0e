"""Fog-level personalisation (docs/learning.md): a fog serves its own edges a regional model.

With ``personalise_alpha = alpha`` a fog starts every cloud round from::

    w_region(v) = alpha * w_global(v) + (1 - alpha) * r

where ``r`` is its last regional aggregate applied: the model its region ended the previous
cloud round with (that round's starting model plus its edges' combined delta). The first
round (no ``r`` yet) starts from the global model. ``alpha = 1`` is plain hierarchical FedAvg;
smaller values keep more of the region's own model. The fog forwards only its edges'
progress (the combined delta against the model they trained from), so the global model is
still the average of every region's learning. Nothing is trained on data the fog does not
have: the fog holds no data, it only interpolates models.

Numpy only; the sim's observer uses :func:`blend` too, to evaluate the model each region's
edges use.
"""

from __future__ import annotations

import numpy as np

from hierfl.types import Float32Vector

__all__ = ["blend"]


def blend(global_weights: Float32Vector, regional: Float32Vector | None,
          alpha: float) -> Float32Vector:
    """``alpha * global + (1 - alpha) * regional`` in float32 (the global model without a
    regional one, or when the sizes differ)."""
    if regional is None or regional.size != global_weights.size:
        return np.asarray(global_weights, dtype=np.float32).copy()
    out = (alpha * global_weights.astype(np.float64)
           + (1.0 - alpha) * regional.astype(np.float64))
    return out.astype(np.float32)
