"""The Aggregator protocol, the registry of rules, and the input contract they share.

An aggregator maps a stack of ``n`` flat updates (``(n, d)`` float, one row per sender) and their
claimed sample counts (``(n,)``) to one ``(d,)`` float32 update. Every rule is a pure function in
its own module plus a frozen dataclass holding validated parameters; the dataclasses are the
registry entries, so configuration can name a rule (``aggregator = "trimmed_mean"``).

Input contract, checked by every rule (:func:`check_inputs`), else AggregationError: ``updates``
is a 2-D floating ndarray with ``n >= 1`` rows and ``d >= 1`` columns, ``weights`` has shape
``(n,)`` and is real, finite and ``>= 0``. Inputs are never modified; the result is a new
float32 array, accumulated in float64, and is always finite (a non-finite aggregate raises
AggregationError). Updates should be finite already (``validation.check_finite``); the docstring
of each rule says what it does with NaN/Inf rows.

Weighting policy. Claimed sample counts are unverified, so:

================== ==================================================================
rule               uses claimed sample counts?
================== ==================================================================
fedavg             yes, after the optional ``max_samples`` / ``max_weight_fraction`` caps
norm_bounded       only with ``weighted=True`` (capped the same way); uniform by default
multikrum          only with ``weighted=True``, to average the selection; uniform by default
median             no: every update counts once
trimmed_mean       no: every update counts once
krum               no: every update counts once
geometric_median   no: every update counts once
clipped_trimmed_mean no: every update counts once (the fog's default)
================== ==================================================================

Nearest-neighbour mixing (``nnm_f`` on median, trimmed_mean, krum, multikrum and
geometric_median; :mod:`hierfl.aggregation.mixing`) averages neighbours uniformly: it does not
use the claimed counts either.

``robust`` is True for rules whose result a minority of arbitrary updates (below the rule's
breakdown point, stated in each module) cannot move arbitrarily far; fedavg is not robust.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from hierfl.aggregation._common import check_inputs
from hierfl.aggregation.clipped_trimmed import ClippedTrimmedMean
from hierfl.aggregation.fedavg import FedAvg
from hierfl.aggregation.geometric_median import GeometricMedian
from hierfl.aggregation.krum import Krum, MultiKrum
from hierfl.aggregation.median import Median
from hierfl.aggregation.norm_bounded import NormBounded
from hierfl.aggregation.trimmed_mean import TrimmedMean
from hierfl.errors import ConfigError
from hierfl.types import Float32Matrix, Float32Vector, Float64Vector

__all__ = ["AGGREGATORS", "Aggregator", "check_inputs", "make_aggregator", "min_updates"]


@runtime_checkable
class Aggregator(Protocol):
    """What every aggregation rule looks like to a fog or cloud round.

    Attributes:
        name: the registry name of the rule.
        robust: whether a minority of arbitrary updates cannot move the result arbitrarily far.
    """

    @property
    def name(self) -> str:
        """The registry name of the rule."""
        ...

    @property
    def robust(self) -> bool:
        """Whether the rule tolerates a minority of Byzantine updates."""
        ...

    def __call__(self, updates: Float32Matrix, weights: Float64Vector) -> Float32Vector:
        """Aggregate a stack of updates.

        Args:
            updates: (n_updates, n_params) stacked flat deltas; not modified.
            weights: (n_updates,) claimed sample counts; see the weighting policy.

        Returns:
            (n_params,) float32 aggregate (a new array).

        Raises:
            AggregationError: if the inputs break the contract or no result can be formed.
        """
        ...


AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls
    for cls in (FedAvg, Median, TrimmedMean, Krum, MultiKrum, GeometricMedian, NormBounded,
                ClippedTrimmedMean)
}


def make_aggregator(name: str, params: Mapping[str, Any] | None = None) -> Aggregator:
    """Build a registered aggregator from its name and parameters.

    Args:
        name: a key of :data:`AGGREGATORS`, e.g. ``"trimmed_mean"``.
        params: keyword parameters of that rule's class, e.g. ``{"trim_ratio": 0.2}``.

    Returns:
        The configured aggregator.

    Raises:
        ConfigError: if the name is unknown (the message lists the valid choices), a parameter
            is not accepted by that rule (the message lists the accepted ones), or a value is
            out of range.

    Example:
        >>> agg = make_aggregator("trimmed_mean", {"trim_ratio": 0.2})
        >>> agg.name, agg.robust
        ('trimmed_mean', True)
    """
    cls = AGGREGATORS.get(name) if isinstance(name, str) else None
    if cls is None:
        choices = ", ".join(sorted(AGGREGATORS))
        raise ConfigError(f"unknown aggregator {name!r}; valid choices: {choices}")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"aggregator {name!r}: params must be a mapping, got {params!r}")
    accepted = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in params if k not in accepted)
    if unknown:
        allowed = ", ".join(accepted) or "none"
        raise ConfigError(
            f"aggregator {name!r}: unknown parameter(s) {', '.join(unknown)}; accepted: {allowed}"
        )
    return cls(**params)


def min_updates(aggregator: object) -> int:
    """The fewest updates ``aggregator`` can combine (its ``min_updates``; 1 when it has none).

    Every registered rule states it next to its breakdown condition (Krum ``2f + 3``,
    nearest-neighbour mixing ``2 nnm_f + 1``, ...). A round that closes with fewer updates
    cannot be aggregated, so settings refuse a quorum below it (:mod:`hierfl.config`).

    Example:
        >>> min_updates(make_aggregator("krum", {"f": 1}))
        5
    """
    value = getattr(aggregator, "min_updates", 1)
    return value if isinstance(value, int) and value >= 1 else 1
