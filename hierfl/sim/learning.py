"""The sim's learning-quality options (docs/learning.md) turned into tier settings.

Kept apart from :mod:`hierfl.sim.runner` so that the runner only calls these. Every option
is off by default, and then nothing is added: the tiers' settings (and the bytes on the
wire) are those of a run without them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_learning", "learning_cloud", "learning_fog", "learning_task_options"]


def check_learning(cfg: Any) -> None:
    """Refuse learning options that cannot run.

    Raises:
        ValueError: naming the bad option.
    """
    from hierfl.errors import ConfigError  # noqa: PLC0415
    from hierfl.optim.server import ServerOptConfig  # noqa: PLC0415

    try:
        ServerOptConfig.build(cfg.server_opt, **cfg.server_opt_params)
    except ConfigError as exc:
        raise ValueError(f"--server-opt: {exc}") from None
    if not cfg.fedprox_mu >= 0:
        raise ValueError(f"--fedprox-mu must be >= 0, got {cfg.fedprox_mu}")
    try:
        ServerOptConfig.build(cfg.fog_server_opt)
    except ConfigError as exc:
        raise ValueError(f"--fog-server-opt: {exc}") from None
    if cfg.personalise is not None and not 0 <= cfg.personalise <= 1:
        raise ValueError(f"--personalise must be in [0, 1], got {cfg.personalise}")


def learning_cloud(cfg: Any) -> dict[str, Any]:
    """The cloud's extra settings: its ``server_opt`` section and ``scaffold``, when chosen."""
    out: dict[str, Any] = {}
    if cfg.server_opt != "none":
        out["server_opt"] = {"name": cfg.server_opt, **cfg.server_opt_params}
    if cfg.scaffold:
        out["scaffold"] = True
    return out


def learning_fog(cfg: Any) -> dict[str, Any]:
    """A fog's extra settings: ``personalise_alpha`` and ``server_opt``, when chosen."""
    out: dict[str, Any] = {}
    if cfg.personalise is not None:
        out["personalise_alpha"] = float(cfg.personalise)
    if cfg.fog_server_opt != "none":
        out["server_opt"] = {"name": cfg.fog_server_opt}
    return out


def learning_task_options(cfg: Any) -> dict[str, Any]:
    """An edge's extra task options: FedProx's ``prox_mu`` when it is on."""
    out: dict[str, Any] = {}
    if cfg.fedprox_mu:
        out["prox_mu"] = float(cfg.fedprox_mu)
    return out
