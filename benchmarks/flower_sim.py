"""The shared digits benchmark (docs/benchmarks.md) through Flower's Simulation Engine.

The complement of ``benchmarks/flower_digits.py`` (Flower's deployment runtime): the same
ServerApp and ClientApp code (imported from ``flower_digits``: hierfl's data, partition, model,
``SupervisedTask`` training for 2 local epochs, Flower's ``FedAvg`` requiring all clients every
round, central evaluation on the test split after every round, the same round-time and uplink
measurement), run with ``flwr.simulation.run_simulation`` instead: one Python process hosts the
in-memory SuperLink (LinkState) and the ServerApp (a thread), and the ClientApps run in a pool
of Ray actors (``client_resources = {"num_cpus": 1, "num_gpus": 0}``, so as many actors as
Ray sees CPUs), with messages passed in memory and through Ray's object store. This is what
Flower users benchmark with; nothing goes over a network. Only two thin wrappers differ from
the deployment app: ``run_simulation`` gives the ServerApp an empty run config and the
ClientApps a node config of ``partition-id``/``num-partitions`` only, so the wrappers fill in
what ``flwr run --run-config`` and ``flower-supernode --node-config`` pass there (clients,
rounds, wide, result path; the partition file, written once from ``digits_data``).

Prints one JSON line per scenario on stdout (diagnostics go to stderr)::

    {"system": "flwr-1.42.0", "runtime": "simulation", "scenario": "digits-20", "final_acc": ..,
     "acc_by_round": [..], "wall_s": .., "startup_s": .., "median_round_s": ..,
     "uplink_bytes_per_round": .., "server_peak_rss_mb": .., "peak_rss_mb": ..,
     "peak_rss_mb_by_program": {..}}

- ``wall_s``: from the start of the Python process that runs the scenario (its creation time;
  interpreter start, imports of torch/flwr/ray, data preparation, Ray start-up and every round
  included) to the end of the last round (the last global model aggregated). Each scenario
  runs in its own process (``--scenario all`` starts one per scenario), so Ray starts cold.
- ``startup_s``: the part of ``wall_s`` before round 1 starts (the ServerApp sends round 1).
- ``median_round_s``: as in flower_digits.py, median over rounds 2..N of the time between
  consecutive global models (end of aggregation of round r-1 to end of aggregation of round r).
  The simulation's ``InMemoryGrid`` polls for replies every 0.1 s (``pull_interval``), so round
  times come in steps of about 0.1 s; round 1 also includes starting the Ray actors.
- ``uplink_bytes_per_round``: computed exactly as in flower_digits.py (median over rounds of the
  deflated bytes of every object in each reply ``Message``'s tree): what a SuperNode would push
  to a SuperLink. In simulation nothing is serialized that way (replies stay Python objects,
  pickled by Ray between the actor and the driver), so this is the deployment-equivalent
  payload, not bytes that crossed a wire.
- ``server_peak_rss_mb``: peak RSS (``VmHWM``) of the driver process alone: the ServerApp, the
  in-memory SuperLink and the simulation engine (Ray's own daemons are not in it).
- ``peak_rss_mb``: sum of the peak RSS of every process in the tree (the driver, Ray's
  ``gcs_server``, ``raylet`` and helper processes, and the worker processes hosting the
  ClientApp actors), sampled from /proc every 0.5 s; ``peak_rss_mb_by_program`` splits it by
  program name. Summing per-process peaks overstates a simultaneous peak, and pages shared
  between processes (Ray's shared-memory object store) count once per process mapping them.

Usage: python benchmarks/flower_sim.py [--scenario digits-20|digits-20-wide|all]
       [--rounds N] [--quick] [--clients 20]
Needs ``flwr[simulation]==1.42.0`` (ray); see ``benchmarks/install_flower.sh VENV sim``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flower_digits (Ray workers too)
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # as flower_digits.py gives its SuperNodes

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from flower_digits import (  # noqa: E402
    QUICK_ROUNDS,
    SCENARIOS,
    _sample_hwm,
    _server,
    _train,
)
from flwr.app import Context, Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from hierfl.sim.scenarios import digits_data  # noqa: E402


def _log(msg: str) -> None:
    print(f"[flower_sim] {msg}", file=sys.stderr, flush=True)


def _apps(work: Path, n_clients: int, rounds: int, wide: bool,
          result_path: Path) -> tuple[ServerApp, ClientApp]:
    """flower_digits' ServerApp and ClientApp functions, given the configs the runtime would."""
    server_app = ServerApp()

    @server_app.main()
    def _sim_server(grid: Grid, context: Context) -> None:
        context.run_config.update({"clients": n_clients, "rounds": rounds, "wide": wide,
                                   "out": str(result_path)})
        _server(grid, context)

    client_app = ClientApp()

    @client_app.train()
    def _sim_train(msg: Message, context: Context) -> Message:
        # The simulation engine rejects a ClientApp that changes its context's run_config, so
        # flower_digits' _train gets a copy with the configs filled in and the same `state`
        # object (its shuffle-generator record persists in the node's context as before).
        part = int(context.node_config["partition-id"])
        filled = dataclasses.replace(
            context, node_config={**context.node_config,
                                  "data-path": str(work / f"part{part}.npz")},
            run_config={**context.run_config, "wide": wide})
        return _train(msg, filled)

    return server_app, client_app


