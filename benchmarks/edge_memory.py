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
- ``edge_digits_wide``: the same on digits-20-wide (1.12 M parameters).

Prints one JSON line per stage, then a summary line. Usage:
``python benchmarks/edge_memory.py [--epochs 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_STAGES = {
    "python": "pass",
    "import_torch": "import torch",
    "import_edge": "import hierfl.edge.client",
    "import_torch_sklearn": "import torch, sklearn.datasets",
    "scenario_data": "from hierfl.sim.scenarios import digits_data; digits_data(20, 0)",
    "edge_digits": "EDGE:0",
    "edge_digits_wide": "EDGE:1",
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

async def main():
    task = digits_task(edge_id="e0", fog_id="f0", index=0, wide=wide)
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


def _peak_mb(code: str, epochs: int) -> float:
    if code.startswith("EDGE:"):
        args = [sys.executable, "-c", _EDGE + _REPORT, code.split(":")[1], str(epochs)]
    else:
        args = [sys.executable, "-c", code + "\n" + _REPORT]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


_REPORT = """
for line in open('/proc/self/status'):
    if line.startswith('VmHWM:'):
        print(int(line.split()[1]) / 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    peaks = {}
    for stage, code in _STAGES.items():
        peaks[stage] = round(_peak_mb(code, args.epochs), 1)
        print(json.dumps({"bench": "edge_memory", "stage": stage, "peak_rss_mb": peaks[stage]}),
              flush=True)
    print(json.dumps({
        "bench": "edge_memory_summary", "cpus": os.cpu_count(),
        "torch_import_mb": round(peaks["import_torch"] - peaks["python"], 1),
        "edge_digits_mb": peaks["edge_digits"], "edge_digits_wide_mb": peaks["edge_digits_wide"],
        "sklearn_import_mb": round(peaks["import_torch_sklearn"] - peaks["import_torch"], 1),
        "edge_digits_without_torch_import_mb": round(
            peaks["edge_digits"] - (peaks["import_torch"] - peaks["python"]), 1),
    }))


if __name__ == "__main__":
    main()
