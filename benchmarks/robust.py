"""Byzantine robustness of the fog aggregation rules: accuracy under attack, and their cost.

Grid: aggregation rule at the fogs x attack. Every cell is one ``hierfl sim`` run of the digits
scenario (digits-20: 20 edges with a Dirichlet(0.5) partition, MLP 64-64-10, k1 = 2 local
epochs) on 4 fogs (5 edges each) with 20 % Byzantine edges spread across the fogs (one per fog,
:meth:`hierfl.sim.runner.SimConfig.byzantine_edges`), tiers in-process over real brokers. The
cloud combines the 4 fog aggregates with FedAvg. Attacks: :mod:`hierfl.sim.attacks`
(``label-flip`` poisons the data of the same edges instead). ``none`` is the reference column;
``fedavg`` x ``none`` is the reference cell. Rows (:data:`ROWS`): every registered rule with the
parameters sized for 5 updates and one attacker per fog, and each of median, trimmed mean,
Multi-Krum, geometric median and Krum once more as ``R+nnm``, after nearest-neighbour mixing
with ``nnm_f = 1`` (:mod:`hierfl.aggregation.mixing`). ``benchmarks/robust_diagnose.py``
replays one cell without brokers and says why a rule loses accuracy.

Output: one JSON line per cell as it finishes (``"kind": "cell"``), one per rule for its cost
(``"kind": "cost"``), then a Markdown table: final test accuracy (%) per cell, and the time of
one fog round's aggregation (5 digits updates of 4,810 parameters, median of many calls) and of
50 updates x 1 M parameters (``benchmarks/aggregation_speed.py``, one thread).

Each cell runs in a child process (``--cell``), so a run that hangs or crashes costs one cell,
not the table; a child that reached the last round but does not exit is stopped and its
last-round accuracy kept after 30 s (``"teardown_killed": true``).

Usage:
    python benchmarks/robust.py [--rounds 30] [--seed 0] [--aggregators A ...]
        [--attacks X ...] [--byzantine 0.2] [--no-large] [--out runs/robust]
    # 96 cells, 15-40 s each on a 2-core machine: two processes on halves of --aggregators,
    # then --table-from on their outputs, go faster
    python benchmarks/robust.py --quick      # 3 rounds, 3 rules x 3 attacks: a smoke test
    python benchmarks/robust.py --table-from run1.jsonl rerun.jsonl   # merge, re-print
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from hierfl.aggregation import make_aggregator  # noqa: E402

# The targets are on sign-flip, scale and gaussian; sign-flip-1 (-d) is the harder
# variant that stays inside the honest spread.
ATTACKS = ["none", "sign-flip", "scale", "gaussian", "sign-flip-1", "alie", "label-flip",
           "weighting"]
# Parameters for 5 updates per fog with f = 1 Byzantine: trim one value per tail, Krum-family
# rules assume f = 1 (n = 5 >= 2f + 3).
_BASE: dict[str, dict[str, Any]] = {
    "trimmed_mean": {"trim_ratio": 0.2},
    "multikrum": {"f": 1},
    "krum": {"f": 1},
}
_MIXABLE = ["median", "trimmed_mean", "multikrum", "geometric_median", "krum"]
# Table rows: label -> (registered rule, its parameters). "R+nnm" is rule R with
# nearest-neighbour mixing for f = 1 (hierfl.aggregation.mixing), the configuration
# docs/robustness.md recommends for fogs of a few non-IID edges.
ROWS: dict[str, tuple[str, dict[str, Any]]] = {"fedavg": ("fedavg", {})}
for _r in _MIXABLE:
    ROWS[_r] = (_r, _BASE.get(_r, {}))
    ROWS[f"{_r}+nnm"] = (_r, {**_BASE.get(_r, {}), "nnm_f": 1})
ROWS["norm_bounded"] = ("norm_bounded", {})
AGGREGATORS = list(ROWS)
# The targets: these rules within 3 points of the reference under these attacks.
TARGET_RULES = {"median", "trimmed_mean", "multikrum", "geometric_median"}
TARGET_ATTACKS = {"sign-flip", "scale", "gaussian"}
DIGITS_PARAMS = 4810  # MLP 64-64-10
PER_FOG = 5


# --- one cell (child process) -------------------------------------------------------------------


def run_cell(aggregator: str, attack: str, args: argparse.Namespace) -> None:
    """Run one simulated federation; print a JSON line per round, then the cell's record."""
    from hierfl.sim.runner import SimConfig, run_sim  # noqa: PLC0415

    handler = logging.StreamHandler()  # stderr, i.e. the cell's log file
    handler.addFilter(_Repeats())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)

    out = Path(args.out) / f"{aggregator}-{attack}"
    rule, params = ROWS[aggregator]
    cfg = SimConfig(
        scenario="digits", fogs=4, edges=20, rounds=args.rounds, seed=args.seed,
        mode="inprocess", live=False, out=out, aggregator=rule, aggregator_params=params,
        attack=None if attack == "none" else attack,
        byzantine=0.0 if attack == "none" else args.byzantine,
    )

    def on_round(r: Any) -> None:
        print(json.dumps({"kind": "round", "round": r.round, "accuracy": r.accuracy,
                          "rejected": r.rejected}), flush=True)

    t0 = time.monotonic()
    report = run_sim(cfg, on_round=on_round)
    print(json.dumps({
        "kind": "done", "final_accuracy": report["final_accuracy"],
        "initial_accuracy": report["initial_accuracy"], "wall_s": time.monotonic() - t0,
        "rejected": report["totals"]["rejected"],
        "byzantine_edges": sorted(cfg.byzantine_edges()),
    }), flush=True)


