"""Update compression, end to end: bytes each edge sent, accuracy reached, codec speed.

For every codec and scenario it runs a real hierfl federation (``hierfl.sim``: MQTT and
Kafka brokers, cloud, 4 fogs, 20 edges, k2 = 1; the shared scenarios of
docs/benchmarks.md) with that codec on the edge -> fog uplink, and times the codec
on a 1,000,000-parameter update on one core. One JSON line per codec and scenario::

    {"codec": "topk+int8:fraction=0.01+ef", "scenario": "digits-20", "bytes_per_update": ...,
     "ratio_vs_f32": ..., "encode_mb_s": ..., "decode_mb_s": ..., "final_acc": ...,
     "final_acc_f32": ...}

- ``codec``: a codec spec (docs/compression.md); a ``+ef`` suffix turns the edges' error
  feedback on (``EdgeSettings.error_feedback``), without it error feedback is off.
- ``bytes_per_update``: edge -> fog bytes the observer saw on the broker over the whole run
  (whole wire frames: header, msgpack, zstd, ids, metrics) divided by the number of updates.
- ``ratio_vs_f32``: ``bytes_per_update`` of the ``raw`` (float32) run of the same scenario
  divided by this codec's; the raw run is always made, first, as the reference. hierfl's raw
  frames are already zstd-compressed, so this is the conservative ratio.
- ``ratio_vs_dense_f32``: the dense float32 payload (4 bytes per parameter, what an
  uncompressed float32 update is) divided by this codec's whole frame, overhead included.
- ``encode_mb_s`` / ``decode_mb_s``: float32 megabytes (4 MB for 1 M parameters) per second,
  median of ``--runs`` timings on one thread; with ``+ef`` encoding includes the error-feedback
  step (add the residual, encode, decode what was sent, keep the difference).
- ``final_acc`` / ``final_acc_f32``: test accuracy of the global model after the last round,
  with this codec and with ``raw``.

Usage: python benchmarks/compression.py [--scenario digits-20|digits-20-wide|all]
       [--codecs SPEC ...] [--rounds N] [--quick] [--mode inprocess|processes] [--out DIR]
       [--runs R] [--timeout S]
"""

from __future__ import annotations

import os

# One core, as on an edge device: must be set before numpy/torch are imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from hierfl.compression import ErrorFeedback, decode_vector, make_codec  # noqa: E402
from hierfl.sim.runner import SimConfig, run_sim_async  # noqa: E402

#: scenario -> (wide model, rounds), from docs/benchmarks.md
SCENARIOS = {"digits-20": (False, 30), "digits-20-wide": (True, 10)}
QUICK_ROUNDS = {"digits-20": 5, "digits-20-wide": 2}
EF_SUFFIX = "+ef"
REFERENCE = "raw"
DEFAULT_CODECS = [
    "raw",
    "fp16",
    "int8",
    "topk:fraction=0.01",
    "topk:fraction=0.01+ef",
    "topk:fraction=0.05+ef",
    "topk+int8:fraction=0.01",
    "topk+int8:fraction=0.01+ef",
    "topk+int8:fraction=0.02+ef",
    "topk+int8:fraction=0.05+ef",
    "randk:fraction=0.05,scaled=false+ef",
    "randk:fraction=0.05",
]
SPEED_PARAMS = 1_000_000


def split_label(label: str) -> tuple[str, bool]:
    """``"topk:fraction=0.01+ef"`` -> ``("topk:fraction=0.01", True)``."""
    if label.endswith(EF_SUFFIX):
        return label[: -len(EF_SUFFIX)], True
    return label, False


