"""Byzantine edges for ``hierfl sim``: an EdgeClient that lies, over the real wire protocol.

A :class:`MaliciousEdge` receives the fog's model, trains on its own data like an honest edge,
then transforms the honest delta ``d`` before publishing a well-formed
:class:`~hierfl.wire.frames.UpdateFrame` on its own topic. Every attack therefore passes the
wire codec, the topic/edge-id check and (unless a bound says otherwise) validation: what stops
it is the fog's aggregation rule, a norm bound or the sample-count cap. The attacks:

=========== =========================================================================== =========
attack      what is sent                                                                default
=========== =========================================================================== =========
sign-flip   ``-k d``: the honest direction reversed and amplified                       k = 4
sign-flip-1 ``-d``: reversed at honest size, inside the honest spread on non-IID data   k = 1
scale       ``k d``: the honest delta amplified (a boosting/model-replacement attack)   k = 100
gaussian    ``N(0, sigma^2)`` per coordinate, ignoring the data; sigma = 1.0 is about   sigma = 1
            150x the norm of an honest digits-20 delta (0.3-0.5 over 4,810 params)
alie        "A Little Is Enough" [Baruch et al., 2019]: ``mean - z std`` per coordinate z(n, f)
weighting   ``k d`` claiming ``10**6`` samples: takes over a sample-weighted average    k = 10
=========== =========================================================================== =========

``label-flip`` is not here: it is honest code on poisoned data, set up by the sim runner through
the task option ``label_flip`` (:mod:`hierfl.sim.scenarios`).

ALIE. Paper: https://arxiv.org/abs/1902.06156 (NeurIPS 2019). The colluding attackers send
``mu_j - z sigma_j`` for every coordinate ``j``, where ``mu`` and ``sigma`` are the mean and
standard deviation of the honest updates and ``z = Phi^{-1}((n - s) / n)`` with
``s = floor(n / 2 + 1) - f`` (n workers, f Byzantine): the largest shift that still leaves
the malicious value looking "central" to median- and Krum-style rules. Our attackers are
separate devices that only see their own data, so ``mu`` and ``sigma`` are *estimated locally*:
the honest delta plus ``bootstrap - 1`` more training runs from the same base model, each on a
bootstrap resample (with replacement) of the edge's data (for a
:class:`~hierfl.edge.trainer.SupervisedTask`; other tasks repeat training with fresh
mini-batch orders). This approximation underestimates the spread across non-IID honest edges,
so it is a *weaker* ALIE than the omniscient one in the paper; ``z`` can be raised to
compensate. ``n`` is the number of edges in the federation (``task_options["num_edges"]``
when the task has it, else ``5 f``, i.e. 20 % Byzantine) and ``f`` is ``n_byzantine``.

``python -m hierfl.sim.attacks ATTACK`` runs one malicious edge configured from ``HIERFL_*``
variables exactly like ``hierfl edge``; ``HIERFL_SIM_BYZANTINE_OF`` gives ``n_byzantine``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import statistics
import sys
import zlib

import numpy as np
import numpy.typing as npt

from hierfl.config import EdgeSettings
from hierfl.edge.client import EdgeClient, load_task
from hierfl.edge.trainer import EdgeTask, SupervisedTask
from hierfl.errors import ConfigError, HierflError
from hierfl.model.torch_adapter import model_to_vector, vector_to_model
from hierfl.offload import threaded
from hierfl.types import Float32Vector
from hierfl.wire.frames import ModelFrame, UpdateFrame

__all__ = [
    "ATTACKS",
    "MaliciousEdge",
    "alie",
    "alie_z",
    "gaussian",
    "main",
    "scaled",
    "sign_flip",
]

log = logging.getLogger(__name__)

ATTACKS = ("sign-flip", "sign-flip-1", "scale", "gaussian", "alie", "weighting")
"""Attacks a :class:`MaliciousEdge` performs (``label-flip`` is a data attack: see above)."""

_DEFAULT_SCALE = {"sign-flip": 4.0, "sign-flip-1": 1.0, "scale": 100.0, "weighting": 10.0}
_WEIGHTING_CLAIM = 10**6


# --- the math: pure functions ---------------------------------------------------------------


def sign_flip(delta: Float32Vector, k: float) -> Float32Vector:
    """Return ``-k * delta`` as a new float32 array (``k > 0``)."""
    return (np.float32(-k) * delta).astype(np.float32)


def scaled(delta: Float32Vector, k: float) -> Float32Vector:
    """Return ``k * delta`` as a new float32 array."""
    return (np.float32(k) * delta).astype(np.float32)


def gaussian(size: int, sigma: float, rng: np.random.Generator) -> Float32Vector:
    """Return ``size`` independent ``N(0, sigma^2)`` values (float32)."""
    return rng.normal(0.0, sigma, size).astype(np.float32)


def alie_z(n: int, f: int) -> float:
    """The ALIE shift ``z_max`` for ``n`` workers of which ``f`` collude [Baruch et al., 2019].

    ``s = floor(n / 2 + 1) - f`` honest workers must look farther from the mean than the
    attackers; ``z = Phi^{-1}((n - s) / n)``. Returns 0 when ``s`` leaves no room (``s >= n``).

    Raises:
        ValueError: unless ``1 <= f < n``.
    """
    if not 1 <= f < n:
        raise ValueError(f"need 1 <= f < n, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if p >= 1.0:
        return 3.0  # more than half collude: any shift goes; cap at a finite 3 sigma
    return statistics.NormalDist().inv_cdf(p) if p > 0.5 else 0.0


def alie(samples: npt.NDArray[np.float32], z: float) -> Float32Vector:
    """Return ``mean - z * std`` over the rows of ``samples`` (per coordinate, float32).

    Args:
        samples: (k, d) estimates of honest updates; not modified. With one row the
            standard deviation is 0 and the honest estimate itself is returned.
        z: the shift in standard deviations (:func:`alie_z`).
    """
    x = np.asarray(samples, dtype=np.float64)
    std = x.std(axis=0, ddof=1) if x.shape[0] > 1 else np.zeros(x.shape[1])
    return (x.mean(axis=0) - z * std).astype(np.float32)


# --- the edge ----------------------------------------------------------------------------------


class MaliciousEdge(EdgeClient):
    """An edge that trains honestly, then sends a Byzantine update in a valid frame.

    Same interface as :class:`~hierfl.edge.client.EdgeClient` (``run()``, ``stop()``,
    ``ready``, ``updates_sent``).

    Args:
        settings: the edge's settings.
        task: its (honest) local task; the attacks start from the delta it trains.
        attack: one of :data:`ATTACKS`.
        n_byzantine: how many edges collude (ALIE's ``f``).
        scale: the factor ``k`` of sign-flip, sign-flip-1, scale and weighting (default per
            attack: 4, 1, 100, 10).
        sigma: standard deviation of the gaussian attack.
        z: ALIE shift; ``None`` computes ``alie_z(n_edges, n_byzantine)``.
        n_edges: ALIE's ``n``; ``None`` reads ``task_options["num_edges"]``, else ``5 f``.
        bootstrap: local training runs ALIE uses to estimate the honest mean and spread.
        claimed_samples: the sample count the weighting attack claims.
        seed: random seed (gaussian noise, bootstrap resamples); default from the edge id.

    Raises:
        ConfigError: for an unknown attack or out-of-range parameter.
    """

    def __init__(
        self,
        settings: EdgeSettings,
        task: EdgeTask,
        attack: str,
        *,
        n_byzantine: int = 1,
        scale: float | None = None,
        sigma: float = 1.0,
        z: float | None = None,
        n_edges: int | None = None,
        bootstrap: int = 4,
        claimed_samples: int = _WEIGHTING_CLAIM,
        seed: int | None = None,
    ) -> None:
        if attack == "label-flip":
            raise ConfigError("label-flip is a data attack: set the task option label_flip")
        if attack not in ATTACKS:
            raise ConfigError(f"unknown attack {attack!r}; valid choices: {', '.join(ATTACKS)}")
        k = _DEFAULT_SCALE.get(attack, 1.0) if scale is None else float(scale)
        if not (math.isfinite(k) and k > 0):
            raise ConfigError(f"scale must be finite and > 0, got {scale!r}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"sigma must be finite and > 0, got {sigma!r}")
        if n_byzantine < 1 or bootstrap < 1 or claimed_samples < 1:
            raise ConfigError("n_byzantine, bootstrap and claimed_samples must be >= 1")
        super().__init__(settings, task)
        self.attack = attack
        self.scale = k
        self.sigma = float(sigma)
        self.n_byzantine = n_byzantine
        self.bootstrap = bootstrap
        self.claimed_samples = claimed_samples
        if attack == "alie" and z is None:
            n = n_edges or int(settings.task_options.get("num_edges", 5 * n_byzantine))
            try:
                z = alie_z(max(n, n_byzantine + 1), n_byzantine)
            except ValueError as exc:
                raise ConfigError(f"alie: {exc}") from exc
        self.z = 0.0 if z is None else float(z)
        self._rng = np.random.default_rng(
            zlib.crc32(settings.edge_id.encode()) if seed is None else seed
        )
        detail = {"gaussian": f"sigma={self.sigma:g}", "alie": f"z={self.z:.3f}",
                  "weighting": f"k={k:g}, claims {claimed_samples} samples"}
        log.info("edge %s is Byzantine: %s (%s)", settings.edge_id, attack,
                 detail.get(attack, f"k={k:g}"))

    @threaded  # trains, as the honest edge's does
    def _train_on(self, frame: ModelFrame) -> UpdateFrame:
        honest = super()._train_on(frame)
        d, n = honest.delta, honest.num_samples
        if self.attack in ("sign-flip", "sign-flip-1"):
            delta = sign_flip(d, self.scale)
        elif self.attack == "scale":
            delta = scaled(d, self.scale)
        elif self.attack == "gaussian":
            delta = gaussian(d.size, self.sigma, self._rng)
        elif self.attack == "weighting":
            delta, n = scaled(d, self.scale), self.claimed_samples
        else:  # alie
            extra = [self._bootstrap_delta(frame) for _ in range(self.bootstrap - 1)]
            delta = alie(np.stack([d, *extra]), self.z)
        return dataclasses.replace(honest, delta=delta, num_samples=n)

    def _bootstrap_delta(self, frame: ModelFrame) -> Float32Vector:
        """One more local training run from ``frame`` on a resample of this edge's data."""
        task = self.task
        vector_to_model(self.model, frame.weights)
        if isinstance(task, SupervisedTask):
            x, y = task.x, task.y
            idx = self._rng.integers(0, len(x), len(x))
            task.x, task.y = x[idx], y[idx]
            try:
                task.train(self.model, self.settings.local_epochs)
            finally:
                task.x, task.y = x, y
        else:
            task.train(self.model, self.settings.local_epochs)
        return (model_to_vector(self.model) - frame.weights).astype(np.float32)


# --- entry point -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """``python -m hierfl.sim.attacks ATTACK``: one malicious edge, configured like ``hierfl edge``.

    Settings come from ``HIERFL_*`` variables (and ``--config``); ``HIERFL_SIM_BYZANTINE_OF``
    (or ``--byzantine-of``) is the number of colluding edges.
    """
    # The CLI owns logging set-up and signal handling; reuse them rather than copy them.
    from hierfl.process import run_service as _run_service  # noqa: PLC0415
    from hierfl.process import setup_logging as _setup_logging  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m hierfl.sim.attacks",
                                     description="Run one Byzantine edge.")
    parser.add_argument("attack", choices=ATTACKS)
    parser.add_argument("--config", "-c", default=None, help="TOML settings file")
    parser.add_argument("--byzantine-of", type=int, default=None,
                        help="colluding edges (default: $HIERFL_SIM_BYZANTINE_OF or 1)")
    parser.add_argument("--scale", type=float, default=None)
    parser.add_argument("--sigma", type=float, default=1.0)
    args = parser.parse_args(argv)
    n_bad = args.byzantine_of or int(os.environ.get("HIERFL_SIM_BYZANTINE_OF", "1"))
    try:
        settings = EdgeSettings.load(args.config)
        _setup_logging(settings.log_level)
        task = load_task(settings.task, settings.task_options, settings)
        client = MaliciousEdge(settings, task, args.attack, n_byzantine=n_bad,
                               scale=args.scale, sigma=args.sigma)
    except HierflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    _run_service(client)


if __name__ == "__main__":
    main()