class _Repeats(logging.Filter):
    """Drop a log line identical to the previous one (a stuck loop must not fill the disk)."""

    def __init__(self) -> None:
        super().__init__()
        self._last: str | None = None
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg == self._last:
            self._dropped += 1
            return self._dropped in (1, 10, 100, 1000, 10_000, 100_000)
        self._last, self._dropped = msg, 0
        return True


def spawn_cell(aggregator: str, attack: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one cell in a child process; return its JSON record."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", aggregator, attack,
           "--rounds", str(args.rounds), "--seed", str(args.seed), "--byzantine",
           str(args.byzantine), "--out", str(args.out)]
    log_path = Path(args.out) / f"{aggregator}-{attack}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    lines: list[dict[str, Any]] = []
    t0 = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                                cwd=ROOT, start_new_session=True)
        assert proc.stdout is not None
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        last_round_at: float | None = None
        killed = False
        seen, progress_at = 0, time.monotonic()
        while proc.poll() is None:
            time.sleep(0.5)
            rounds = [x for x in lines if x.get("kind") == "round"]
            if rounds and rounds[-1]["round"] >= args.rounds and last_round_at is None:
                last_round_at = time.monotonic()
            if len(rounds) != seen:
                seen, progress_at = len(rounds), time.monotonic()
            stuck = last_round_at is not None and time.monotonic() - last_round_at > 30
            stalled = time.monotonic() - progress_at > args.stall_timeout
            if stuck or stalled or time.monotonic() - t0 > args.cell_timeout:
                killed = True
                _stop(proc)
        reader.join(5)
    rounds = [x for x in lines if x.get("kind") == "round"]
    done = next((x for x in lines if x.get("kind") == "done"), None)
    record: dict[str, Any] = {
        "kind": "cell", "aggregator": aggregator, "rule": ROWS[aggregator][0],
        "params": ROWS[aggregator][1],
        "attack": attack, "byzantine": 0.0 if attack == "none" else args.byzantine,
        "rounds": len(rounds), "seed": args.seed,
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        "accuracy": [round(x["accuracy"], 4) for x in rounds],
        "rejected": done["rejected"] if done else _sum_rejected(rounds),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    if killed:
        record["teardown_killed"] = bool(rounds) and rounds[-1]["round"] >= args.rounds
    if done is None and not record.get("teardown_killed"):
        record["error"] = (f"stopped at round {len(rounds)} of {args.rounds} (exit code "
                           f"{proc.returncode}); see {log_path}")
    return record


def _read_lines(stream: Any, into: list[dict[str, Any]]) -> None:
    for line in stream:
        with contextlib.suppress(ValueError):
            into.append(json.loads(line))


def _sum_rejected(rounds: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in rounds:
        for k, n in r.get("rejected", {}).items():
            total[k] = total.get(k, 0) + n
    return total


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (the sim shuts down cleanly), then SIGKILL; brokers die with their parent."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        return


# --- cost -----------------------------------------------------------------------------------------


def fog_round_cost(aggregator: str, *, repeats: int = 200) -> float:
    """Median seconds to aggregate one fog round: 5 digits-sized updates (a row of ROWS)."""
    rng = np.random.default_rng(0)
    updates = (0.01 * rng.standard_normal((PER_FOG, DIGITS_PARAMS))).astype(np.float32)
    weights = rng.integers(12, 120, PER_FOG).astype(np.float64)
    agg = make_aggregator(*ROWS[aggregator])
    return _median_time(lambda: agg(updates, weights), repeats)


def _median_time(call: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def large_cost(aggregators: list[str]) -> dict[str, float]:
    """50 x 1,000,000 seconds per row of ROWS, timed like benchmarks/aggregation_speed.py."""
    spec = importlib.util.spec_from_file_location("aggregation_speed",
                                                  ROOT / "benchmarks" / "aggregation_speed.py")
    assert spec is not None
    assert spec.loader is not None
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    rng = np.random.default_rng(0)
    updates = rng.standard_normal((50, 1_000_000), dtype=np.float32)
    weights = rng.integers(10, 1000, 50).astype(np.float64)
    out = {}
    with speed._thread_limit():
        for label in aggregators:
            agg = make_aggregator(*ROWS[label])
            out[label] = _median_time(lambda a=agg: a(updates, weights), 3)
    return out


# --- table ----------------------------------------------------------------------------------------


def table(cells: list[dict[str, Any]], costs: dict[str, dict[str, float | None]],
          aggregators: list[str], attacks: list[str], args: argparse.Namespace) -> str:
    """The Markdown table: accuracy per cell, cost per rule."""
    acc = {(c["aggregator"], c["attack"]): None if "error" in c else c.get("final_accuracy")
           for c in cells}
    failed = {(c["aggregator"], c["attack"]) for c in cells if "error" in c}
    ref = acc.get(("fedavg", "none"))
    head = ["rule", *attacks, "fog round (5 x 4,810)", "50 x 1M"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if ref is not None:
        rows.append("| **reference**: fedavg, no attack | "
                    + " | ".join(f"{100 * ref:.1f}" for _ in attacks) + " | | |")
    for a in aggregators:
        row = [f"{a}{_fmt_params(ROWS[a][1])}"]
        for x in attacks:
            v = acc.get((a, x))
            text = ("stalled" if (a, x) in failed else "—") if v is None else f"{100 * v:.1f}"
            if v is not None and ref is not None and (a, x) != ("fedavg", "none"):
                met = v >= ref - 0.03
                target = ROWS[a][0] in TARGET_RULES and x in TARGET_ATTACKS
                text = f"**{text}**" if met and target else text if met else f"{text} ✗"
            row.append(text)
        c = costs.get(a, {})
        fog = c.get("fog_round_s")
        big = c.get("large_s")
        row.append("—" if fog is None else f"{1e6 * fog:.0f} µs")
        row.append("—" if big is None else f"{big:.3f} s")
        rows.append("| " + " | ".join(row) + " |")
    note = (f"\nFinal test accuracy (%) after {args.rounds} rounds, seed {args.seed}, "
            f"{int(100 * args.byzantine)} % Byzantine edges (one per fog). Reference (fedavg, "
            f"no attack): {'—' if ref is None else f'{100 * ref:.1f}'} %. ✗: more than 3 "
            "points below the reference; bold: a target cell of the issue that is met (median, "
            "trimmed mean, Multi-Krum, geometric median x sign-flip, scale, gaussian); stalled: "
            "the run stopped early (see its JSON line).")
    return "\n".join(rows) + "\n" + note


def _fmt_params(p: dict[str, Any]) -> str:
    return "" if not p else " (" + ", ".join(f"{k}={v}" for k, v in p.items()) + ")"


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    """Parse arguments; run the grid (or one ``--cell``) and print the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--byzantine", type=float, default=0.2)
    p.add_argument("--aggregators", nargs="+", default=AGGREGATORS)
    p.add_argument("--attacks", nargs="+", default=ATTACKS)
    p.add_argument("--no-large", action="store_true", help="skip the 50 x 1M timing")
    p.add_argument("--out", default="runs/robust")
    p.add_argument("--cell-timeout", type=float, default=None, help="seconds per cell")
    p.add_argument("--stall-timeout", type=float, default=240,
                   help="stop a cell that has not finished a round for this long (s)")
    p.add_argument("--quick", action="store_true", help="3 rounds, 3 rules x 3 attacks")
    p.add_argument("--table-from", nargs="+", metavar="JSONL",
                   help="run no cell: build the table from these earlier outputs")
    p.add_argument("--cell", nargs=2, metavar=("AGGREGATOR", "ATTACK"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        aggregator, attack = args.cell
        run_cell(aggregator, attack, args)
        return
    if args.quick:
        args.rounds = 3
        args.aggregators = ["fedavg", "median", "multikrum"]
        args.attacks = ["none", "scale", "gaussian"]
        args.no_large = True
    if args.cell_timeout is None:
        args.cell_timeout = 180 + 30 * args.rounds
    bad = [a for a in args.aggregators if a not in AGGREGATORS]
    if bad:
        p.error(f"unknown aggregators {bad}; choose from {AGGREGATORS}")
    cells: list[dict[str, Any]] = []
    if args.table_from:
        # Re-render from earlier JSON lines; a later record of a cell replaces an earlier one.
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for path in args.table_from:
            for line in Path(path).read_text().splitlines():
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if rec.get("kind") == "cell":
                        merged[rec["aggregator"], rec["attack"]] = rec
                        if "error" not in rec:
                            args.rounds, args.seed = rec["rounds"], rec["seed"]
        cells = list(merged.values())
        args.aggregators = [a for a in args.aggregators if any(a == k[0] for k in merged)]
        args.attacks = [x for x in args.attacks if any(x == k[1] for k in merged)]
    order = [("fedavg", "none")] + [(a, x) for a in args.aggregators for x in args.attacks
                                    if (a, x) != ("fedavg", "none")]
    for aggregator, attack in [] if args.table_from else order:
        if aggregator not in args.aggregators or attack not in args.attacks:
            continue
        record = spawn_cell(aggregator, attack, args)
        cells.append(record)
        print(json.dumps(record), flush=True)
    large = {} if args.no_large else large_cost(args.aggregators)
    costs: dict[str, dict[str, float | None]] = {}
    for a in args.aggregators:
        costs[a] = {"fog_round_s": fog_round_cost(a), "large_s": large.get(a)}
        print(json.dumps({"kind": "cost", "aggregator": a, "params": ROWS[a][1],
                          "fog_round_s": costs[a]["fog_round_s"], "fog_round_shape": [
                              PER_FOG, DIGITS_PARAMS],
                          "large_s": costs[a]["large_s"], "large_shape": [50, 1_000_000]}),
              flush=True)
    print()
    print(table(cells, costs, args.aggregators, args.attacks, args))


if __name__ == "__main__":
    main()
