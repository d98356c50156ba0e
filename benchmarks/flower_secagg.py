"""Flower 1.42's SecAgg+ on the region sizes of benchmarks/secagg.py, for comparison; JSON.

Runs in ``.venv-flower`` (``benchmarks/install_flower.sh VENV sim``), not in hierfl's venv.
One ``run_simulation`` per (edges, model), each in its own process (Ray starts cold each time,
as in benchmarks/flower_sim.py): a legacy ``ServerApp`` running ``DefaultWorkflow`` with
``fit_workflow=SecAggPlusWorkflow(num_shares=k + 1, reconstruction_threshold=t)`` (the same
neighbourhood size and threshold hierfl picks: ``k + 1`` is the edge and its k neighbours;
Flower's complete graph when ``num_shares`` equals the number of clients) over ``FedAvg``
with no evaluation, and a ``ClientApp`` with ``mods=[secaggplus_mod]`` whose ``fit`` returns
a fixed random update of the model's size without training, so only the protocol is timed.

Prints one line per run::

    {"system": "flwr-1.42.0", "edges": 100, "model": "digits", "params": 4810,
     "num_shares": 15, "threshold": 11, "round_s": .., "wall_s": .., "ok": true}

- ``round_s``: from the strategy's ``configure_fit`` (the SecAgg+ setup stage starts) to its
  ``aggregate_fit`` (the unmasked sum is handed over), on the ServerApp's clock: the whole
  secure round as Flower's simulation engine runs it, the ClientApps in Ray actors
  (``num_cpus = 1`` each, so as many at a time as there are cores) and messages in memory.
  The in-memory grid polls for replies every 0.1 s, so each of the four stages costs at
  least that.
  Two rounds run; ``round_s`` is the second (``first_round_s`` also starts the Ray actors).
- ``wall_s``: the whole ``run_simulation`` call (Ray start-up included).

Usage: .venv-flower/bin/python benchmarks/flower_secagg.py [--edges 5,20,100]
       [--models digits,wide] [--one EDGES,MODEL]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

MODELS = {"digits": 64 * 64 + 64 + 64 * 10 + 10, "wide": 64 * 1024 + 1024 + 1024 * 1024 + 1024
          + 1024 * 10 + 10}


def _degree(n: int) -> int:
    # hierfl/secagg/graph.py: complete graph up to 32 edges, else 2 * ceil(log2 n)
    return n - 1 if n <= 32 else min(n - 1, 2 * math.ceil(math.log2(n)))


def _threshold(m: int) -> int:
    # hierfl/secagg/params.py: floor(2 m / 3) + 1, at least 2
    return min(m, max(2, math.floor(2 * m / 3) + 1))


def run_one(n: int, model: str) -> dict[str, Any]:
    """One secure round of Flower's SecAgg+ with ``n`` clients."""
    import numpy as np  # noqa: PLC0415 (only in .venv-flower)
    from flwr.client import NumPyClient  # noqa: PLC0415
    from flwr.client.mod import secaggplus_mod  # noqa: PLC0415
    from flwr.clientapp import ClientApp  # noqa: PLC0415
    from flwr.common import Context, ndarrays_to_parameters  # noqa: PLC0415
    from flwr.server import LegacyContext, ServerApp, ServerConfig  # noqa: PLC0415
    from flwr.server.strategy import FedAvg  # noqa: PLC0415
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow  # noqa: PLC0415
    from flwr.simulation import run_simulation  # noqa: PLC0415

    dim = MODELS[model]
    m = _degree(n) + 1
    t = _threshold(m)
    marks: dict[int, dict[str, float]] = {}

    class Timed(FedAvg):  # type: ignore[misc]
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            marks.setdefault(server_round, {})["start"] = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            out = super().aggregate_fit(server_round, results, failures)
            marks[server_round]["end"] = time.perf_counter()
            marks[server_round]["results"] = len(results)
            return out

    class Fixed(NumPyClient):  # type: ignore[misc]
        def __init__(self, index: int) -> None:
            self.update = (np.random.default_rng(index).normal(size=dim) * 0.001).astype(
                np.float32
            )

        def fit(self, parameters: Any, config: Any) -> Any:
            return [self.update], 1, {}

    def client_fn(context: Context) -> Any:
        return Fixed(int(context.node_config.get("partition-id", 0))).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Any, context: Context) -> None:
        strategy = Timed(
            fraction_fit=1.0, min_fit_clients=n, min_available_clients=n, fraction_evaluate=0.0,
            initial_parameters=ndarrays_to_parameters([np.zeros(dim, dtype=np.float32)]),
        )
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=2),
                               strategy=strategy)
        DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
            num_shares=m if m < n else 1.0, reconstruction_threshold=t,
        ))(grid, legacy)

    start = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    wall = time.perf_counter() - start
    import flwr  # noqa: PLC0415

    ok = all("end" in marks.get(r, {}) and marks[r]["results"] == n for r in (1, 2))
    return {
        "system": f"flwr-{flwr.__version__}", "edges": n, "model": model, "params": dim,
        "num_shares": m, "threshold": t,
        "round_s": round(marks[2]["end"] - marks[2]["start"], 4) if ok else None,
        "first_round_s": round(marks[1]["end"] - marks[1]["start"], 4) if ok else None,
        "wall_s": round(wall, 3), "ok": ok,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", default="5,20,100")
    ap.add_argument("--models", default="digits,wide")
    ap.add_argument("--one", help="EDGES,MODEL: run one in this process")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    if args.one:
        n, model = args.one.split(",")
        print(json.dumps(run_one(int(n), model)), flush=True)
        return 0
    for model in args.models.split(","):
        for n in args.edges.split(","):
            try:
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", f"{n},{model}"], capture_output=True,
                    text=True, timeout=args.timeout, check=False,
                )
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                row = json.loads(lines[-1]) if lines else {
                    "system": "flwr", "edges": int(n), "model": model, "ok": False,
                    "error": proc.stderr[-800:],
                }
            except subprocess.TimeoutExpired:
                row = {"system": "flwr", "edges": int(n), "model": model, "ok": False,
                       "error": f"timed out after {args.timeout} s"}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
