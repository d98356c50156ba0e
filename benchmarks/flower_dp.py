"""Flower 1.42's central DP (server-side fixed clipping) on the sensors population, for privacy.py.

The Flower half of ``benchmarks/privacy.py``'s comparison (b); run with Flower's venv
(``.venv-flower/bin/python``), which has hierfl installed for the data, model and training.
Flower's simulation engine (``run_simulation``, Ray actors with ``num_cpus=1``, as
``benchmarks/flower_sim.py``) runs ``--clients`` ClientApps, each one sensor of
``hierfl.sim.scenarios.sensors_data(clients, 4, 0)`` training ``SupervisedTask`` (batch 16,
lr 0.05, seed 1000 + index, its shuffle generator kept across rounds in the node's state, as
flower_digits.py does) for ``--epochs`` epochs. The ServerApp runs ``FedAvg`` with every
client every round and uniform weights, wrapped in ``DifferentialPrivacyServerSideFixedClipping``
(clip each update to ``--clip``, N(0, (sigma C / n)^2) on the average) with Flower's
``RdpAccountant`` (dp-accounting; "no-amplification" sampling, the only one the accounted
fixed-clipping wrapper accepts). It evaluates on the test split after every round.

Writes ``--out`` (JSON: accuracy per round, Flower's epsilon at ``--delta``, round times) and
``flower_final.npz`` beside it (the final model as hierfl's flat vector, for the attacks).

Needs ``flwr[simulation]==1.42.0`` and ``dp-accounting==0.6.0`` (``flwr[dp]``) in that venv.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402
from flwr.supercore.privacy_accounting import (  # noqa: E402
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant  # noqa: E402

from hierfl.edge.trainer import SupervisedTask  # noqa: E402
from hierfl.model.torch_adapter import model_to_vector  # noqa: E402
from hierfl.sim.scenarios import evaluate, sensors_data, sensors_model  # noqa: E402

_GEN_KEY = "hierfl-shuffle"
_WEIGHT_KEY = "dp-weight"


def _apps(work: Path, args: argparse.Namespace) -> tuple[ServerApp, ClientApp]:
    client_app = ClientApp()

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        index = int(context.node_config["partition-id"])
        with np.load(work / f"part{index}.npz", allow_pickle=False) as part:
            x, y = torch.from_numpy(part["x"]), torch.from_numpy(part["y"])
        task = SupervisedTask(sensors_model, x, y, batch_size=16, lr=0.05, seed=1000 + index)
        gen = task._gen
        if _GEN_KEY in context.state.config_records:
            state = context.state.config_records[_GEN_KEY]["state"]
            gen.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))  # type: ignore[arg-type]
        model = task.build_model()
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        result = task.train(model, args.epochs)
        context.state.config_records[_GEN_KEY] = ConfigRecord(
            {"state": gen.get_state().numpy().tobytes()})
        # uniform weights: what Flower's accounted fixed-clipping path requires (and what
        # hierfl's DPAggregator does: a claimed sample count buys no edge more than C / n)
        metrics = MetricRecord({_WEIGHT_KEY: 1, "num-examples": result.num_samples})
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def _server(grid: Grid, context: Context) -> None:
        torch.set_num_threads(1)
        np.random.seed(args.seed)  # Flower draws its noise from numpy's global generator
        data = sensors_data(args.clients, 4, 0)
        model = sensors_model()
        accs: list[float] = []
        t_models: list[float] = []

        def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            acc, loss = evaluate(model, data.x_test, data.y_test)
            t_models.append(time.time())
            if server_round > 0:
                accs.append(acc)
            return MetricRecord({"accuracy": acc, "loss": loss})

        accountant = RdpAccountant(PrivacyConfig(
            target_delta=args.delta, population_size=args.clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION))
        inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=args.clients,
                       min_available_nodes=args.clients, weighted_by_key=_WEIGHT_KEY)
        strategy = DifferentialPrivacyServerSideFixedClipping(
            inner, args.sigma, args.clip, args.clients, accountant=accountant)
        result = strategy.start(grid, ArrayRecord(model.state_dict()),
                                num_rounds=args.rounds, evaluate_fn=central_eval)
        model.load_state_dict(result.arrays.to_torch_state_dict())
        np.savez(args.out.parent / "flower_final.npz", vec=model_to_vector(model))
        spent = strategy.privacy_spent()
        assert spent is not None
        round_s = [b - a for a, b in itertools.pairwise(t_models)]
        args.out.write_text(json.dumps({
            "system": f"flwr-{version('flwr')}",
            "acc_by_round": accs,
            "epsilon": spent.epsilon,
            "delta": spent.delta,
            "releases": spent.num_releases,
            "median_round_s": statistics.median(round_s[1:] if len(round_s) > 1 else round_s),
        }))

    return server_app, client_app


def main(argv: list[str] | None = None) -> int:
    """Run the federation and write the result files."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--sigma", type=float, required=True)
    ap.add_argument("--clip", type=float, required=True)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    work = Path(tempfile.mkdtemp(prefix="flower-dp-"))
    for i, (x, y) in enumerate(sensors_data(args.clients, 4, 0).parts):
        np.savez(work / f"part{i}.npz", x=x, y=y)
    server_app, client_app = _apps(work, args)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=args.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    if not args.out.exists():
        print("[flower_dp] the ServerApp wrote no result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
