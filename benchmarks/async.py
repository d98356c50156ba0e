"""Asynchronous (buffered, FedBuff) fogs against synchronous rounds with stragglers; print JSON.

The straggler scenario: digits-20 (20 edges over 4 fogs, k1 = 2, k2 = 1, FedAvg), a quarter
of the edges 5x slower (``--stragglers 0.25:5:BASE``: every local pass takes at least BASE
seconds of modelled device time, a straggler's 5x that; the slow edges are spread over the
fogs). Two runs on the same brokers' kind and data:

- ``sync``: every fog round waits for all of its edges (the default), ``--rounds`` rounds;
- ``buffered``: every fog aggregates each ``--buffer-size`` updates as they arrive (default
  3 of its 5 edges), a late update ``s`` fog models behind weighted ``1 / sqrt(1 + s)`` and
  refused beyond ``--max-staleness``; run for ``--buffered-rounds`` global versions.

Printed (one JSON line per run, then a summary line): accuracy by version, cumulative wall
time by version (the observer's clock, from the start of the federation), and in the
summary the time each mode needed to first reach sync's final accuracy, and their ratio
(target: buffered at most half of sync's).

Usage: python benchmarks/async.py [--rounds 30] [--buffered-rounds 80] [--base-s 0.4]
       [--out DIR] [--results FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

from hierfl import __version__
from hierfl.sim.runner import SimConfig, run_sim


def time_to(report: dict[str, Any], target: float) -> tuple[float | None, int | None]:
    """Seconds (cumulative observer wall time) and version at which accuracy first reached
    ``target``; (None, None) when it never did."""
    clock = 0.0
    for r in report["rounds"]:
        clock += r["wall_s"]
        if r["accuracy"] >= target - 1e-12:
            return clock, r["version"]
    return None, None


def _row(mode: str, report: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    walls = list(itertools.accumulate(r["wall_s"] for r in report["rounds"]))
    return {
        "system": f"hierfl-{__version__}", "benchmark": "async-stragglers", "mode": mode,
        **extra,
        "final_acc": report["final_accuracy"],
        "versions": len(report["rounds"]),
        "wall_s": round(report["totals"]["wall_s"], 3),
        "acc_by_version": [round(r["accuracy"], 4) for r in report["rounds"]],
        "elapsed_by_version": [round(w, 3) for w in walls],
        "rejected": report["totals"]["rejected"],
        "accepted": report["totals"]["accepted"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run sync then buffered with the same straggler profile; print JSON lines."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=30, help="sync rounds (digits-20: 30)")
    p.add_argument("--buffered-rounds", type=int, default=60)
    p.add_argument("--base-s", type=float, default=0.4, help="a normal edge's pass, seconds")
    p.add_argument("--slowdown", type=float, default=5.0)
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--buffer-size", type=int, default=3)
    p.add_argument("--max-staleness", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--results", type=Path, default=None, help="also append the lines here")
    a = p.parse_args(argv)
    out = a.out or Path(tempfile.mkdtemp(prefix="hierfl-async-"))
    profile = f"{a.fraction}:{a.slowdown}:{a.base_s}"
    common: dict[str, Any] = {"scenario": "digits", "fogs": 4, "edges": 20, "k1": 2, "k2": 1,
                              "seed": a.seed, "live": False, "stragglers": profile}
    extra = {"stragglers": profile, "edges": 20, "fogs": 4}
    lines = []
    sync = run_sim(SimConfig(**common, rounds=a.rounds, out=out / "sync"))
    lines.append(_row("sync", sync, extra))
    buffered = run_sim(SimConfig(**common, rounds=a.buffered_rounds, out=out / "buffered",
                                 aggregation="buffered", buffer_size=a.buffer_size,
                                 max_staleness=a.max_staleness))
    lines.append(_row("buffered", buffered, {**extra, "buffer_size": a.buffer_size,
                                             "max_staleness": a.max_staleness}))
    target = float(sync["final_accuracy"])
    t_sync, _ = time_to(sync, target)
    t_buf, v_buf = time_to(buffered, target)
    lines.append({
        "system": f"hierfl-{__version__}", "benchmark": "async-stragglers", "mode": "summary",
        "stragglers": profile, "target_acc": target,
        "sync_time_to_target_s": None if t_sync is None else round(t_sync, 3),
        "buffered_time_to_target_s": None if t_buf is None else round(t_buf, 3),
        "buffered_versions_to_target": v_buf,
        "ratio": None if (t_sync is None or t_buf is None) else round(t_buf / t_sync, 3),
        "buffered_best_acc": max(r["accuracy"] for r in buffered["rounds"]),
    })
    for line in lines:
        text = json.dumps(line)
        print(text, flush=True)
        if a.results is not None:
            with a.results.open("a") as fh:
                fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
