"""The round timelines of a ``hierfl sim`` run, for its report.json and report.png.

The cloud writes one line per round to ``<out>/store/timeline.jsonl`` (:mod:`hierfl.timeline`):
every tier's spans, on the tiers' own clocks. This module turns them into the report's
``timeline`` section:

- ``median_round_s``: median over rounds 2..N of the cloud's own round time (start of the
  publication of ``v`` to start of the publication of ``v + 1``), the figure the report's
  ``totals.median_round_s`` now quotes (the observer's figure stays as
  ``totals.observer_median_round_s``);
- ``stages``: per stage, the median over rounds 2..N of the stage's median and max duration
  within a round, and how many spans a round had;
- ``critical_path``: per stage, the median over rounds 2..N of the seconds that stage spent on
  the round's critical path, and the path of the median round itself;
- ``gaps``: waiting between stages on the critical path (queues, the wire, the brokers), as
  the difference between the round time and the stages on the path.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from hierfl.timeline import STAGES, read_timelines

__all__ = ["plot_timeline", "timeline_section"]


def _median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def _tail(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rounds 2..N (round 1 includes start-up), or all when there is only one."""
    return rounds[1:] if len(rounds) > 1 else rounds


def timeline_section(store: Path) -> dict[str, Any] | None:
    """The report's ``timeline`` section from ``<store>/timeline.jsonl`` (None: no file)."""
    rounds = sorted(read_timelines(store / "timeline.jsonl"), key=lambda r: r["version"])
    rounds = [r for r in rounds if r.get("round_s") is not None]
    if not rounds:
        return None
    tail = _tail(rounds)
    names = {n for r in tail for n in r.get("stages", {})}
    order = sorted(names, key=lambda n: STAGES.index(n) if n in STAGES else len(STAGES))
    stages = {}
    for n in order:
        per = [r["stages"][n] for r in tail if n in r.get("stages", {})]
        stages[n] = {
            "spans_per_round": _median([p["n"] for p in per]),
            "median_s": _median([p["median_s"] for p in per]),
            "max_s": _median([p["max_s"] for p in per]),
        }
    on_path: dict[str, list[float]] = {}
    for r in tail:
        seen: dict[str, float] = {}
        for step in r.get("critical_path", []):
            seen[step["stage"]] = seen.get(step["stage"], 0.0) + step["end_s"] - step["start_s"]
        for n in order:
            on_path.setdefault(n, []).append(seen.get(n, 0.0))
    median_round = _median([r["round_s"] for r in tail])
    mid = min(tail, key=lambda r: abs(r["round_s"] - (median_round or 0.0)))
    path_s = {n: _median(v) for n, v in on_path.items() if any(v)}
    busy = sum(x for x in path_s.values() if x)
    return {
        "source": str(store / "timeline.jsonl"),
        "clock": "each tier's own wall clock; round time from the cloud's",
        "rounds": [{"version": r["version"], "round_s": r["round_s"]} for r in rounds],
        "median_round_s": median_round,
        "stages": stages,
        "critical_path_s": path_s,
        "gaps_s": None if median_round is None else max(0.0, median_round - busy),
        "median_round": {"version": mid["version"], "round_s": mid["round_s"],
                         "critical_path": mid.get("critical_path", [])},
    }


_TIER_COLOURS = {"cloud": "tab:blue", "fog": "tab:orange", "edge": "tab:green"}


def plot_timeline(ax: Any, section: dict[str, Any]) -> None:
    """A Gantt chart of the median round's critical path on ``ax`` (matplotlib)."""
    path = section["median_round"]["critical_path"]
    for i, step in enumerate(path):
        tier = step["stage"].split(".", 1)[0]
        ax.barh(i, max(step["end_s"] - step["start_s"], 0.002), left=step["start_s"],
                color=_TIER_COLOURS.get(tier, "tab:grey"))
    ax.set_yticks(range(len(path)))
    ax.set_yticklabels([f"{s['stage']} ({s['party']})" for s in path], fontsize=7)
    ax.invert_yaxis()
    r = section["median_round"]
    ax.set_xlabel("seconds since the cloud started publishing the model")
    ax.set_title(f"critical path of a median round (v{r['version']}: {r['round_s']:.3f} s)")
    ax.grid(alpha=0.3, axis="x")