class _HwmSampler(threading.Thread):
    """Samples the peak RSS (``VmHWM``) of this process and all its descendants every 0.5 s.

    Keyed by (pid, program): a child seen between fork and exec still shows this script's
    command line and the parent's copy-on-write pages, so that entry is dropped at the end and
    the program it then executes gets a fresh entry (``VmHWM`` restarts at exec).
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.hwm: dict[tuple[int, str], int] = {}
        self.stop = threading.Event()

    def sample(self) -> None:
        me = psutil.Process()
        pids = [me.pid]
        with contextlib.suppress(psutil.Error):
            pids += [c.pid for c in me.children(recursive=True)]
        for pid in pids:
            one: dict[int, tuple[str, int]] = {}
            _sample_hwm(one, [pid])  # flower_digits' /proc reader: (program, VmHWM kB)
            if pid in one:
                prog, kb = one[pid]
                if prog.startswith("-"):  # `python -u script.py`: name the script
                    with contextlib.suppress(OSError, StopIteration):
                        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:]
                        prog = Path(next(a for a in argv if not a.startswith(b"-")).decode()).name
                self.hwm[pid, prog] = max(kb, self.hwm.get((pid, prog), 0))

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.sample()

    def peaks(self) -> dict[int, tuple[str, int]]:
        """pid -> (program, peak kB), without the fork-before-exec entries."""
        me = os.getpid()
        mine = next((prog for pid, prog in self.hwm if pid == me), "")
        return {pid: (prog, kb) for (pid, prog), kb in self.hwm.items()
                if pid == me or prog != mine}


def _run_scenario(name: str, rounds: int, n_clients: int) -> dict[str, Any]:
    t0 = psutil.Process().create_time()
    wide = SCENARIOS[name][0]
    work = Path(tempfile.mkdtemp(prefix=f"flower-sim-{name}-"))
    result_path = work / "result.json"
    data = digits_data(n_clients, 0)
    for i, (x, y) in enumerate(data.parts):
        np.savez(work / f"part{i}.npz", x=x, y=y)
    server_app, client_app = _apps(work, n_clients, rounds, wide, result_path)
    sampler = _HwmSampler()
    sampler.start()
    try:
        run_simulation(server_app=server_app, client_app=client_app,
                       num_supernodes=n_clients,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
        sampler.stop.set()
        sampler.join()
        sampler.sample()
        if not result_path.exists():
            raise RuntimeError(f"{name}: the ServerApp wrote no result (see Flower's log above)")
        res = json.loads(result_path.read_text())
    finally:
        sampler.stop.set()
        shutil.rmtree(work, ignore_errors=True)
    progress = result_path.with_suffix(".progress")
    with contextlib.suppress(OSError):
        for line in progress.read_text().splitlines():
            _log(f"{name}: {line}")
    t_models = res["t_models"]
    round_s = [b - a for a, b in itertools.pairwise(t_models)]
    me = os.getpid()
    peaks = sampler.peaks()
    driver_kb = max(peaks.get(me, ("", 0))[1], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    peaks[me] = ("driver", driver_kb)
    by_prog: dict[str, int] = {}
    for prog, kb in peaks.values():
        by_prog[prog] = by_prog.get(prog, 0) + kb
    by_prog_mb = {k: round(v / 1024, 1) for k, v in sorted(by_prog.items())}
    _log(f"{name}: peak RSS MB by program {by_prog_mb} ({len(peaks)} processes); "
         f"round_s {[round(s, 2) for s in round_s]}; "
         f"uplink per round {res['uplink']} (raw parameter bytes {res['param_bytes']})")
    return {
        "system": f"flwr-{version('flwr')}",
        "runtime": "simulation",
        "scenario": name,
        "final_acc": res["acc_by_round"][-1],
        "acc_by_round": res["acc_by_round"],
        "wall_s": t_models[-1] - t0,
        "startup_s": t_models[0] - t0,
        "median_round_s": statistics.median(round_s[1:] if len(round_s) > 1 else round_s),
        "uplink_bytes_per_round": int(statistics.median(res["uplink"])),
        "server_peak_rss_mb": driver_kb / 1024,
        "peak_rss_mb": sum(by_prog.values()) / 1024,
        "peak_rss_mb_by_program": by_prog_mb,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios (each in a fresh process) and print one JSON line each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    ap.add_argument("--rounds", type=int, default=None, help="override the scenario's rounds")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds (smoke run)")
    ap.add_argument("--clients", type=int, default=20)
    args = ap.parse_args(argv)
    if args.scenario == "all":  # one process per scenario: each starts Python and Ray cold
        rc = 0
        for name in SCENARIOS:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--scenario", name,
                   "--clients", str(args.clients)]
            if args.rounds:
                cmd += ["--rounds", str(args.rounds)]
            if args.quick:
                cmd.append("--quick")
            rc = rc or subprocess.run(cmd, check=False).returncode
        return rc
    name = args.scenario
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else SCENARIOS[name][1])
    print(json.dumps(_run_scenario(name, rounds, args.clients)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
