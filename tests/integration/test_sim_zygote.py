"""``hierfl sim`` processes mode through the edge zygote (hierfl/sim/zygote.py): every edge is
a process of its own, forked from one zygote; stopping the sim stops them all; a crashed edge
is reported with its log; the scenario's data file holds the very arrays the sim computed."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import psutil
import pytest

from hierfl.sim.runner import SimConfig, run_sim_async
from hierfl.sim.scenarios import digits_data, load_data, sensors_data, write_data

pytestmark = pytest.mark.integration


def _cfg(tmp_path: Path, mqtt_broker, kafka_broker, unique_id: str, **kw) -> SimConfig:
    base = {"scenario": "digits", "fogs": 2, "edges": 4, "rounds": 3, "k1": 1,
            "mode": "processes", "mqtt_url": mqtt_broker.url,
            "kafka_bootstrap": kafka_broker.bootstrap, "out": tmp_path,
            "federation": unique_id, "live": False, "lr": 0.2, "round_timeout_s": 30.0}
    return SimConfig(**{**base, **kw})


def _gone(pid: int, created: float) -> bool:
    """The process we saw is gone (a reused pid is another process: created later)."""
    try:
        p = psutil.Process(pid)
        return p.create_time() != created or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_processes_sim_forks_every_edge_from_the_zygote(mqtt_broker, kafka_broker,
                                                               tmp_path, unique_id):
    cfg = _cfg(tmp_path, mqtt_broker, kafka_broker, unique_id)
    seen: dict[str, tuple[int, int, float]] = {}  # name -> (pid, parent pid, create time)

    def on_round(rec):
        if rec.round == 1:
            pids = json.loads((tmp_path / "startup.json").read_text())["pids"]
            for name, pid in pids.items():
                p = psutil.Process(pid)
                seen[name] = (pid, p.ppid(), p.create_time())

    report = await run_sim_async(cfg, on_round=on_round)
    assert len(report["rounds"]) == 3 and report["stopped"] is None
    assert all(r["accepted"] == 4 and r["rejected"] == {} for r in report["rounds"])
    startup = json.loads((tmp_path / "startup.json").read_text())
    assert "edges_forked" in startup and "edges_started" not in startup
    edges = {f"e{i:03d}" for i in range(4)}
    assert set(seen) == edges | {"cloud", "fog0", "fog1", "zygote", "tier_zygote"}
    zygote, tier_zygote = seen["zygote"][0], seen["tier_zygote"][0]
    pids = [seen[e][0] for e in edges]
    assert len(set(pids)) == 4 and zygote not in pids and os.getpid() not in pids
    assert all(seen[e][1] == zygote for e in edges)  # forked by the edge zygote
    assert all(seen[t][1] == tier_zygote for t in ("cloud", "fog0", "fog1"))
    assert len({seen[t][0] for t in ("cloud", "fog0", "fog1")}) == 3
    assert seen["zygote"][1] == os.getpid() and seen["tier_zygote"][1] == os.getpid()
    for e in edges:  # each its own log, written by its own process
        assert "connected to mqtt" in (tmp_path / "logs" / f"{e}.log").read_text()
    # stopped: every child, by pid
    assert all(_gone(pid, created) for pid, _, created in seen.values()), seen


async def test_a_crashed_forked_edge_is_reported_and_everything_stops(mqtt_broker, kafka_broker,
                                                                     tmp_path, unique_id):
    cfg = _cfg(tmp_path, mqtt_broker, kafka_broker, unique_id, rounds=1000)
    seen: dict[str, tuple[int, float]] = {}

    def on_round(rec):
        if rec.round == 1:
            pids = json.loads((tmp_path / "startup.json").read_text())["pids"]
            seen.update({n: (pid, psutil.Process(pid).create_time()) for n, pid in pids.items()})
            os.kill(pids["e002"], signal.SIGKILL)

    with pytest.raises(RuntimeError, match=r"e002 exited with -9") as info:
        await run_sim_async(cfg, on_round=on_round)
    assert "connected to mqtt" in str(info.value)  # the crashed edge's log tail
    assert seen and all(_gone(pid, created) for pid, created in seen.values()), seen


async def test_a_crashed_forked_fog_is_reported(mqtt_broker, kafka_broker, tmp_path, unique_id):
    cfg = _cfg(tmp_path, mqtt_broker, kafka_broker, unique_id, rounds=1000)

    def on_round(rec):
        if rec.round == 1:
            os.kill(json.loads((tmp_path / "startup.json").read_text())["pids"]["fog1"],
                    signal.SIGKILL)

    with pytest.raises(RuntimeError, match=r"fog1 exited with -9"):
        await run_sim_async(cfg, on_round=on_round)


async def test_plain_processes_without_the_zygote(mqtt_broker, kafka_broker, tmp_path, unique_id):
    cfg = _cfg(tmp_path, mqtt_broker, kafka_broker, unique_id, fogs=1, edges=2, rounds=1,
               zygote=False)
    report = await run_sim_async(cfg)
    assert len(report["rounds"]) == 1
    startup = json.loads((tmp_path / "startup.json").read_text())
    assert "edges_started" in startup
    assert "zygote" not in startup["pids"] and "tier_zygote" not in startup["pids"]


@pytest.mark.parametrize("data", [lambda: digits_data(20, 0), lambda: sensors_data(20, 4, 0)])
def test_the_data_file_holds_the_very_arrays(tmp_path, data):
    d = data()
    write_data(tmp_path / "data.npz", d)
    e = load_data(str(tmp_path / "data.npz"))
    pairs = [(d.x_test, e.x_test), (d.y_test, e.y_test)]
    pairs += [(a, b) for p, q in zip(d.parts, e.parts, strict=True)
              for a, b in zip(p, q, strict=True)]
    for a, b in pairs:
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    with np.load(tmp_path / "data.npz", allow_pickle=False) as f:
        assert all(f[k].dtype != object for k in f.files)


_NO_TORCH_RUN = """
import asyncio, json, sys
from pathlib import Path
from hierfl.sim.runner import SimConfig, run_sim_async
cfg = SimConfig(scenario="digits", fogs=1, edges=2, rounds=2, k1=1, mode="processes",
                mqtt_url={mqtt!r}, kafka_bootstrap={kafka!r}, out=Path({out!r}),
                federation={fed!r}, live=False, lr=0.2, round_timeout_s=30.0)
