"""Why a robust rule loses accuracy under an attack: per-fog-round statistics, without brokers.

Replays the setting of ``benchmarks/robust.py`` in one process, with no MQTT, Kafka or
services: digits-20 (the same tasks, partition and seeds as ``hierfl sim``), 4 fogs of 5 edges,
k1 = 2, k2 = 1, the last edge of each fog Byzantine, the rule at every fog, FedAvg at the cloud
over the fog aggregates weighted as the fogs weight them (robust rule: contributors x median
claim). Its final accuracies match the simulator's cell for cell (every round there waits for
all 5 updates, so the order of events does not matter).

For every fog round it records, against the mean ``m`` of the 4 honest updates (with attack
``none`` the fog's last edge is honest too, and ``m`` is still the mean of the other 4):

- ``rel_error``: ``||F - m|| / ||m||``, how far the rule's result is from the honest mean;
- ``progress``: ``<F - m, m> / ||m||^2``, the part of that error along the honest direction
  (negative: the round undoes progress);
- ``attacker_norm``: the attacker's norm over the median honest norm;
- ``honest_spread``: mean ``||h_i - m||`` over ``||m||``, the heterogeneity the rule faces;
- ``isolated``: whether no honest update has the attacker among its ``n - 1`` nearest
  neighbours (then nearest-neighbour mixing with ``nnm_f = 1`` recovers ``m`` exactly).

Usage:
    python benchmarks/robust_diagnose.py median sign-flip [--params '{"nnm_f": 1}']
        [--rounds 30] [--scale K]

Prints one JSON object: the final accuracy and the means of the statistics over all fog rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from hierfl.aggregation import make_aggregator  # noqa: E402
from hierfl.aggregation.fedavg import fedavg  # noqa: E402
from hierfl.aggregation.mixing import nnm_coefficients  # noqa: E402
from hierfl.sim.attacks import gaussian, scaled, sign_flip  # noqa: E402

FOGS, PER_FOG = 4, 5
ATTACKS = ("none", "sign-flip", "sign-flip-1", "scale", "gaussian")


def _attack(name: str, delta: np.ndarray, k: float | None, rng: np.random.Generator) -> Any:
    if name in ("sign-flip", "sign-flip-1"):
        return sign_flip(delta, k or (4.0 if name == "sign-flip" else 1.0))
    if name == "scale":
        return scaled(delta, k or 100.0)
    return gaussian(delta.size, 1.0, rng)


def _round_stats(stack: np.ndarray, result: np.ndarray) -> list[float]:
    honest = stack[:-1].astype(np.float64)
    m = honest.mean(axis=0)
    mm = float(m @ m)
    err = result - m
    return [
        float(np.linalg.norm(err)) / mm**0.5,
        float(err @ m) / mm,
        float(np.linalg.norm(stack[-1])) / float(np.median(np.linalg.norm(honest, axis=1))),
        float(np.linalg.norm(honest - m, axis=1).mean()) / mm**0.5,
        float(not nnm_coefficients(stack, 1)[:-1, -1].any()),
    ]


def run(
    rule: str, params: dict[str, Any], attack: str, rounds: int, k: float | None
) -> dict[str, Any]:
    """Run the replay; return the final accuracy and the mean per-round statistics."""
    import torch  # noqa: PLC0415

    from hierfl.model.torch_adapter import model_to_vector, vector_to_model  # noqa: PLC0415
    from hierfl.sim.scenarios import digits_data, digits_model, digits_task, evaluate  # noqa: PLC0415

    torch.set_num_threads(1)
    agg = make_aggregator(rule, params)
    data = digits_data(FOGS * PER_FOG, 0)
    tasks = [digits_task(edge_id=f"e{i:03d}", fog_id="", index=i) for i in range(FOGS * PER_FOG)]
    rngs = [np.random.default_rng(zlib.crc32(f"e{i:03d}".encode())) for i in range(len(tasks))]
    model = digits_model()
    weights = model_to_vector(model).astype(np.float32)
    stats: list[list[float]] = []
    for _ in range(rounds):
        fog_deltas, fog_weights = [], []
        for f in range(FOGS):
            deltas, claims = [], []
            for i in range(f * PER_FOG, (f + 1) * PER_FOG):
                vector_to_model(model, weights)
                claims.append(tasks[i].train(model, 2).num_samples)
                delta = (model_to_vector(model) - weights).astype(np.float32)
                last = i == (f + 1) * PER_FOG - 1
                deltas.append(_attack(attack, delta, k, rngs[i]) if last and attack != "none"
                              else delta)
            stack = np.stack(deltas)
            result = agg(stack, np.array(claims, dtype=np.float64))
            stats.append(_round_stats(stack, result))
            fog_deltas.append(result)
            fog_weights.append(PER_FOG * float(np.median(claims)) if agg.robust else sum(claims))
        weights = (weights + fedavg(np.stack(fog_deltas), np.array(fog_weights))).astype(
            np.float32
        )
    vector_to_model(model, weights)
    accuracy, _ = evaluate(model, data.x_test, data.y_test)
    means = np.mean(stats, axis=0)
    keys = ("rel_error", "progress", "attacker_norm", "honest_spread", "isolated")
    return {"rule": rule, "params": params, "attack": attack, "rounds": rounds, "scale": k,
            "final_accuracy": round(accuracy, 4), **{k_: round(float(v), 3)
                                                      for k_, v in zip(keys, means, strict=True)}}


def main() -> None:
    """Parse arguments, run, print the JSON record."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rule")
    p.add_argument("attack", choices=ATTACKS)
    p.add_argument("--params", default="{}", help="JSON parameters of the rule")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--scale", type=float, default=None, help="factor k of the attack")
    args = p.parse_args()
    print(json.dumps(run(args.rule, json.loads(args.params), args.attack, args.rounds,
                         args.scale)))


if __name__ == "__main__":
    main()
