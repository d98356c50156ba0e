"""The CPU floor of a round: what the scenarios' own work costs with nothing else running.

``benchmarks/compare.py`` measures whole federations. This measures, in one process and one
thread, the work no runtime can skip, for each scenario of docs/benchmarks.md:

- **training**: every edge's local training, exactly as ``hierfl sim`` and
  ``benchmarks/flower_sim.py`` run it (``hierfl.sim.scenarios.digits_task``: the edge's
  partition, ``SupervisedTask``, 2 local epochs, one torch thread), from the scenario's
  initial model. Both systems run this same code, so it bounds Flower's round too.
- **wire**: what hierfl's design adds per update at the least: the edge encodes its delta
  (msgpack, zstd level 1, BLAKE3, Ed25519 signature: ``encode_frame`` with a ``Signer``) and
  its fog checks the signature and decodes it (``decode_frame``). Model fan-out, aggregation,
  the brokers and the event loops come on top and are not counted.

Each figure is the median over ``--rounds`` rounds of the per-round sum over the edges
(thread CPU time). ``*_floor_s`` divides the CPU by the cores: the shortest round that work
allows with perfect parallelism and nothing else on the machine.

Usage::

    .venv/bin/python benchmarks/floor.py                      # both scenarios, 3 rounds
    .venv/bin/python benchmarks/floor.py --compare benchmarks/results/compare-2026-12-07e.jsonl

With ``--compare FILE`` (a ``compare.py`` output), each line also carries Flower-sim's median
round from that file's last summary of the scenario, the issue-10 target (half of it) and
``floor_over_target`` (above 1: the target is below the floor on this machine). One JSON line
per scenario on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hierfl.model.torch_adapter import model_to_vector, vector_to_model
from hierfl.sim.datasets import digits_data, write_data
from hierfl.sim.scenarios import digits_model, digits_task
from hierfl.wire.codec import DecodeLimits, decode_frame, encode_frame
from hierfl.wire.frames import UpdateFrame
from hierfl.wire.signing import Signer, unverified_claims

SCENARIOS = {"digits-20": False, "digits-20-wide": True}  # name -> wide
LOCAL_EPOCHS = 2  # hierfl sim's k1 and flower_digits.LOCAL_EPOCHS


def _flower_rounds(path: Path) -> dict[str, float]:
    """Flower-sim's median round per scenario from the last summary lines of a compare file."""
    out: dict[str, float] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("bench") != "summary":
            continue
        flower = (rec.get("systems") or rec).get("flower-sim") or {}
        if isinstance(flower, dict) and flower.get("median_round_s"):
            out[str(rec.get("scenario"))] = float(flower["median_round_s"])
    return out


def measure(scenario: str, *, edges: int, rounds: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    wide = SCENARIOS[scenario]
    with tempfile.TemporaryDirectory(prefix="hierfl-floor-") as tmp:
        path = Path(tmp) / "data.npz"  # the sim's data file: each edge loads its partition
        write_data(path, digits_data(edges, 0))
        tasks = [digits_task(edge_id=f"e{i:03d}", fog_id=f"fog{i % 4}", index=i,
                             num_edges=edges, wide=wide, data=str(path)) for i in range(edges)]
    initial = model_to_vector(digits_model(wide))
    models = [t.build_model() for t in tasks]
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    limits = DecodeLimits(max_params=initial.size)
    train_rounds: list[float] = []
    wire_rounds: list[float] = []
    per_edge: list[float] = []
    update_bytes = 0
    for r in range(rounds + 1):  # round 0 warms torch up: not counted
        train_cpu = wire_cpu = 0.0
        update_bytes = 0
        for i, (task, model) in enumerate(zip(tasks, models, strict=True)):
            vector_to_model(model, initial)
            t0 = time.thread_time()
            task.train(model, LOCAL_EPOCHS)
            delta = model_to_vector(model)
            np.subtract(delta, initial, out=delta)
            t1 = time.thread_time()
            signer = Signer(f"edge/fog{i % 4}/e{i:03d}", key, "floor")
            data_out = encode_frame(UpdateFrame(
                federation="floor", fog_id=f"fog{i % 4}", edge_id=f"e{i:03d}",
                base_version=r, base_seq=0, num_samples=len(task.x), delta=delta),
                signer=signer)
            sb = unverified_claims(data_out)
            if sb is None:
                raise RuntimeError("the update is not signed")
            public.verify(sb.signature, sb.message())
            decoded = decode_frame(data_out, limits=limits)
            if not isinstance(decoded, UpdateFrame) or decoded.delta.size != delta.size:
                raise RuntimeError("the update did not decode to itself")
            t2 = time.thread_time()
            update_bytes += len(data_out)
            if r:
                per_edge.append(t1 - t0)
            train_cpu += t1 - t0
            wire_cpu += t2 - t1
        if r:
            train_rounds.append(train_cpu)
            wire_rounds.append(wire_cpu)
    cores = len(os.sched_getaffinity(0))
    train = statistics.median(train_rounds)
    wire = statistics.median(wire_rounds)
    return {
        "bench": "floor", "scenario": scenario, "edges": edges, "params": int(initial.size),
        "rounds": rounds, "cores": cores,
        "train_cpu_s_per_edge_median": round(statistics.median(per_edge), 5),
        "train_cpu_s_per_round": round(train, 4),
        "wire_cpu_s_per_round": round(wire, 4),
        "uplink_bytes_per_round": update_bytes,
        "train_floor_s": round(train / cores, 4),
        "round_floor_s": round((train + wire) / cores, 4),
        "train_cpu_s_per_round_all": [round(x, 4) for x in train_rounds],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    ap.add_argument("--edges", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="rounds measured (after one warm-up)")
    ap.add_argument("--compare", type=Path, default=None,
                    help="a compare.py JSONL file: add Flower-sim's round and the 0.5x target")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.edges < 1:
        ap.error("--rounds and --edges must be at least 1")
    flower = _flower_rounds(args.compare) if args.compare is not None else {}
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for name in names:
        rec = measure(name, edges=args.edges, rounds=args.rounds)
        if name in flower:
            target = 0.5 * flower[name]
            rec.update(flower_sim_median_round_s=flower[name], target_round_s=round(target, 4),
                       floor_over_target=round(rec["round_floor_s"] / target, 3),
                       train_floor_over_target=round(rec["train_floor_s"] / target, 3),
                       compare_file=str(args.compare))
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
