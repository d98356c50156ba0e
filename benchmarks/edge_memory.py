"""What an edge process costs in memory, and how much of it is torch (issue 10, item 3).

Each stage runs in a fresh Python process and reports its peak RSS (``VmHWM``, MB):

- ``python``: the interpreter alone;
- ``import_torch``: ``import torch``;
- ``import_edge``: ``import hierfl.edge.client`` (numpy, msgpack, zstd, aiomqtt, no torch);
- ``import_torch_sklearn``: torch and scikit-learn's datasets (the digits scenario loads its
  data with ``load_digits``);
- ``scenario_data``: the scenario module and its 20-client data split;
- ``edge_digits``: a digits-20 edge as ``hierfl sim`` builds it (``digits_task`` + an
  ``EdgeClient`` on the in-memory brokers, signing off), after ``--epochs`` local training
  passes and one encoded update (the work of a round, without the sockets);
- ``edge_digits_wide``: the same on digits-20-wide (1.12 M parameters);
- ``edge_digits_datafile``: ``edge_digits`` reading its partition from the data file
  ``hierfl sim`` writes (``<out>/data.npz``): no scikit-learn in the edge.

Then what the processes themselves hold, from ``/proc/<pid>/smaps_rollup`` (MB): RSS (every
resident page mapped, shared or not), PSS (each page divided by the number of processes
mapping it: the processes' PSS add up to what they occupy together) and USS (the pages only
this process maps: what stopping it frees):

- ``torch_alone``: a process that imported torch, nothing else;
- ``sim_forked``: a real ``hierfl sim digits`` run (``--sim-edges`` edges, 4 fogs, processes
  mode, edges forked from the zygote, :mod:`hierfl.sim.zygote`), every edge read after round
  ``--sim-round`` (it has trained, encoded and sent that many updates), and the zygote itself;
- ``sim_plain`` (``--plain``): the same with ``--no-zygote`` (each edge a plain process).

Prints one JSON line per stage, then a summary line; ``--append FILE`` also appends them.
Usage: ``python benchmarks/edge_memory.py [--epochs 2] [--plain] [--append FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_STAGES = {
    "python": "pass",
    "import_torch": "import torch",
    "import_edge": "import hierfl.edge.client",
    "import_torch_sklearn": "import torch, sklearn.datasets",
    "scenario_data": "from hierfl.sim.scenarios import digits_data; digits_data(20, 0)",
    "edge_digits": "EDGE:0",
    "edge_digits_wide": "EDGE:1",
    "edge_digits_datafile": "EDGE:0:data",
}

_EDGE = """
import asyncio, sys
from hierfl.config import EdgeSettings
from hierfl.edge.client import EdgeClient
from hierfl.sim.scenarios import digits_task
from hierfl.transport.factory import MemoryTransports
from hierfl.transport.memory_kafka import MemoryKafkaBroker
from hierfl.transport.memory_mqtt import MemoryMqttBroker
from hierfl.wire import encode_frame, UpdateFrame
import numpy as np

wide, epochs = bool(int(sys.argv[1])), int(sys.argv[2])
data = sys.argv[3] if len(sys.argv) > 3 else None

async def main():
    task = digits_task(edge_id="e0", fog_id="f0", index=0, wide=wide, data=data)
    settings = EdgeSettings.load(federation="m", fog_id="f0", edge_id="e0",
                                 security={"signing": "off"})
    EdgeClient(settings, task,
               transports=MemoryTransports(MemoryMqttBroker(), MemoryKafkaBroker()))
    model = task.build_model()
    from hierfl.model.torch_adapter import model_to_vector
    before = model_to_vector(model)
    task.train(model, epochs)
    delta = (model_to_vector(model) - before).astype(np.float32)
    encode_frame(UpdateFrame("m", "f0", "e0", 0, 1, 10, delta, {}))

asyncio.run(main())
"""


def _peak_mb(code: str, epochs: int, data_file: str) -> float:
    if code.startswith("EDGE:"):
        args = [sys.executable, "-c", _EDGE + _REPORT, code.split(":")[1], str(epochs)]
        if code.endswith(":data"):
            args.append(data_file)
    else:
        args = [sys.executable, "-c", code + "\n" + _REPORT]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


_REPORT = """
for line in open('/proc/self/status'):
    if line.startswith('VmHWM:'):
        print(int(line.split()[1]) / 1024)
