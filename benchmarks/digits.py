"""Run the shared digits scenarios (docs/benchmarks.md) through hierfl; print JSON.

One line per scenario::

    {"system": "hierfl-0.1.0", "scenario": "digits-20", "final_acc": ..., "acc_by_round": [...],
     "wall_s": ..., "median_round_s": ..., "uplink_bytes_per_round": ...,
     "server_peak_rss_mb": ...}

Mapping: 20 edges over 4 fogs (5 each), k2 = 1 (equivalent to flat FedAvg), every tier a
separate OS process (the deployable services) on brokers this script starts. "Server" is
the cloud process (its peak RSS from /proc, VmHWM; each fog's is reported too); uplink is
edge -> fog bytes per round (what an IoT device sends), median over rounds.

Usage: python benchmarks/digits.py [--scenario digits-20|digits-20-wide|all] [--rounds N]
       [--mode processes|inprocess] [--codec raw]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from hierfl import __version__
from hierfl.sim.runner import SimConfig, run_sim

SCENARIOS = {"digits-20": (False, 30), "digits-20-wide": (True, 10)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON line per scenario."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="all", choices=[*SCENARIOS, "all"])
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--mode", default="processes", choices=["processes", "inprocess"])
    p.add_argument("--codec", default="raw")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    names = list(SCENARIOS) if a.scenario == "all" else [a.scenario]
    for name in names:
        wide, rounds = SCENARIOS[name]
        out = a.out or Path(tempfile.mkdtemp(prefix=f"hierfl-{name}-"))
        cfg = SimConfig(scenario="digits", fogs=4, edges=20, rounds=a.rounds or rounds, k1=2,
                        k2=1, wide=wide, mode=a.mode, out=out / name, live=False,
                        codec=a.codec)
        report = run_sim(cfg)
        rounds_ = report["rounds"]
        walls = [r["wall_s"] for r in rounds_[1:]] or [r["wall_s"] for r in rounds_]
        print(json.dumps({
            "system": f"hierfl-{__version__}",
            "scenario": name,
            "mode": a.mode,
            "codec": a.codec,
            "final_acc": report["final_accuracy"],
            "acc_by_round": [round(r["accuracy"], 4) for r in rounds_],
            "wall_s": round(report["totals"]["wall_s"], 3),
            "median_round_s": round(statistics.median(walls), 4),
            "uplink_bytes_per_round": int(statistics.median(r["edge_fog_bytes"] for r in rounds_)),
            "server_peak_rss_mb": report.get("cloud_peak_rss_mb"),
            "fog_peak_rss_mb": {k: round(v, 1) for k, v in report["fog_peak_rss_mb"].items()},
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
