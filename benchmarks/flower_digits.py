"""The shared digits benchmark (docs/benchmarks.md) run through Flower, as a baseline.

Flower's deployment runtime on loopback: one ``flower-superlink --insecure`` and one
``flower-supernode --insecure`` per client, all bound to 127.0.0.1 on free ports, and the app
submitted with ``flwr run``. Data, partition, model and local training are hierfl's own
(``hierfl.sim.scenarios.digits_data`` / ``digits_model`` / ``evaluate`` and the
``SupervisedTask`` that ``digits_task`` builds), so only the federation machinery differs.
Aggregation is Flower's ``FedAvg`` (weighted by ``num-examples``); the ServerApp evaluates the
global model on the test split after every round.

Prints one JSON line per scenario on stdout (diagnostics go to stderr)::

    {"system": "flwr-1.42.0", "runtime": "deployment", "scenario": "digits-20", "final_acc": ..,
     "acc_by_round": [..], "wall_s": .., "median_round_s": .., "uplink_bytes_per_round": ..,
     "server_peak_rss_mb": ..}

- ``wall_s``: from starting the SuperLink to the end of the last round (process start-up,
  run submission and every round included), like ``hierfl sim``'s total.
- ``median_round_s``: median over rounds 2..N of the time between consecutive global models
  (end of aggregation of round r-1 to end of aggregation of round r).
- ``uplink_bytes_per_round``: what the 20 ClientApps send back, per round (median over rounds):
  for each reply ``Message`` the deflated bytes of every object in its tree (``Message``
  metadata, ``RecordDict``, ``ArrayRecord``, each ``Array`` header and its ``ArrayChunk`` data as
  ``.npy`` bytes, ``MetricRecord``): the object contents a SuperNode pushes to the SuperLink.
  HTTP/protobuf framing of the Fleet API calls is not counted.
- ``server_peak_rss_mb``: sum of the peak RSS (``VmHWM``) of the server-side processes: the
  SuperLink, the SuperExec it launches and the ServerApp process.

Usage: python benchmarks/flower_digits.py [--scenario digits-20|digits-20-wide|all]
       [--rounds N] [--quick] [--clients 20] [--timeout S] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from hierfl.edge.trainer import SupervisedTask
from hierfl.sim.scenarios import digits_data, digits_model, evaluate

SCENARIOS = {"digits-20": (False, 30), "digits-20-wide": (True, 10)}  # name -> (wide, rounds)
LOCAL_EPOCHS = 2
QUICK_ROUNDS = 3
_GEN_KEY = "hierfl-shuffle"  # context.state record carrying the client's shuffle generator

# --- the Flower app (imported from the FAB by the ServerApp and ClientApp processes) ----------

client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """Train the received global model for 2 local epochs with hierfl's SupervisedTask."""
    torch.set_num_threads(1)
    index = int(context.node_config["partition-id"])
    # This node's partition, as on a device: a local file written once from digits_data()
    # (byte-identical arrays), so the per-message ClientApp process needs no scikit-learn.
    with np.load(str(context.node_config["data-path"])) as part:
        x, y = torch.from_numpy(part["x"]), torch.from_numpy(part["y"])
    wide = bool(context.run_config["wide"])
    # Exactly what hierfl.sim.scenarios.digits_task builds for edge `index`.
    task = SupervisedTask(lambda: digits_model(wide), x, y, batch_size=16, lr=0.05,
                          seed=1000 + index)
    # A hierfl edge keeps its SupervisedTask (and its shuffle generator) for the whole run;
    # Flower starts a fresh ClientApp process per message, so the generator state travels in
    # the node's persistent context.state instead.
    gen = task._gen
    if _GEN_KEY in context.state.config_records:
        state = context.state.config_records[_GEN_KEY]["state"]
        gen.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))  # type: ignore[arg-type]
    model = task.build_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    result = task.train(model, LOCAL_EPOCHS)
    context.state.config_records[_GEN_KEY] = ConfigRecord(
        {"state": gen.get_state().numpy().tobytes()})
    metrics = MetricRecord({"num-examples": result.num_samples, **result.metrics})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