"""


def smaps_mb(pid: int | str) -> dict[str, float]:
    """RSS, PSS and USS (private clean + dirty) of a process, in MB (``smaps_rollup``)."""
    kb: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        kb[key] = int(rest.split()[0])
    return {"rss_mb": round(kb["Rss"] / 1024, 1), "pss_mb": round(kb["Pss"] / 1024, 1),
            "uss_mb": round((kb["Private_Clean"] + kb["Private_Dirty"]) / 1024, 1)}


_TORCH_ALONE = """
import torch, json, sys
sys.path.insert(0, sys.argv[1])
from edge_memory import smaps_mb
print(json.dumps(smaps_mb("self")))
"""


def _torch_alone() -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _TORCH_ALONE, str(Path(__file__).parent)],
                         capture_output=True, text=True, check=True, timeout=300)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _sim(edges: int, at_round: int, zygote: bool) -> dict[str, Any]:
    """Run ``hierfl sim digits`` in processes mode; read every edge's smaps after a round."""
    from hierfl.sim.runner import SimConfig, run_sim  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="edge-memory-") as tmp:
        cfg = SimConfig(scenario="digits", fogs=4, edges=edges, rounds=at_round + 1,
                        out=Path(tmp), live=False, zygote=zygote)
        seen: dict[str, dict[str, float]] = {}

        def on_round(rec: Any) -> None:
            if rec.round == at_round:
                pids = json.loads((cfg.out / "startup.json").read_text())["pids"]
                for name, pid in pids.items():
                    if name.startswith("e") or name == "zygote":
                        seen[name] = smaps_mb(pid)

        report = run_sim(cfg, on_round=on_round)
    per_edge = {k: v for k, v in seen.items() if k != "zygote"}
    out: dict[str, Any] = {"edges": len(per_edge), "after_round": at_round,
                           "final_accuracy": report["final_accuracy"]}
    for key in ("rss_mb", "pss_mb", "uss_mb"):
        vals = [v[key] for v in per_edge.values()]
        out[f"edge_{key}_median"] = round(statistics.median(vals), 1)
        out[f"edge_{key}_max"] = max(vals)
        out[f"edges_{key}_sum"] = round(sum(vals), 1)
    if "zygote" in seen:
        out["zygote"] = seen["zygote"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sim-edges", type=int, default=20)
    parser.add_argument("--sim-round", type=int, default=2)
    parser.add_argument("--plain", action="store_true",
                        help="also measure a sim with plain edge processes (--no-zygote)")
    parser.add_argument("--append", type=Path, default=None, help="append the JSON lines here")
    args = parser.parse_args()
    lines: list[dict[str, Any]] = []

    def emit(obj: dict[str, Any]) -> None:
        lines.append(obj)
        print(json.dumps(obj), flush=True)

    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        from hierfl.sim.scenarios import digits_data, write_data  # noqa: PLC0415

        data_file = str(Path(tmp) / "data.npz")
        write_data(data_file, digits_data(20, 0))
        for stage, code in _STAGES.items():
            peaks[stage] = round(_peak_mb(code, args.epochs, data_file), 1)
            emit({"bench": "edge_memory", "stage": stage, "peak_rss_mb": peaks[stage]})
    torch_alone = _torch_alone()
    emit({"bench": "edge_memory_smaps", "stage": "torch_alone", **torch_alone})
    forked = _sim(args.sim_edges, args.sim_round, zygote=True)
    emit({"bench": "edge_memory_smaps", "stage": "sim_forked", **forked})
    plain = _sim(args.sim_edges, args.sim_round, zygote=False) if args.plain else None
    if plain is not None:
        emit({"bench": "edge_memory_smaps", "stage": "sim_plain", **plain})
    summary: dict[str, Any] = {
        "bench": "edge_memory_summary", "cpus": os.cpu_count(),
        "torch_import_mb": round(peaks["import_torch"] - peaks["python"], 1),
        "edge_digits_mb": peaks["edge_digits"], "edge_digits_wide_mb": peaks["edge_digits_wide"],
        "sklearn_import_mb": round(peaks["import_torch_sklearn"] - peaks["import_torch"], 1),
        "edge_digits_without_torch_import_mb": round(
            peaks["edge_digits"] - (peaks["import_torch"] - peaks["python"]), 1),
        "edge_digits_datafile_mb": peaks["edge_digits_datafile"],
        "torch_alone": torch_alone,
        "forked_edge_rss_mb": forked["edge_rss_mb_median"],
        "forked_edge_pss_mb": forked["edge_pss_mb_median"],
        "forked_edge_uss_mb": forked["edge_uss_mb_median"],
        "forked_edges_pss_sum_mb": forked["edges_pss_mb_sum"],
    }
    if plain is not None:
        summary.update({"plain_edge_rss_mb": plain["edge_rss_mb_median"],
                        "plain_edge_pss_mb": plain["edge_pss_mb_median"],
                        "plain_edge_uss_mb": plain["edge_uss_mb_median"],
                        "plain_edges_pss_sum_mb": plain["edges_pss_mb_sum"]})
    emit(summary)
    if args.append is not None:
        with args.append.open("a") as f:
            for obj in lines:
                f.write(json.dumps(obj) + "\n")


if __name__ == "__main__":
    main()