def _update(n: int) -> np.ndarray:
    """A 1 M-parameter update: small Gaussian deltas, a few heavier coordinates."""
    rng = np.random.default_rng(42)
    delta = rng.normal(0.0, 1e-3, n).astype(np.float32)
    delta[rng.choice(n, size=max(1, n // 1000), replace=False)] *= 20
    return delta


def codec_speed(label: str, runs: int) -> tuple[float, float]:
    """Encode and decode MB/s (float32 megabytes per second) of a 1 M-parameter update."""
    spec, feedback = split_label(label)
    codec = make_codec(spec)
    delta = _update(SPEED_PARAMS)
    rng = np.random.default_rng(0)
    ef = ErrorFeedback(delta.size)

    def encode() -> dict[str, Any]:
        return ef.compress(delta, codec, rng)[0] if feedback else codec.encode(delta, rng)

    encode_s: list[float] = []
    decode_s: list[float] = []
    for i in range(runs + 1):  # the first pass warms caches and is not counted
        t0 = time.perf_counter()
        fields = encode()
        t1 = time.perf_counter()
        decode_vector(fields, delta.size)
        t2 = time.perf_counter()
        if i:
            encode_s.append(t1 - t0)
            decode_s.append(t2 - t1)
    mb = delta.nbytes / 1e6
    return (round(mb / statistics.median(encode_s), 1), round(mb / statistics.median(decode_s), 1))


def federate(label: str, scenario: str, rounds: int, a: argparse.Namespace) -> dict[str, Any]:
    """Run one federation; return its bytes per update and final accuracy.

    A run that has not finished after ``a.timeout`` seconds is stopped (every service and
    broker it started is shut down), reported on stderr, and tried once more.
    """
    spec, feedback = split_label(label)
    wide, _ = SCENARIOS[scenario]
    slug = "".join(c if c.isalnum() else "_" for c in label)
    for attempt in (1, 2):
        cfg = SimConfig(scenario="digits", fogs=4, edges=20, rounds=rounds, k1=2, k2=1,
                        wide=wide, mode=a.mode, out=a.out / scenario / slug, live=False,
                        codec=spec, error_feedback=feedback)
        try:
            report = asyncio.run(asyncio.wait_for(run_sim_async(cfg), a.timeout))
            break
        except TimeoutError:
            print(f"{label} on {scenario}: not finished after {a.timeout:.0f} s (attempt "
                  f"{attempt}, federation {cfg.federation}); stopped", file=sys.stderr, flush=True)
    else:
        raise RuntimeError(f"{label} on {scenario}: timed out twice")
    totals = report["totals"]
    if totals["updates"] == 0:
        raise RuntimeError(f"{label} on {scenario}: no update was seen")
    return {"bytes_per_update": totals["edge_fog_bytes"] / totals["updates"],
            "final_acc": report["final_accuracy"]}


def n_params(scenario: str) -> int:
    """Parameters of the scenario's model."""
    from hierfl.sim.scenarios import scenario_model  # noqa: PLC0415 - torch, only when run

    return sum(p.numel() for p in scenario_model("digits", wide=SCENARIOS[scenario][0])
               .parameters())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON line per codec and scenario."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="all", choices=[*SCENARIOS, "all"])
    p.add_argument("--codecs", nargs="+", default=DEFAULT_CODECS, metavar="SPEC",
                   help="codec specs; a '+ef' suffix turns error feedback on")
    p.add_argument("--rounds", type=int, default=None, help="override the scenario's rounds")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_ROUNDS} rounds, 3 speed runs")
    p.add_argument("--runs", type=int, default=None, help="speed timings per codec (default 9)")
    p.add_argument("--mode", default="inprocess", choices=["inprocess", "processes"])
    p.add_argument("--out", type=Path, default=None, help="keep the sim reports here")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds one federation may take before it is stopped and retried")
    a = p.parse_args(argv)
    for label in a.codecs:  # fail fast on a bad spec, before any federation runs
        make_codec(split_label(label)[0])
    runs = a.runs or (3 if a.quick else 9)
    a.out = a.out or Path(tempfile.mkdtemp(prefix="hierfl-compression-"))
    speed = {label: codec_speed(label, runs) for label in dict.fromkeys(a.codecs)}
    for scenario in list(SCENARIOS) if a.scenario == "all" else [a.scenario]:
        rounds = a.rounds or (QUICK_ROUNDS[scenario] if a.quick else SCENARIOS[scenario][1])
        ref = federate(REFERENCE, scenario, rounds, a)
        for label in dict.fromkeys(a.codecs):
            res = ref if label == REFERENCE else federate(label, scenario, rounds, a)
            print(json.dumps({
                "codec": label,
                "scenario": scenario,
                "bytes_per_update": round(res["bytes_per_update"], 1),
                "ratio_vs_f32": round(ref["bytes_per_update"] / res["bytes_per_update"], 2),
                "ratio_vs_dense_f32": round(4 * n_params(scenario) / res["bytes_per_update"], 2),
                "encode_mb_s": speed[label][0],
                "decode_mb_s": speed[label][1],
                "final_acc": round(res["final_acc"], 4),
                "final_acc_f32": round(ref["final_acc"], 4),
            }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
