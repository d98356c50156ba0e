"""Aggregation rules over stacked numpy updates, and the per-update validation before them.

The frozen dataclasses (``FedAvg``, ``Median``, ...) hold validated parameters and are what
:data:`AGGREGATORS` and :func:`make_aggregator` hand out. See :mod:`hierfl.aggregation.base`
for the shared contract and the weighting policy.

The pure functions are imported from their modules (``from hierfl.aggregation.median import
median``) and deliberately not re-exported here: a package attribute ``median`` would shadow the
submodule of the same name, breaking ``import hierfl.aggregation.median as m`` and
``mock.patch("hierfl.aggregation.median.median")``.
"""

from __future__ import annotations

from hierfl.aggregation.base import AGGREGATORS, Aggregator, check_inputs, make_aggregator
from hierfl.aggregation.clipped_trimmed import ClippedTrimmedMean
from hierfl.aggregation.fedavg import FedAvg, capped_weights
from hierfl.aggregation.geometric_median import GeometricMedian
from hierfl.aggregation.krum import Krum, MultiKrum, krum_scores
from hierfl.aggregation.median import Median
from hierfl.aggregation.norm_bounded import NormBounded
from hierfl.aggregation.trimmed_mean import TrimmedMean
from hierfl.aggregation.validation import (
    UpdateValidator,
    ValidationPolicy,
    check_duplicate,
    check_finite,
    check_norm,
    check_samples,
    check_sender,
    check_shape,
    check_staleness,
    update_norm,
)

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "ClippedTrimmedMean",
    "FedAvg",
    "GeometricMedian",
    "Krum",
    "Median",
    "MultiKrum",
    "NormBounded",
    "TrimmedMean",
    "UpdateValidator",
    "ValidationPolicy",
    "capped_weights",
    "check_duplicate",
    "check_finite",
    "check_inputs",
    "check_norm",
    "check_samples",
    "check_sender",
    "check_shape",
    "check_staleness",
    "krum_scores",
    "make_aggregator",
    "update_norm",
]
