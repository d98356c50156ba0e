"""hierfl against Flower 1.42 on the shared digits scenarios, interleaved on one machine.

``make bench-compare`` runs this. For each scenario (``digits-20``: ``hierfl sim digits --fogs 4
--edges 20 --rounds 30``; ``digits-20-wide``: the same with ``--wide --rounds 10``) it runs, one
after the other and each in its own fresh process:

- ``hierfl-processes``: ``hierfl sim ... --mode processes`` (hierfl's default: every tier a
  separate OS process, real mosquitto and Tansu brokers on loopback);
- ``hierfl-inprocess``: ``hierfl sim ... --mode inprocess`` (cloud, fogs and edges in one
  process, same brokers);
- ``flower-sim``: ``benchmarks/flower_sim.py`` (Flower's simulation engine, Ray actors);
- ``flower-deployment``: ``benchmarks/flower_digits.py`` (Flower's deployment runtime: a
  SuperLink and 20 SuperNodes on loopback; about a minute per round, so ``--deployment-rounds
  N`` runs N rounds only and its whole-run figures are then labelled per-round only;
  ``--skip-deployment`` leaves it out).

With ``--repeats N`` each system runs N times per scenario, the order reversed on every other
repeat (A B C D, D C B A, ...), so slow drift of the machine's load does not favour one system.

Every run is measured from here, the same way for every system:

- ``wall_s``: whole run, from spawning the command to its report being written. hierfl: the
  ``hierfl sim`` process from spawn to exit (its ``report.json`` is written just before it stops
  its brokers and exits; ``report_s`` is the spawn-to-``report.json`` time, from the file's
  mtime). Flower: spawn to its JSON result line arriving on stdout (printed after the last
  round and after ``run_simulation`` / the cluster has shut down); ``exit_s`` is spawn to exit.
- ``median_round_s``, ``final_acc``, ``uplink_bytes_per_round``: from the system's own report
  (hierfl: ``report.json``'s ``totals.median_round_s`` (rounds 2..N), last round's accuracy,
  median over rounds of the edge -> fog bytes; Flower: its JSON line, same definitions, see
  flower_sim.py / flower_digits.py). ``inner_wall_s`` is the system's own whole-run figure
  (hierfl: ``totals.wall_s``; Flower: process start to last global model).
- ``peak_rss_mb``: the process tree's peak RSS: every 0.5 s (``--sample-s``) this script lists
  the command's process and all its descendants (by parent pid, from /proc, so children in
  their own sessions count: brokers, edges forked by hierfl's zygote, Ray's daemons and
  workers) and reads each one's ``VmHWM`` (its own peak; the entry restarts when the process
  execs); the figure is the sum, over every process seen in the run (``processes``), of its
  last sampled ``VmHWM``; ``peak_rss_mb_by_program`` splits it. A sum of per-process peaks
  overstates a simultaneous peak (most where processes come and go: the deployment runtime's
  per-message ``flwr-clientapp`` processes), and pages shared between processes
  (copy-on-write after fork, shared memory) count once per process. ``peak_rss_live_mb``: the
  largest sum over one sample of the ``VmHWM`` of the processes alive then
  (``processes_live``); it misses processes that exited before that sample (a run's brokers,
  stopped before its last sample). ``peak_pss_mb`` complements both: the largest, over samples,
  of the tree's summed ``Pss`` (``/proc/PID/smaps_rollup``: shared pages divided among the
  processes sharing them), i.e. what the tree held at one moment. Processes living less than
  one sampling interval can be missed by both.

Prints one JSON line per run, then one ``"bench": "summary"`` line per scenario (medians over
repeats and the ratios hierfl / Flower-sim for median round and whole run, both hierfl modes),
and appends them (after a ``"bench": "config"`` line) to ``runs/bench/compare-<date>.jsonl``.
Each run's stdout/stderr go to ``runs/bench/compare-logs/``.

Usage: python benchmarks/compare.py [--scenario digits-20|digits-20-wide|all] [--repeats N]
       [--skip-deployment] [--deployment-rounds N] [--systems a,b,...] [--rounds N]
       [--hierfl PATH] [--flower-python PATH] [--out FILE] [--timeout S]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIOS = {"digits-20": (False, 30), "digits-20-wide": (True, 10)}  # name -> (wide, rounds)
SYSTEMS = ("hierfl-processes", "hierfl-inprocess", "flower-sim", "flower-deployment")


def _log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


# --- the process tree and its memory, from /proc ----------------------------------------------

def _children_map() -> dict[int, list[int]]:
    """ppid -> pids, for every process on the machine (one pass over /proc)."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # comm may hold spaces
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _tree(root: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _program(pid: int) -> str:
    """A process's program name: the script or module for Python, else the executable."""
    argv = [a.decode(errors="replace") for a in
            Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    if not argv:
        raise OSError("no cmdline (zombie or kernel thread)")
    exe = Path(argv[0]).name
    if exe.startswith("python"):
        rest = argv[1:]
        while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
            rest = rest[1:]
        if rest[:1] == ["-m"] and len(rest) > 1:
            return rest[1]
        if rest and rest[0] != "-c":
            return Path(rest[0]).name
    return exe


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise OSError(f"{field} missing (zombie)")


def _pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


class TreeSampler(threading.Thread):
    """Samples VmHWM and Pss of a process and all its descendants every ``interval`` s.

    ``hwm``: every process seen, with its peak (``VmHWM``, last sampled). ``live_peak_kb``: the
    largest sum, over one sample, of the ``VmHWM`` of the processes alive then.
    """

    def __init__(self, root: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.hwm: dict[int, tuple[str, int]] = {}  # pid -> (program, VmHWM kB)
        self.live_peak_kb = 0
        self.live_peak_procs = 0
        self.peak_pss_kb = 0
        self.samples = 0
        self.seen: dict[int, int] = {}  # pid -> start time, every process seen in the tree
        self.stop = threading.Event()

    def sample(self) -> None:
        total = pss = live = 0
        for pid in _tree(self.root):
            with contextlib.suppress(OSError, ValueError):
                prog = _program(pid)
                kb = _status_kb(pid, "VmHWM:")
                old = self.hwm.get(pid)
                # Same program: VmHWM only grows. A new program (exec) restarts the entry: the
                # pre-exec value was the parent's copy-on-write image, not this program's.
                kb = max(kb, old[1]) if old and old[0] == prog else kb
                self.hwm[pid] = (prog, kb)
                if (st := _start_time(pid)) is not None:
                    self.seen[pid] = st
                total += kb
                live += 1
                with contextlib.suppress(OSError, ValueError):
                    pss += _pss_kb(pid)
        if total > self.live_peak_kb:
            self.live_peak_kb, self.live_peak_procs = total, live
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.samples += 1

    def run(self) -> None:
        while True:
            self.sample()
            if self.stop.wait(self.interval):
                return

    def by_program_mb(self) -> dict[str, float]:
        by: dict[str, int] = {}
        for prog, kb in self.hwm.values():
            by[prog] = by.get(prog, 0) + kb
        return {k: round(v / 1024, 1) for k, v in sorted(by.items())}


def _start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot): with the pid, its identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _stop_tree(proc: subprocess.Popen[bytes], seen: dict[int, int]) -> list[int]:
    """SIGTERM the command (it stops what it started), then SIGKILL whatever of it is left.

    Only processes of this run are signalled: the command itself, its live descendants, and
    processes seen in its tree that outlived it (``seen``: pid -> start time, checked again
    so that a reused pid is never signalled).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    left = set(_tree(proc.pid)) if proc.poll() is None else set()
    left |= {pid for pid, st in seen.items() if pid != proc.pid and _start_time(pid) == st}
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return sorted(left - {proc.pid})


# --- one run --------------------------------------------------------------------------------

def _command(system: str, scenario: str, rounds: int, args: argparse.Namespace,
             work: Path) -> list[str]:
    wide = SCENARIOS[scenario][0]
    if system.startswith("hierfl-"):
        mode = system.removeprefix("hierfl-")
        return [args.hierfl, "sim", "digits", "--fogs", "4", "--edges", "20",
                "--rounds", str(rounds), *(["--wide"] if wide else []), "--mode", mode,
                "--out", str(work), "--no-live"]
    script = "flower_sim.py" if system == "flower-sim" else "flower_digits.py"
    cmd = [args.flower_python, "-u", str(HERE / script), "--scenario", scenario,
           "--rounds", str(rounds)]
    if system == "flower-deployment":
        cmd += ["--timeout", str(args.timeout)]
    return cmd


def _hierfl_result(work: Path) -> dict[str, Any]:
    report = json.loads((work / "report.json").read_text())
    rounds = report["rounds"]
    tot = report["totals"]
    return {
        "system": report["system"],
        "final_acc": report["final_accuracy"],
        "acc_by_round": [round(r["accuracy"], 4) for r in rounds],
        "median_round_s": tot["median_round_s"],
        "inner_wall_s": tot["wall_s"],
        "uplink_bytes_per_round": int(statistics.median(r["edge_fog_bytes"] for r in rounds)),
        "rounds_done": tot["rounds"],
        "stopped": report.get("stopped"),
        "signed": report.get("security", {}).get("signing"),
        "server_peak_rss_mb": report.get("cloud_peak_rss_mb"),
    }


def _flower_result(line: dict[str, Any]) -> dict[str, Any]:
    keep = ("system", "runtime", "final_acc", "acc_by_round", "median_round_s",
            "uplink_bytes_per_round", "server_peak_rss_mb", "startup_s")
    out = {k: line[k] for k in keep if k in line}
    out["inner_wall_s"] = line["wall_s"]
    out["rounds_done"] = len(line.get("acc_by_round", []))
    return out


def run_one(system: str, scenario: str, rounds: int, repeat: int, args: argparse.Namespace,
            logs: Path) -> dict[str, Any]:
    """Run one system on one scenario in a fresh process and measure it."""
    work = Path(tempfile.mkdtemp(prefix=f"compare-{system}-{scenario}-"))
    cmd = _command(system, scenario, rounds, args, work)
    log_path = logs / f"{scenario}-{system}-{repeat}.log"
    _log(f"{scenario} {system} #{repeat}: {' '.join(cmd)}")
    started_at = dt.datetime.now(dt.UTC)
    result_line: dict[str, Any] | None = None
    t_line: float | None = None
    with log_path.open("wb") as log:
        t_wall0 = time.time()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL)
        sampler = TreeSampler(proc.pid, args.sample_s)
        sampler.start()

        def read_stdout() -> None:
            nonlocal result_line, t_line
            assert proc.stdout is not None
            for raw in proc.stdout:
                log.write(raw)
                log.flush()
                with contextlib.suppress(ValueError):
                    obj = json.loads(raw)
                    if isinstance(obj, dict) and "final_acc" in obj and t_line is None:
                        t_line = time.monotonic()
                        result_line = obj

        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=args.timeout + 120)
        except subprocess.TimeoutExpired:
            rc = None
        except KeyboardInterrupt:
            sampler.stop.set()
            _stop_tree(proc, sampler.seen)
            raise
        t_exit = time.monotonic()
        sampler.stop.set()
        sampler.join()
        leftovers = _stop_tree(proc, sampler.seen)
        reader.join(timeout=10)
    rec: dict[str, Any] = {
        "bench": "compare", "scenario": scenario, "runner": system, "repeat": repeat,
        "rounds": rounds, "started_at": started_at.isoformat(timespec="seconds"),
        "rc": proc.returncode if rc is not None else "timeout",
    }
    try:
        if system.startswith("hierfl-"):
            rec.update(_hierfl_result(work))
            rec["wall_s"] = round(t_exit - t0, 3)
            rec["report_s"] = round((work / "report.json").stat().st_mtime - t_wall0, 3)
            rec["exit_s"] = rec["wall_s"]
        else:
            if result_line is None:
                raise RuntimeError("no JSON result line on stdout")
            rec.update(_flower_result(result_line))
            rec["wall_s"] = round((t_line or t_exit) - t0, 3)
            rec["report_s"] = rec["wall_s"]
            rec["exit_s"] = round(t_exit - t0, 3)
        rec["ok"] = rc == 0 and rec.get("rounds_done") == rounds
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        rec["ok"] = False
        rec["error"] = f"{type(exc).__name__}: {exc}"
    rec["median_round_s"] = _round(rec.get("median_round_s"), 4)
    rec["inner_wall_s"] = _round(rec.get("inner_wall_s"), 3)
    rec["peak_rss_mb"] = round(sum(kb for _, kb in sampler.hwm.values()) / 1024, 1)
    rec["processes"] = len(sampler.hwm)
    rec["peak_rss_live_mb"] = round(sampler.live_peak_kb / 1024, 1)
    rec["processes_live"] = sampler.live_peak_procs
    rec["peak_pss_mb"] = round(sampler.peak_pss_kb / 1024, 1)
    rec["rss_samples"] = sampler.samples
    rec["peak_rss_mb_by_program"] = sampler.by_program_mb()
    if leftovers:
        rec["killed_leftovers"] = leftovers
    if system == "flower-deployment" and rounds < SCENARIOS[scenario][1]:
        rec["per_round_only"] = (
            f"{rounds} of the scenario's {SCENARIOS[scenario][1]} rounds (--deployment-rounds): "
            "compare median_round_s and wall_per_round_s only; whole-run and accuracy figures "
            "are not comparable")
    rec["wall_per_round_s"] = round(rec["wall_s"] / rounds, 3) if "wall_s" in rec else None
    rec["log"] = str(log_path)
    if rec["ok"]:
        with contextlib.suppress(OSError):
            import shutil  # noqa: PLC0415

            shutil.rmtree(work)
    else:
        rec["work"] = str(work)
    return rec


def _round(x: Any, nd: int) -> Any:
    return round(x, nd) if isinstance(x, float) else x


def _median(xs: list[Any]) -> Any:
    m = statistics.median(xs)
    return round(m) if all(isinstance(x, int) for x in xs) else _round(m, 4)


# --- the comparison -------------------------------------------------------------------------

def _summary(scenario: str, recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per system over repeats, and hierfl / Flower-sim ratios."""
    per: dict[str, dict[str, Any]] = {}
    for system in SYSTEMS:
        ok = [r for r in recs if r["runner"] == system and r.get("ok")]
        if not ok:
            continue
        med = {k: _median([r[k] for r in ok])
               for k in ("median_round_s", "wall_s", "wall_per_round_s", "final_acc",
                         "uplink_bytes_per_round", "peak_rss_mb", "peak_pss_mb")
               if all(isinstance(r.get(k), int | float) for r in ok)}
        med["runs"] = len(ok)
        med["rounds"] = ok[0]["rounds"]
        if "per_round_only" in ok[0]:
            med["per_round_only"] = True
        per[system] = med
    out: dict[str, Any] = {"bench": "summary", "scenario": scenario, "systems": per}
    base = per.get("flower-sim")
    if base:
        for mode in ("processes", "inprocess"):
            h = per.get(f"hierfl-{mode}")
            if h:
                out[f"{mode}_vs_flower_sim"] = {
                    "median_round_ratio": round(h["median_round_s"] / base["median_round_s"], 3),
                    "whole_run_ratio": round(h["wall_s"] / base["wall_s"], 3),
                }
    dep = per.get("flower-deployment")
    if dep:
        for mode in ("processes", "inprocess"):
            h = per.get(f"hierfl-{mode}")
            if h:
                ratios = {"median_round_ratio": round(h["median_round_s"]
                                                      / dep["median_round_s"], 4)}
                if dep.get("per_round_only"):
                    ratios["wall_per_round_ratio"] = round(h["wall_per_round_s"]
                                                           / dep["wall_per_round_s"], 4)
                else:
                    ratios["whole_run_ratio"] = round(h["wall_s"] / dep["wall_s"], 4)
                out[f"{mode}_vs_flower_deployment"] = ratios
    out["ratios_are"] = "hierfl / Flower (below 1: hierfl faster); medians over repeats"
    return out


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, check=True, capture_output=True,
                               text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    return None


def _check_flower(python: str) -> None:
    probe = "import flwr, ray; print(flwr.__version__, ray.__version__)"
    res = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"{python} cannot import flwr and ray (make bench-compare prepares "
                 f".venv-flower; or: benchmarks/install_flower.sh VENV sim):\n{res.stderr}")


def main(argv: list[str] | None = None) -> int:
    """Run the interleaved comparison, print JSON lines, append them to the results file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    ap.add_argument("--repeats", type=int, default=1, help="runs per system per scenario")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma-separated subset of {','.join(SYSTEMS)}")
    ap.add_argument("--skip-deployment", action="store_true",
                    help="leave out Flower's deployment runtime (~1 min per round)")
    ap.add_argument("--deployment-rounds", type=int, default=None,
                    help="rounds of the deployment runtime (fewer: per-round figures only)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="override every scenario's rounds (smoke runs; not the benchmark)")
    ap.add_argument("--hierfl", default=str(ROOT / ".venv" / "bin" / "hierfl"))
    ap.add_argument("--flower-python", default=str(ROOT / ".venv-flower" / "bin" / "python"))
    ap.add_argument("--out", type=Path, default=None,
                    help="results file (default runs/bench/compare-<date>.jsonl, appended)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    ap.add_argument("--sample-s", type=float, default=0.5, help="memory sampling interval")
    args = ap.parse_args(argv)

    systems = [s for s in args.systems.split(",") if s]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        ap.error(f"unknown systems {bad}; choose from {SYSTEMS}")
    if args.skip_deployment:
        systems = [s for s in systems if s != "flower-deployment"]
    if any(s.startswith("flower-") for s in systems):
        _check_flower(args.flower_python)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    today = dt.datetime.now(dt.UTC).date().isoformat()
    out = args.out or ROOT / "runs" / "bench" / f"compare-{today}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = ROOT / "runs" / "bench" / "compare-logs" / dt.datetime.now(dt.UTC).strftime(
        "%Y%m%dT%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)

    def emit(rec: dict[str, Any]) -> None:
        line = json.dumps(rec)
        print(line, flush=True)
        with out.open("a") as f:
            f.write(line + "\n")

    emit({"bench": "config", "date": today,
          "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
          "commit": _git_commit(), "cpus": os.cpu_count(), "machine": platform.platform(),
          "scenarios": names, "systems": systems, "repeats": args.repeats,
          "rounds_override": args.rounds, "deployment_rounds": args.deployment_rounds,
          "sample_s": args.sample_s, "hierfl": args.hierfl, "flower_python": args.flower_python,
          "logs": str(logs)})
    _log(f"results -> {out}; logs -> {logs}")

    def _term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _term)
    failed = 0
    try:
        for name in names:
            recs = []
            for rep in range(args.repeats):
                order = systems if rep % 2 == 0 else systems[::-1]
                for system in order:
                    rounds = args.rounds or SCENARIOS[name][1]
                    if system == "flower-deployment" and args.deployment_rounds:
                        rounds = min(rounds, args.deployment_rounds)
                    rec = run_one(system, name, rounds, rep, args, logs)
                    failed += not rec["ok"]
                    recs.append(rec)
                    emit(rec)
            emit(_summary(name, recs))
    except KeyboardInterrupt as exc:
        _log(f"interrupted ({exc}); the running command and its processes were stopped")
        return 130
    _log(f"done: {failed} failed run(s); results appended to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