class _MeasuredFedAvg(FedAvg):
    """FedAvg that requires every client each round and records round times and uplink bytes."""

    def __init__(self, n_clients: int) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n_clients,
                         min_available_nodes=n_clients)
        self.n_clients = n_clients
        self.t_models: list[float] = []  # wall-clock time of each new global model (0 = start)
        self.uplink: list[int] = []
        self.param_bytes: list[int] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Any:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if not self.t_models:
            self.t_models.append(time.time())  # all nodes connected: round 1 starts now
        return messages

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        if len(ok) != self.n_clients:
            raise RuntimeError(f"round {server_round}: {len(ok)}/{self.n_clients} clients replied")
        self.uplink.append(sum(len(o.deflate()) for m in ok
                               for o in get_all_nested_objects(m).values()))
        self.param_bytes.append(sum(m.content.array_records["arrays"].count_bytes() for m in ok))
        out = super().aggregate_train(server_round, replies)
        self.t_models.append(time.time())
        return out


server_app = ServerApp()


@server_app.main()
def _server(grid: Grid, context: Context) -> None:
    """Run FedAvg for the configured rounds; evaluate centrally; write the measurements."""
    torch.set_num_threads(1)
    cfg = context.run_config
    n_clients, wide = int(cfg["clients"]), bool(cfg["wide"])
    data = digits_data(n_clients, 0)
    model = digits_model(wide)
    accs: list[float] = []
    path = Path(str(cfg["out"]))

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        acc, loss = evaluate(model, data.x_test, data.y_test)
        if server_round > 0:
            accs.append(acc)
            with path.with_suffix(".progress").open("a") as f:
                f.write(f"round {server_round}/{cfg['rounds']}: test accuracy {acc:.4f}\n")
        return MetricRecord({"accuracy": acc, "loss": loss})

    strategy = _MeasuredFedAvg(n_clients)
    strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=int(cfg["rounds"]),
                   evaluate_fn=central_eval)
    out = {
        "acc_by_round": accs,
        "t_models": strategy.t_models,
        "uplink": strategy.uplink,
        "param_bytes": strategy.param_bytes,
        "serverapp_peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)


# --- the orchestrator (python benchmarks/flower_digits.py) ------------------------------------

_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "flowerdigits"
version = "1.0.0"
description = "hierfl digits benchmark scenarios on Flower"
license = "Apache-2.0"
dependencies = ["flwr==FLWR_VERSION"]

[tool.flwr.app]
publisher = "hierfl"

[tool.flwr.app.components]
serverapp = "flower_digits:server_app"
clientapp = "flower_digits:client_app"

[tool.flwr.app.config]
clients = 20
rounds = 30
wide = false
out = ""
"""


def _log(msg: str) -> None:
    print(f"[flower_digits] {msg}", file=sys.stderr, flush=True)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_port(port: int, deadline: float, procs: list[subprocess.Popen[bytes]]) -> None:
    while time.time() < deadline:
        _check_alive(procs)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def _check_alive(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is not None:
            raise RuntimeError(f"{p.args[0]} (pid {p.pid}) exited with {p.returncode}")


def _sample_hwm(hwm: dict[int, tuple[str, int]], pids: list[int]) -> None:
    """Record each live process's peak RSS (``VmHWM``, kB) and program name, from /proc."""
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            status = Path(f"/proc/{pid}/status").read_text()
            hwm_lines = [ln for ln in status.splitlines() if ln.startswith("VmHWM:")]
            if not hwm_lines:  # a zombie
                continue
            kb = int(hwm_lines[0].split()[1])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            exe = Path(argv[0].decode()).name
            prog = Path(argv[1].decode()).name if exe.startswith("python") else exe
            hwm[pid] = (prog, max(kb, hwm.get(pid, ("", 0))[1]))


class _Cluster:
    """SuperLink + SuperNodes started here; every process they spawned is stopped on exit."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, env
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.work / "logs" / f"{name}.log").open("wb")
        self._logs.append(log)
        p = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def descendants(self, pid: int) -> list[int]:
        with contextlib.suppress(psutil.Error):
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        return []

    def close(self) -> None:
        """SIGTERM every started process and its descendants (by pid), then SIGKILL leftovers."""
        procs: list[psutil.Process] = []
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                top = psutil.Process(p.pid)
                procs.extend([top, *top.children(recursive=True)])
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        for log in self._logs:
            log.close()


def _run_scenario(name: str, rounds: int, n_clients: int, timeout_s: float,
                  keep: bool) -> dict[str, Any]:
    wide = SCENARIOS[name][0]
    flwr_version = version("flwr")
    work = Path(tempfile.mkdtemp(prefix=f"flower-{name}-"))
    (work / "logs").mkdir()
    app = work / "app"
    app.mkdir()
    shutil.copy(Path(__file__), app / "flower_digits.py")
    (app / "pyproject.toml").write_text(_PYPROJECT.replace("FLWR_VERSION", flwr_version))
    home = work / "flwr_home"
    home.mkdir()
    link_port, *node_ports = _free_ports(n_clients + 1)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n')
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": bindir + os.pathsep + os.environ["PATH"],
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    result_path = work / "result.json"
    data = digits_data(n_clients, 0)
    for i, (x, y) in enumerate(data.parts):
        np.savez(work / f"part{i}.npz", x=x, y=y)
    cluster = _Cluster(work, env)
    t0 = time.time()
    try:
        link = cluster.start("superlink", [
            f"{bindir}/flower-superlink", "--insecure", "--host", "127.0.0.1",
            "--port", str(link_port), "--disable-runtime-dependency-installation"])
        _wait_port(link_port, t0 + 60, cluster.procs)
        for i, port in enumerate(node_ports):
            cluster.start(f"supernode{i}", [
                f"{bindir}/flower-supernode", "--insecure", "--superlink",
                f"127.0.0.1:{link_port}", "--host", "127.0.0.1", "--port", str(port),
                "--node-config", f'partition-id={i} data-path="{work / f"part{i}.npz"}"'])
        run_cfg = (f'clients={n_clients} rounds={rounds} wide={"true" if wide else "false"} '
                   f'out="{result_path}"')
        sub = subprocess.run(
            [f"{bindir}/flwr", "run", str(app), "bench", "--run-config", run_cfg,
             "--format", "json"],
            env=env, capture_output=True, text=True, timeout=120, check=False)
        if sub.returncode != 0:
            raise RuntimeError(f"flwr run failed ({sub.returncode}): {sub.stdout}{sub.stderr}")
        _log(f"{name}: submitted ({sub.stdout.strip()})")
        deadline = t0 + timeout_s
        hwm: dict[int, tuple[str, int]] = {}  # server-side pid -> (program, peak RSS kB)
        progress, shown = result_path.with_suffix(".progress"), 0
        while True:
            _sample_hwm(hwm, [link.pid, *cluster.descendants(link.pid)])
            with contextlib.suppress(OSError):
                lines = progress.read_text().split("\n")[:-1]  # complete lines only
                for line in lines[shown:]:
                    _log(f"{name}: {line}")
                shown = len(lines)
            if result_path.exists():
                break
            if time.time() > deadline:
                raise TimeoutError(f"{name}: no result after {timeout_s:.0f} s (logs: {work})")
            _check_alive(cluster.procs)
            time.sleep(0.5)
        res = json.loads(result_path.read_text())
    except BaseException:
        _log(f"{name}: failed; logs kept in {work}")
        keep = True
        raise
    finally:
        cluster.close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    t_models = res["t_models"]
    round_s = [b - a for a, b in itertools.pairwise(t_models)]
    by_prog: dict[str, int] = {}
    for prog, kb in hwm.values():
        by_prog[prog] = by_prog.get(prog, 0) + kb
    # The ServerApp reports its own peak at exit (ru_maxrss), later than the last /proc sample.
    by_prog["flwr-serverapp"] = max(by_prog.get("flwr-serverapp", 0),
                                    int(res["serverapp_peak_rss_kb"]))
    _log(f"{name}: server-side peak RSS MB "
         f"{ {k: round(v / 1024) for k, v in sorted(by_prog.items())} }; "
         f"round_s {[round(s, 2) for s in round_s]}; "
         f"uplink per round {res['uplink']} (raw parameter bytes {res['param_bytes']})")
    return {
        "system": f"flwr-{flwr_version}",
        "runtime": "deployment",
        "scenario": name,
        "final_acc": res["acc_by_round"][-1],
        "acc_by_round": res["acc_by_round"],
        "wall_s": t_models[-1] - t0,
        "median_round_s": statistics.median(round_s[1:] if len(round_s) > 1 else round_s),
        "uplink_bytes_per_round": int(statistics.median(res["uplink"])),
        "server_peak_rss_mb": sum(by_prog.values()) / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios and print one JSON line each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    ap.add_argument("--rounds", type=int, default=None, help="override the scenario's rounds")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds (smoke run)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=1800.0, help="per scenario, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, FLWR_HOME)")
    args = ap.parse_args(argv)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]

    def _stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        for name in names:
            rounds = args.rounds or (QUICK_ROUNDS if args.quick else SCENARIOS[name][1])
            print(json.dumps(_run_scenario(name, rounds, args.clients, args.timeout, args.keep)),
                  flush=True)
    except KeyboardInterrupt as exc:
        _log(f"interrupted ({exc}); every started process was stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
