"""DP wrapped around an aggregation rule: clip, combine, noise, divide by a fixed denominator.

:class:`DPAggregator` turns a rule the accounting allows (``fedavg``, ``norm_bounded`` with a
fixed ``max_norm``: :data:`hierfl.config.DP_RULES`) into the Gaussian mechanism of DP-FedAvg
(McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially Private Recurrent Language
Models", https://arxiv.org/abs/1710.06963): every arriving update is clipped again to ``C``
(the edge is never trusted to have done it), the inner rule combines the clipped updates with
uniform weights (a claimed sample count could buy one edge more than ``C / m``), the combined
result is turned back into the sum of contributions, ``N(0, (sigma C)^2)`` is added to that sum
(``trusted_fog``; in ``untrusted_fog`` mode the edges added it), and the sum is divided by the
fixed denominator ``m`` (the expected number of updates per round): one edge moves the result
by at most ``C / m``, whatever the others send, which is the sensitivity the noise is
calibrated to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from hierfl.errors import AggregationError, ConfigError
from hierfl.privacy.mechanisms import AdaptiveClip, clip_rows, csprng, gaussian_noise
from hierfl.types import Float32Matrix, Float32Vector, Float64Vector

__all__ = ["DPAggregator", "check_dp_rule"]


def check_dp_rule(inner: Any) -> None:
    """Refuse an inner rule whose result one edge can move by more than ``C / n``.

    Raises:
        ConfigError: naming the rule and why.
    """
    name = getattr(inner, "name", type(inner).__name__)
    if name == "fedavg":
        return
    if name == "norm_bounded" and getattr(inner, "max_norm", None) is not None \
            and not getattr(inner, "weighted", False):
        return
    raise ConfigError(
        f"privacy: aggregator {name!r} cannot be wrapped with DP: its result can move by more "
        "than clip_norm / n when one edge's update changes, which breaks the accounting "
        "(allowed: fedavg; norm_bounded with a fixed max_norm and weighted = false)"
    )


@dataclass
class DPAggregator:
    """The Gaussian mechanism around ``inner``: ``(sum of clip(u_i, C) + noise) / m``.

    Args:
        inner: an allowed rule (:func:`check_dp_rule`).
        clip_norm: C.
        noise_multiplier: sigma; the noise on the sum has std ``sigma * C``.
        expected_updates: m, the fixed denominator.
        add_noise: False when the edges added the noise (``untrusted_fog``): the fog then
            only clips (an update above C still never counts for more than C).
        rng: the generator of the noise; None (production): a fresh :func:`csprng` per
            release. A fixed seed is for tests only.
        adaptive: adaptive clipping state (trusted fog only), or None for a fixed C.
        clip_in_place: the caller hands the stack over (the fog's round stacks the updates
            afresh for each close and keeps no reference): clip a C-contiguous, writeable
            float32 stack in place instead of copying it. False (default): never touch it.

    Raises:
        ConfigError: for a rule that breaks the sensitivity bound or nonsense parameters.
    """

    name: ClassVar[str] = "dp"
    robust: ClassVar[bool] = False

    inner: Any
    clip_norm: float
    noise_multiplier: float
    expected_updates: int
    add_noise: bool = True
    rng: np.random.Generator | None = None
    adaptive: AdaptiveClip | None = None
    #: the norms (before clipping) of the last call's updates, and how many were clipped
    last_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    clipped_total: int = 0
    noise_multiplier_updates: float | None = None
    clip_in_place: bool = False

    def __post_init__(self) -> None:
        check_dp_rule(self.inner)
        if self.expected_updates < 1:
            raise ConfigError(f"privacy: expected_updates must be >= 1, got "
                              f"{self.expected_updates}")
        if self.adaptive is not None:
            self.clip_norm = self.adaptive.clip_norm

    @property
    def min_updates(self) -> int:
        """The fewest updates the mechanism aggregates (one)."""
        return 1

    def __call__(self, updates: Float32Matrix, weights: Float64Vector) -> Float32Vector:
        """Clip, combine, noise and divide (see the class docstring).

        Raises:
            AggregationError: the inputs break the rules' contract.
        """
        x = np.asarray(updates)
        if x.ndim != 2 or x.shape[0] < 1:
            raise AggregationError(f"dp: need a non-empty 2-D stack, got shape {x.shape}")
        c = self.clip_norm
        rng = self.rng if self.rng is not None else csprng()
        own = (self.clip_in_place and x.dtype == np.float32 and x.flags.c_contiguous
               and x.flags.writeable)
        clipped, norms = clip_rows(x, c, out=x if own else None)
        self.last_norms = norms
        self.clipped_total += int(np.count_nonzero(norms > c))
        n = clipped.shape[0]
        combined = self.inner(clipped, np.ones(n, dtype=np.float64))
        total = combined.astype(np.float64) * n  # the sum of the clipped contributions
        if self.add_noise:
            sigma = self.noise_multiplier_updates or self.noise_multiplier
            total = total + gaussian_noise(total.size, noise_multiplier=sigma, clip_norm=c,
                                           rng=rng)
        out = (total / self.expected_updates).astype(np.float32)
        if not np.isfinite(out).all():
            raise AggregationError("dp: non-finite aggregate")
        if self.adaptive is not None:
            self.clip_norm = self.adaptive.update(norms, self.expected_updates, rng)
        return out
