"""Server optimisers (FedOpt, Reddi et al. 2021): FedAvgM, FedAdam, FedYogi, FedAdagrad.

The aggregator (FedAvg or a robust rule) combines the updates into one delta
``Delta_t = aggregate(w_i) - x_t``; the pseudo-gradient is ``-Delta_t``. A server optimiser
turns ``Delta_t`` into the step actually applied, ``x_{t+1} = x_t + step``:

* ``fedavgm`` (Hsu et al. 2019; Flower's ``FedAvgM``): ``m_t = momentum * m_{t-1} + Delta_t``,
  ``step = server_lr * m_t``.
* ``fedadam`` / ``fedyogi`` / ``fedadagrad`` (Reddi et al. 2021, Algorithm 2):
  ``m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t`` and

  - Adam: ``v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2``
  - Yogi: ``v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)``
  - Adagrad: ``v_t = v_{t-1} + Delta_t^2``

  ``step = eta_t * m_t / (sqrt(v_t) + tau)``, with ``eta_t = server_lr`` (the paper), or with
  ``bias_correction`` (FedAdam only, as Flower does) Kingma and Ba's
  ``eta_t = server_lr * sqrt(1 - beta2^t) / (1 - beta1^t)``, ``t`` the 1-based step count.
  ``m`` and ``v`` start at zero (as in Flower).

Everything is float64 internally (the state is small: one or two vectors of the model's
size) and the returned step is float32. Numpy only: imported by the cloud and the fogs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from hierfl.errors import ConfigError, StateError, StoreError
from hierfl.types import Float32Vector

__all__ = ["DEFAULTS", "SERVER_OPTIMIZERS", "ServerOptConfig", "ServerOptimizer",
           "make_server_optimizer"]

#: every server optimiser ("none" is plain aggregation: the delta applied as it is)
SERVER_OPTIMIZERS = ("none", "fedavgm", "fedadam", "fedyogi", "fedadagrad")

#: per-optimiser defaults of the settings left unset (Flower 1.x's FedAvgM/FedAdam/FedYogi/
#: FedAdagrad defaults; momentum 0.9 as in Hsu et al. 2019, Flower's default being 0.0)
DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "fedavgm": {"server_lr": 1.0, "momentum": 0.9},
    "fedadam": {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-9,
                "bias_correction": True},
    "fedyogi": {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3,
                "bias_correction": False},
    "fedadagrad": {"server_lr": 0.1, "beta1": 0.0, "beta2": 0.0, "tau": 1e-9,
                   "bias_correction": False},
}


@dataclass(frozen=True, slots=True)
class ServerOptConfig:
    """A validated server optimiser configuration (see the module docstring).

    Raises:
        ConfigError: on an unknown name or a parameter out of range.
    """

    name: str = "none"
    server_lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    bias_correction: bool = False

    def __post_init__(self) -> None:
        if self.name not in SERVER_OPTIMIZERS:
            raise ConfigError(f"server optimiser {self.name!r}: one of "
                              f"{', '.join(SERVER_OPTIMIZERS)}")
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            raise ConfigError(f"server_lr must be > 0, got {self.server_lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        for k in ("beta1", "beta2"):
            if not 0 <= getattr(self, k) < 1:
                raise ConfigError(f"{k} must be in [0, 1), got {getattr(self, k)}")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ConfigError(f"tau must be > 0, got {self.tau}")
        if self.bias_correction and self.name not in ("fedadam", "fedyogi"):
            raise ConfigError("bias_correction applies to fedadam and fedyogi only")

    @classmethod
    def build(cls, name: str, **params: Any) -> ServerOptConfig:
        """A config of ``name`` with its :data:`DEFAULTS` for every parameter not given
        (``None`` counts as not given).

        Raises:
            ConfigError: unknown name or parameter, or a value out of range.
        """
        if name not in DEFAULTS:
            raise ConfigError(f"server optimiser {name!r}: one of {', '.join(SERVER_OPTIMIZERS)}")
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = set(params) - known
        if unknown:
            raise ConfigError(f"server optimiser {name}: unknown parameters {sorted(unknown)}")
        merged = {**DEFAULTS[name], **{k: v for k, v in params.items() if v is not None}}
        return cls(name=name, **merged)

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON values (recorded with each checkpoint)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class ServerOptimizer:
    """One server optimiser and its state (``m``, ``v``, step count).

    Args:
        config: the optimiser.
        size: number of model parameters.
    """

    def __init__(self, config: ServerOptConfig, size: int) -> None:
        self.config = config
        self.size = int(size)
        self.t = 0
        self.m = np.zeros(self.size, dtype=np.float64)
        self.v = np.zeros(self.size, dtype=np.float64)

    def step(self, delta: Float32Vector) -> Float32Vector:
        """Fold the aggregated delta of one round in; return the step to apply.

        Raises:
            StateError: if ``delta`` does not have the model's size.
        """
        c = self.config
        d = np.asarray(delta, dtype=np.float64).reshape(-1)
        if d.size != self.size:
            raise StateError(f"server optimiser: delta of {d.size} values, model of {self.size}")
        self.t += 1
        if c.name == "none":
            return d.astype(np.float32)
        if c.name == "fedavgm":
            self.m = c.momentum * self.m + d
            return (c.server_lr * self.m).astype(np.float32)
        self.m = c.beta1 * self.m + (1.0 - c.beta1) * d
        d2 = d * d
        if c.name == "fedadam":
            self.v = c.beta2 * self.v + (1.0 - c.beta2) * d2
        elif c.name == "fedyogi":
            self.v = self.v - (1.0 - c.beta2) * d2 * np.sign(self.v - d2)
        else:  # fedadagrad
            self.v = self.v + d2
        eta = c.server_lr
        if c.bias_correction:
            eta = eta * math.sqrt(1.0 - c.beta2 ** self.t) / (1.0 - c.beta1 ** self.t)
        return (eta * self.m / (np.sqrt(self.v) + c.tau)).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        """The state as named arrays (written with :func:`numpy.savez`, no pickle)."""
        return {"t": np.array(self.t, dtype=np.int64), "m": self.m, "v": self.v}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state`.

        Raises:
            StoreError: if an array is missing, of another size, or not finite.
        """
        try:
            t = int(np.asarray(arrays["t"]).reshape(()))
            m = np.asarray(arrays["m"], dtype=np.float64).reshape(-1)
            v = np.asarray(arrays["v"], dtype=np.float64).reshape(-1)
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"server optimiser state is malformed: {exc}") from exc
        if m.size != self.size or v.size != self.size:
            raise StoreError(f"server optimiser state of {m.size}/{v.size} values, model of "
                             f"{self.size}")
        if t < 0 or not (np.isfinite(m).all() and np.isfinite(v).all()):
            raise StoreError("server optimiser state is not finite")
        self.t, self.m, self.v = t, m, v


def make_server_optimizer(name: str, size: int, **params: Any) -> ServerOptimizer | None:
    """The optimiser ``name`` over ``size`` parameters, None for ``"none"``.

    Raises:
        ConfigError: as :meth:`ServerOptConfig.build`.
    """
    config = ServerOptConfig.build(name, **params)
    return None if config.name == "none" else ServerOptimizer(config, size)
