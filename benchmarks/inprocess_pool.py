"""How many worker threads an in-process federation should have (``hierfl sim --mode
inprocess``).

Every tier of an in-process federation shares one interpreter; its thread hops (each edge's
training, the durable writes, the long calls of :func:`hierfl.offload.offload`) run on the
pool :func:`hierfl.sim.runner._inprocess_pool` makes: one worker per core. This runs the
same federation with other pool sizes, interleaved (each repeat runs every size once, the
order rotating), each run a fresh process (``python -m hierfl sim ... --mode inprocess``)
whose pool is replaced before it starts:

- ``default``: asyncio's default executor (what every in-process run used before: up to
  cores + 4 threads);
- ``1``, ``2``, ...: a ``ThreadPoolExecutor`` of that many workers.

Prints one JSON line per run (median round from the cloud's timeline, the run's wall time
inside the sim, final accuracy) and a summary per size. Nothing is asserted.

Usage::

    .venv/bin/python benchmarks/inprocess_pool.py                       # digits-20, 3 repeats
    .venv/bin/python benchmarks/inprocess_pool.py --wide --rounds 10 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# Run in the child: replace the sim's pool, then run the sim's CLI.
_CHILD = """
import sys
from concurrent.futures import ThreadPoolExecutor
import hierfl.sim.runner as runner
size = sys.argv[1]
if size == "default":
    runner._inprocess_pool = lambda cfg: None
elif size != "cores":
    runner._inprocess_pool = lambda cfg: ThreadPoolExecutor(int(size), "hierfl-sim")
sys.argv = ["hierfl", *sys.argv[2:]]
from hierfl.cli import main
main()
"""


def run_once(size: str, *, wide: bool, rounds: int, out: Path) -> dict[str, Any]:
    args = ["sim", "digits", "--mode", "inprocess", "--rounds", str(rounds), "--no-live",
            "--out", str(out)]
    if wide:
        args.append("--wide")
    proc = subprocess.run([sys.executable, "-c", _CHILD, size, *args], capture_output=True,
                          text=True, timeout=900, check=False)
    if proc.returncode != 0:
        return {"bench": "inprocess_pool", "pool": size, "rc": proc.returncode,
                "error": proc.stderr[-2000:]}
    report = json.loads((out / "report.json").read_text())
    return {"bench": "inprocess_pool", "pool": size, "rc": 0,
            "scenario": "digits-20-wide" if wide else "digits-20", "rounds": rounds,
            "median_round_s": round(report["timeline"]["median_round_s"], 4),
            "wall_s": round(report["totals"]["wall_s"], 3),
            "final_acc": round(report["final_accuracy"], 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="default,1,2,cores",
                    help="pool sizes, comma-separated: default (asyncio's), cores (the "
                         "sim's own choice), or a number of workers")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--wide", action="store_true", help="digits-20-wide (default digits-20)")
    ap.add_argument("--append", type=Path, help="also append the JSON lines here")
    args = ap.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in ("default", "cores") and not (s.isdigit() and int(s) > 0):
            ap.error(f"bad pool size {s!r}")
    lines: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hierfl-pool-") as tmp:
        for r in range(args.repeats):
            for i in range(len(sizes)):
                size = sizes[(i + r) % len(sizes)]  # the order rotates with each repeat
                rec = run_once(size, wide=args.wide, rounds=args.rounds,
                               out=Path(tmp) / f"{size}-{r}")
                rec["repeat"] = r
                lines.append(rec)
                print(json.dumps(rec), flush=True)
    for size in sizes:
        ok = [x for x in lines if x["pool"] == size and x["rc"] == 0]
        if ok:
            summary = {"bench": "inprocess_pool_summary", "pool": size, "runs": len(ok),
                       "scenario": ok[0]["scenario"],
                       "median_round_s": [x["median_round_s"] for x in ok],
                       "median_of_rounds_s": statistics.median(x["median_round_s"] for x in ok),
                       "wall_s": [x["wall_s"] for x in ok]}
            lines.append(summary)
            print(json.dumps(summary), flush=True)
    if args.append:
        with args.append.open("a") as f:
            for rec in lines:
                f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