report = asyncio.run(run_sim_async(cfg))
print(json.dumps({{"torch": "torch" in sys.modules, "rounds": len(report["rounds"]),
                  "initial": report["initial_accuracy"], "final": report["final_accuracy"],
                  "regions": sorted(report["regions"]["final"])}}))
"""


def test_the_sims_own_process_never_imports_torch(mqtt_broker, kafka_broker, tmp_path,
                                                  unique_id):
    """The initial model comes from a child of the edge zygote, the evaluation is numpy: the
    sim's process saves torch's import (2 s of CPU on 2 cores) and the model is torch's."""
    import subprocess
    import sys

    from hierfl.model.store import load_weights_file
    from hierfl.model.torch_adapter import model_to_vector
    from hierfl.sim.scenarios import evaluate, scenario_model

    code = _NO_TORCH_RUN.format(mqtt=mqtt_broker.url, kafka=kafka_broker.bootstrap,
                                out=str(tmp_path), fed=unique_id)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=180, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["torch"] is False and seen["rounds"] == 2 and seen["regions"] == ["fog0"]
    assert (tmp_path / "logs" / "initial-model.log").exists()  # written by the zygote's child
    weights, _ = load_weights_file(tmp_path / "initial.npz")
    model = scenario_model("digits")
    assert weights.tobytes() == model_to_vector(model).tobytes()  # torch's seeded init
    data = load_data(str(tmp_path / "data.npz"))
    assert seen["initial"] == evaluate(model, data.x_test, data.y_test)[0]
