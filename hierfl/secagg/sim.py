"""``hierfl sim --secagg``: the ``[secagg]`` sections of a simulated federation's fogs and edges.

Every fog runs in secure mode (SecAgg+ per region, docs/secure-aggregation.md), its rule the
masked sum (FedAvg over the survivors); the stage deadlines are fractions of the fog round's
timeout, so a secure round always fits in its fog round: 10 % each for the key, share and
unmasking stages, 60 % for the masked inputs (the edges train meanwhile). With
``--dp untrusted_fog`` the secure rounds carry distributed DP (hierfl/secagg/ddp.py): edges
clip to ``--dp-clip`` and every survivor counts once.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_secagg", "secagg_section"]


def check_secagg(cfg: Any) -> None:
    """Refuse simulator options secure aggregation cannot run with.

    Raises:
        ValueError: naming the conflict.
    """
    if not getattr(cfg, "secagg", False):
        return
    if cfg.security == "insecure":
        raise ValueError("--secagg needs signatures (its key advertisements are signed): drop "
                         "--insecure")
    if cfg.aggregator != "fedavg":
        raise ValueError(f"--secagg: a secure fog sees only its region's masked sum and cannot "
                         f"run --aggregator {cfg.aggregator}; its rule is the sum / survivors "
                         "(fedavg). The cloud's rule across fogs is unchanged")
    if cfg.secagg_clip <= 0:
        raise ValueError("--secagg-clip must be > 0")
    smallest = min(len(idx) for idx in cfg.topology().values())
    if smallest < 3:
        raise ValueError(f"--secagg: a region of {smallest} edge(s) would hide no one (with two, "
                         "each learns the other's update from the sum): give every fog at least "
                         "3 edges (edges refuse smaller rounds, secagg.min_roster)")


def secagg_section(cfg: Any) -> dict[str, Any]:
    """``{"secagg": {...}}`` for a fog or an edge of ``cfg`` (empty unless ``--secagg``)."""
    if not getattr(cfg, "secagg", False):
        return {}
    t = float(cfg.round_timeout_s)
    section: dict[str, Any] = {
        "mode": "secure", "clip_norm": float(cfg.secagg_clip), "advertise_s": 0.1 * t,
        "share_s": 0.1 * t, "masked_s": 0.6 * t, "unmask_s": 0.1 * t}
    if getattr(cfg, "dp", "off") == "untrusted_fog":
        # distributed DP (hierfl/secagg/ddp.py): each survivor counts once, and edges clip to
        # the bound the noise is calibrated to (--dp-clip, not --secagg-clip)
        section.update(clip_norm=float(cfg.dp_clip), weighted=False)
    return {"secagg": section}
