"""A population of lightweight edges: one process per fog hosts all of that fog's edges.

``hierfl sim`` runs every edge as its own OS process (or all tiers in one process): right for
20 edges, not for thousands on a 2-core machine, where a process per edge costs tens of MB and
a scheduler slot each. Here one *population process* per fog runs that fog's edges as
:class:`~hierfl.edge.client.EdgeClient` instances on one asyncio loop. Every edge keeps what
makes it an edge to the rest of the system: its own MQTT session (client id, last will,
retained status), its own signing key from its provisioned kit, its own signed updates and
replay counter; the broker sees one session per edge. What they share is the process, the
event loop and numpy. Training is a small softmax regression in numpy
(:class:`PopulationTask`: 16 features, 4 classes, 68 parameters; no torch imported), so the
measured costs are the federation's: sessions, frames, signatures, aggregation.

Each tier runs as its own process (``python -m hierfl.sim.population ROLE SETTINGS.json``):
the cloud, one fog per region, one population per region. :func:`run_population` starts
brokers (mosquitto, Tansu), provisions every party (signing keys, no TLS), starts those
processes, waits for ``rounds`` global versions, and reports round times (from the cloud's
checkpoints) and every process's peak RSS (``VmHWM``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hierfl.edge.result import TrainResult
from hierfl.edge.vector import VectorModel

__all__ = ["FEATURES", "PopulationTask", "population_task", "run_population",
           "run_population_benchmark"]

FEATURES, CLASSES = 16, 4
PARAMS = FEATURES * CLASSES + CLASSES


def _data(index: int, region: int, n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Edge ``index``'s samples: a shared linear rule plus its region's feature drift."""
    rule = np.random.default_rng(7).normal(size=(FEATURES, CLASSES))
    drift = np.random.default_rng(1000 + region).normal(scale=0.5, size=FEATURES)
    rng = np.random.default_rng(index + 1)
    x = (rng.normal(size=(n, FEATURES)) + drift).astype(np.float32)
    y = np.argmax(x @ rule + rng.gumbel(size=(n, CLASSES)) * 0.3, axis=1)
    return x, y


class PopulationTask:
    """Softmax regression trained with full-batch gradient descent (numpy only).

    Args:
        index: the edge's number (its data seed).
        region: its fog's number (the data drift of the region).
        lr: the step size.
    """

    def __init__(self, index: int, region: int, lr: float = 0.5) -> None:
        self.x, self.y = _data(index, region)
        self.lr = lr

    def build_model(self) -> VectorModel:
        """A zero model of :data:`PARAMS` values."""
        return VectorModel(np.zeros(PARAMS, np.float32))

    def train(self, model: VectorModel, epochs: int) -> TrainResult:
        """``epochs`` full-batch gradient steps; report the loss."""
        w = model.weights[: FEATURES * CLASSES].reshape(FEATURES, CLASSES).astype(np.float64)
        b = model.weights[FEATURES * CLASSES:].astype(np.float64)
        onehot = np.eye(CLASSES)[self.y]
        loss = 0.0
        for _ in range(epochs):
            z = self.x @ w + b
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            loss = float(-np.log(p[np.arange(len(self.y)), self.y] + 1e-12).mean())
            g = (p - onehot) / len(self.y)
            w -= self.lr * (self.x.T @ g)
            b -= self.lr * g.sum(axis=0)
        model.weights = np.concatenate([w.reshape(-1), b]).astype(np.float32)
        return TrainResult(num_samples=len(self.y), metrics={"train_loss": loss})


def population_task(*, edge_id: str, fog_id: str, index: int = 0, region: int = 0,
                    **_: Any) -> PopulationTask:
    """Task factory (``EdgeSettings.task`` = ``hierfl.sim.population:population_task``)."""
    return PopulationTask(index, region)


# --- the processes ------------------------------------------------------------------------


