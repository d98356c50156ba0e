"""``hierfl sim`` options of asynchronous (buffered) aggregation and straggling edges.

The runner calls these few functions (:mod:`hierfl.sim.runner`); the options live on
:class:`~hierfl.sim.runner.SimConfig` as ``aggregation``, ``buffer_size``, ``max_staleness``,
``cloud_buffer``, ``stragglers`` and ``intermittent`` (docs/scale.md).
"""

from __future__ import annotations

from typing import Any

from hierfl.errors import ConfigError
from hierfl.sim.stragglers import TASK, StragglerProfile

__all__ = ["async_cloud", "async_fog", "async_task", "check_async"]


def check_async(cfg: Any) -> None:
    """Validate the async options of a SimConfig.

    Raises:
        ValueError: an unknown mode, a bad straggler spec or buffer size.
    """
    if cfg.aggregation not in ("sync", "buffered"):
        raise ValueError("--aggregation must be sync or buffered")
    try:
        StragglerProfile.parse(cfg.stragglers, cfg.intermittent)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    if cfg.buffer_size is not None and cfg.buffer_size < 1:
        raise ValueError("--buffer-size must be >= 1")
    if cfg.cloud_buffer < 0 or cfg.cloud_buffer > cfg.fogs:
        raise ValueError("--cloud-buffer must be between 0 (sync) and the number of fogs")
    if cfg.max_staleness < 0:
        raise ValueError("--max-staleness must be >= 0")


def async_fog(cfg: Any, edges_of_fog: int) -> dict[str, Any]:
    """FogSettings fields of the async options (none in sync mode: settings as before)."""
    if cfg.aggregation != "buffered":
        return {"max_staleness": cfg.max_staleness} if cfg.max_staleness else {}
    k = cfg.buffer_size or max(1, edges_of_fog * 3 // 4)
    return {"aggregation": "buffered", "buffer_size": min(k, edges_of_fog),
            "max_staleness": cfg.max_staleness}


def async_cloud(cfg: Any) -> dict[str, Any]:
    """CloudSettings fields of ``--cloud-buffer K`` (none when 0: synchronous rounds)."""
    if not cfg.cloud_buffer:
        # buffered fogs forward late edge updates: their provenance may be that much older
        return {"max_staleness": cfg.max_staleness} if cfg.aggregation == "buffered" else {}
    return {"aggregation": "buffered", "buffer_size": cfg.cloud_buffer,
            "max_staleness": max(1, cfg.max_staleness)}


def async_task(cfg: Any, index: int, task: str, options: dict[str, Any],
               topology: list[list[int]]) -> dict[str, Any]:
    """EdgeSettings ``task`` and ``task_options`` of edge ``index``: wrapped in a
    :class:`~hierfl.sim.stragglers.SlowTask` when a straggler profile is given."""
    profile = StragglerProfile.parse(cfg.stragglers, cfg.intermittent)
    if not profile.active:
        return {"task": task, "task_options": options}
    slow = index in profile.stragglers(topology)
    return {"task": TASK, "task_options": {**options, "inner": task,
                                           **profile.options(index, slow, cfg.seed)}}