async def _run_role(role: str, spec: dict[str, Any]) -> None:
    """Run one process's services until SIGTERM (or the cloud's last version)."""
    services: list[Any] = []
    if role == "cloud":
        from hierfl.cloud.service import CloudService  # noqa: PLC0415
        from hierfl.config import CloudSettings  # noqa: PLC0415

        services = [CloudService(CloudSettings.load(**spec["settings"]))]
    elif role == "fog":
        from hierfl.config import FogSettings  # noqa: PLC0415
        from hierfl.fog.service import FogService  # noqa: PLC0415

        services = [FogService(FogSettings.load(**spec["settings"]))]
    elif role == "edges":
        from hierfl.config import EdgeSettings  # noqa: PLC0415
        from hierfl.edge.client import EdgeClient  # noqa: PLC0415

        for s in spec["edges"]:
            settings = EdgeSettings.load(**s)
            opts = settings.task_options
            services.append(EdgeClient(settings, PopulationTask(int(opts["index"]),
                                                                int(opts["region"]))))
    else:
        raise SystemExit(f"unknown role {role!r}")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: [s.stop() for s in services])
    # connect gradually: a thousand CONNECTs at once only queue up in the broker's backlog
    tasks = []
    for i, s in enumerate(services):
        tasks.append(asyncio.create_task(s.run()))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    await asyncio.gather(*tasks, return_exceptions=True)


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_population(edges: int, fogs: int, rounds: int, out: Path, *,
                   timeout_s: float = 600.0) -> dict[str, Any]:
    """Run a whole federation of ``edges`` lightweight edges over ``fogs`` fog processes.

    Returns:
        Figures: round times (median over rounds 2..N, from the cloud's checkpoint times),
        the time to connect everyone and to the first version, and peak RSS per process
        kind (broker, Kafka, cloud, fogs, population processes).

    Raises:
        RuntimeError: the federation did not reach ``rounds`` versions within ``timeout_s``.
    """
    from hierfl.model.store import ModelStore  # noqa: PLC0415
    from hierfl.provision import ProjectSpec, provision  # noqa: PLC0415
    from hierfl.sim.brokers import KafkaBroker, MqttBroker  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    fed = f"pop{os.getpid()}{int(time.time()) % 100000}"
    per, extra = divmod(edges, fogs)
    topo: dict[str, list[int]] = {}
    i = 0
    for k in range(fogs):
        size = per + (1 if k < extra else 0)
        topo[f"fog{k}"] = list(range(i, i + size))
        i += size
    t0 = time.monotonic()
    prov = provision(ProjectSpec(federation=fed, fogs={f: tuple(f"e{j:05d}" for j in idx)
                                                      for f, idx in topo.items()}),
                     out / "pki", tls=False, force=True)
    provision_s = time.monotonic() - t0
    np.savez(out / "initial.npz", w=np.zeros(PARAMS, np.float32))

    def sec(party: str) -> dict[str, Any]:
        kit = prov.kit(party)
        s: dict[str, Any] = {"signing": "required", "key_file": str(kit / "signing.key"),
                             "trust_bundle": str(prov.trust_bundle),
                             "revocation_list": str(prov.revocation_list)}
        if party.startswith("fog/"):
            s["state_dir"] = str(kit / "state")
        return s

    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIERFL_")}
    env.update(OMP_NUM_THREADS="1", HIERFL_LOG_LEVEL="WARNING")

    def start(name: str, role: str, spec: dict[str, Any]) -> None:
        path = out / f"{name}.json"
        path.write_text(json.dumps(spec))
        with (logs / f"{name}.log").open("wb") as log:
            # HIERFL_POP_PROFILE=<name>: run that process under cProfile (<out>/<name>.prof)
            prof = (["-m", "cProfile", "-o", str(out / f"{name}.prof")]
                    if os.environ.get("HIERFL_POP_PROFILE") == name else [])
            procs[name] = subprocess.Popen(
                [sys.executable, *prof, "-m", "hierfl.sim.population", role, str(path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    with MqttBroker(prefer="mosquitto") as mqtt, KafkaBroker() as kafka:
        store = out / "store"
        start("cloud", "cloud", {"settings": {
            "federation": fed, "kafka": {"bootstrap": kafka.bootstrap}, "fogs": list(topo),
            "min_fogs": fogs, "round_timeout_s": 300, "store_dir": str(store),
            "initial_model": str(out / "initial.npz"), "max_versions": rounds,
            "security": sec("cloud"), "timeline": False}})
        for f, idx in topo.items():
            start(f, "fog", {"settings": {
                "federation": fed, "fog_id": f, "mqtt": {"url": mqtt.url},
                "kafka": {"bootstrap": kafka.bootstrap}, "security": sec(f"fog/{f}"),
                "min_updates": len(idx), "round_timeout_s": 300, "aggregator": "fedavg",
                "resume_wait_s": 0.2, "resend_after_s": 30}})
        t_edges = time.monotonic()
        for r, (f, idx) in enumerate(topo.items()):
            start(f"pop-{f}", "edges", {"edges": [
                {"federation": fed, "fog_id": f, "edge_id": f"e{j:05d}",
                 "mqtt": {"url": mqtt.url}, "security": sec(f"edge/{f}/e{j:05d}"),
                 "task": "hierfl.sim.population:population_task",
                 "task_options": {"index": j, "region": r}, "local_epochs": 1}
                for j in idx]})
        seen: dict[int, float] = {}
        deadline = time.monotonic() + timeout_s
        peaks: dict[str, float] = {}
        cpu: dict[str, float] = {}
        cpu_at_v1: dict[str, float] = {}
        try:
            while len(seen) < rounds + 1:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(seen) - 1} of {rounds} versions in {timeout_s} s "
                                       f"(logs: {logs})")
                dead = [n for n, p in procs.items() if p.poll() not in (None, 0)]
                if dead:
                    raise RuntimeError(f"processes ended: {dead} (logs: {logs})")
                with contextlib.suppress(Exception):
                    for v in ModelStore(store, create=False).versions():
                        seen.setdefault(v, time.monotonic())
                for n, p in procs.items():
                    if (m := _peak_rss_mb(p.pid)) is not None:
                        peaks[n] = max(peaks.get(n, 0.0), m)
                    if (c := _cpu_s(p.pid)) is not None:
                        cpu[n] = c
                        if 1 not in seen:  # startup (imports, connects) ends at version 1
                            cpu_at_v1[n] = c
                for n, pid in (("mosquitto", mqtt.pid), ("tansu", kafka.pid)):
                    if pid is not None and (m := _peak_rss_mb(pid)) is not None:
                        peaks[n] = max(peaks.get(n, 0.0), m)
                time.sleep(0.05)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    times = [seen[v] for v in sorted(seen)]
    rounds_s = [b - a for a, b in itertools.pairwise(times)]
    fog_rss = [v for k, v in peaks.items() if k.startswith("fog")]
    steady = max(len(times) - 2, 1)  # rounds after the first (which includes startup)

    def per_round(prefix: str) -> list[float]:
        return [(cpu[n] - cpu_at_v1.get(n, 0.0)) / steady for n in cpu if n.startswith(prefix)]
    pop_rss = [v for k, v in peaks.items() if k.startswith("pop-")]
    return {
        "edges": edges, "fogs": fogs, "edges_per_fog": edges / fogs, "rounds": rounds,
        "provision_s": round(provision_s, 2),
        "first_version_s": round(times[1] - t_edges, 2) if len(times) > 1 else None,
        "round_s": [round(x, 3) for x in rounds_s],
        "median_round_s": round(float(np.median(rounds_s[1:] or rounds_s)), 3),
        "peak_rss_mb": {
            "mosquitto": round(peaks.get("mosquitto", 0.0), 1),
            "tansu": round(peaks.get("tansu", 0.0), 1),
            "cloud": round(peaks.get("cloud", 0.0), 1),
            "fog_max": round(max(fog_rss, default=0.0), 1),
            "population_max": round(max(pop_rss, default=0.0), 1),
            "population_total": round(sum(pop_rss), 1),
        },
        "population_mb_per_edge": round(sum(pop_rss) / edges, 3) if pop_rss else None,
        # CPU seconds per steady round (versions 2..N): what each tier costs, load aside
        "cpu_s_per_round": {
            "cloud": round(sum(per_round("cloud")), 3),
            "fog_mean": round(float(np.mean(per_round("fog"))), 3),
            "population_total": round(sum(per_round("pop-")), 3),
            "population_ms_per_edge": round(1000 * sum(per_round("pop-")) / edges, 3),
        },
        "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]),
    }


def run_population_benchmark(configs: tuple[tuple[int, int], ...] = (
        (100, 10), (1000, 10), (500, 5)), rounds: int = 4) -> list[dict[str, Any]]:
    """Run :func:`run_population` for each ``(edges, fogs)``; one result dict each."""
    import tempfile  # noqa: PLC0415

    from hierfl import __version__  # noqa: PLC0415

    rows = []
    for edges, fogs in configs:
        with tempfile.TemporaryDirectory(prefix="hierfl-pop-") as tmp:
            row = run_population(edges, fogs, rounds, Path(tmp))
        rows.append({"system": f"hierfl-{__version__}", "bench": "population", **row,
                     "cpu": os.cpu_count()})
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m hierfl.sim.population ROLE SETTINGS.json``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m hierfl.sim.population cloud|fog|edges SETTINGS.json",
              file=sys.stderr)
        return 2
    import logging  # noqa: PLC0415

    logging.basicConfig(level=os.environ.get("HIERFL_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_run_role(args[0], json.loads(Path(args[1]).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
