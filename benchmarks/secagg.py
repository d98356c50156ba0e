"""What secure aggregation costs in one fog region: hierfl's SecAgg+ core, in process; JSON.

One JSON line per (region size, model) on stdout, from one in-process round driven the way the
fog and edges will drive it (every message packed and unpacked with msgpack, as the transport
will carry it), optionally with a share of the edges dropping out after sharing (the costliest
case for the fog: it reconstructs their secret keys and recomputes their pairwise masks)::

    {"system": "hierfl", "edges": 100, "params": 4810, "k": 14, "t": 11, "dropped": 0,
     "edge_cpu_ms": {"advertise": .., "share": .., "masked": .., "check": .., "unmask": ..},
     "edge_cpu_ms_max": {..}, "edge_uplink_bytes": {..}, "edge_downlink_bytes": {..},
     "fog_cpu_ms": {"advertise": .., "share": .., "masked": .., "check": .., "unmask": ..},
     "total_s": .., "total_cpu_s": .., "parallel_round_s": .., "plain_sum_ms": .., "exact": true}

The round includes the consistency check (``check``: the fog sends U3, each edge signs it
with its Ed25519 identity key, each edge verifies t - 1 of its neighbours' signatures before
it reveals a share; docs/secure-aggregation.md), as every wired round runs it.

- ``edge_cpu_ms``: thread CPU of one edge per stage, median over edges (``_max``: the slowest),
  unpacking the fog's message and packing the edge's answer included.
- ``edge_uplink_bytes`` / ``edge_downlink_bytes``: msgpack bytes an edge sends / receives per
  stage (median over edges); the plain update would be ``4 * params`` bytes of float32.
- ``fog_cpu_ms``: thread CPU of the fog per stage (receiving every edge's message, then closing
  the stage; ``unmask`` includes reconstructing secrets and removing the masks).
- ``total_s``: wall time of the whole round run sequentially in this one process (every edge's
  work and the fog's, one after another): the in-process cost of the protocol.
- ``total_cpu_s``: the CPU time of the same (this process): ``total_s`` less what other
  processes on a shared machine took.
- ``parallel_round_s``: sum over stages of (slowest edge + fog), the round's length if the edges
  ran in parallel and the network were free; what a deployment adds on top is transport.
- ``plain_sum_ms``: the fog summing the same n float32 updates in the clear, for scale.
- ``exact``: the unmasked sum equals the plain fixed-point sum of those who sent.

Flower's SecAgg+ (``secaggplus_mod`` with ``SecAggPlusWorkflow``) on the same sizes runs from
``benchmarks/flower_secagg.py`` in ``.venv-flower`` when that exists (``--flower``); its lines
carry ``"system": "flwr-1.42.0"``.

``--part wired`` measures the round as the services run it instead: SecAgg+ over a real MQTT
broker (mosquitto, started here), every message in a signed envelope, the fog and each edge
with an MQTT session of its own (the drivers of ``hierfl/secagg/driver.py``, all in this one
process; edges return a fixed update, no training), against hierfl's plain round over the same
broker in the same run (each edge publishes a signed update frame, the fog verifies, decodes
and averages them), interleaved, median of ``--repeats``::

    {"system": "hierfl-wired", "edges": 20, "params": 4810, "k": 19, "t": 14,
     "secure_round_s": .., "plain_round_s": .., "ratio": .., "stage_s": {..}, "exact": true}

``--part accuracy`` runs ``hierfl sim digits --fogs 4 --edges 20 --rounds 30`` (digits-20)
twice with the same seed, plain and ``--secagg``, and reports both final accuracies and median
round times.

Usage: python benchmarks/secagg.py [--part core|wired|accuracy] [--edges 5,20,100]
       [--models digits,wide] [--dropout 0.0] [--flower] [--repeats 3]
       [--out benchmarks/results/secagg-<date>.jsonl]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

# One BLAS thread, as an edge or fog process handling one round would run and as Ray gives
# each Flower ClientApp actor (OMP_NUM_THREADS = num_cpus = 1): OpenBLAS threads spinning in
# np.linalg.norm otherwise double the CPU time on a 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import msgpack
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hierfl.secagg import (
    EdgeSecAgg,
    FixedPoint,
    FogSecAgg,
    SecAggParams,
    SecAggResult,
)

# digits_model() of hierfl/sim/scenarios.py: 64-64-10 and 64-1024-1024-10 MLPs
MODELS = {"digits": 64 * 64 + 64 + 64 * 10 + 10, "wide": 64 * 1024 + 1024 + 1024 * 1024 + 1024
          + 1024 * 10 + 10}
STAGES = ("advertise", "share", "masked", "check", "unmask")
ROOT = Path(__file__).resolve().parent.parent


def _pack(message: Any) -> bytes:
    return msgpack.packb(message.to_wire(), use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def run_region(n: int, dim: int, dropout: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """One full round for ``n`` edges and ``dim`` parameters; see the module docstring."""
    roster = tuple(f"edge-{i:03d}" for i in range(n))
    params = SecAggParams("fog-a", 1, roster, dim, FixedPoint.for_region(n, 1.0))

    def update(e: str) -> np.ndarray:
        # made on demand: 100 wide updates held at once would be 450 MB
        rng = np.random.default_rng([seed, roster.index(e)])
        return (rng.normal(size=dim) * 0.001).astype(np.float32)

    n_drop = round(dropout * n)
    dropped = set(roster[1 : 1 + n_drop])
    edge_cpu: dict[str, dict[str, float]] = defaultdict(dict)
    up: dict[str, dict[str, int]] = defaultdict(dict)
    down: dict[str, dict[str, int]] = defaultdict(dict)
    fog_cpu: dict[str, float] = {}

    def edge_step(stage: str, e: str, call: Any, incoming: bytes | None) -> bytes:
        t = time.thread_time()
        out = _pack(call(_unpack(incoming)) if incoming is not None else call())
        edge_cpu[stage][e] = time.thread_time() - t
        up[stage][e] = len(out)
        if incoming is not None:
            down[stage][e] = len(incoming)
        return out

    # provisioned identity keys (not per round): the consistency check's signatures
    identity = {e: Ed25519PrivateKey.generate() for e in roster}
    public = {e: k.public_key() for e, k in identity.items()}

    def verify(e: str, message: bytes, signature: bytes) -> bool:
        try:
            public[e].verify(signature, message)
        except InvalidSignature:
            return False
        return True

    start, start_cpu = time.perf_counter(), time.process_time()
    clients = {e: EdgeSecAgg(params, e, sign=identity[e].sign, verify=verify) for e in roster}
    fog = FogSecAgg(params, consistency=True, verify=verify)
    alive = [e for e in roster if e not in dropped]
    calls = {
        "advertise": lambda e: clients[e].advertise,
        "share": lambda e: clients[e].on_roster,
        "masked": lambda e: lambda m: clients[e].on_shares(m, current[0]),
        "check": lambda e: clients[e].on_check,
        "unmask": lambda e: clients[e].on_unmask,
    }
    closes = {
        "advertise": fog.close_advertise, "share": fog.close_share,
        "masked": fog.close_masked_check, "check": fog.close_check, "unmask": fog.finish,
    }
    replies: dict[str, bytes] = {}
    result = None
    current = [np.zeros(0, dtype=np.float32)]
    making_s = making_cpu_s = 0.0  # time spent making test updates, left out of total_s
    for stage in STAGES:
        fog_cpu[stage] = 0.0
        # the fog receives each message as it comes, so it never holds n masked inputs
        for e in roster if stage in ("advertise", "share") else alive:
            if stage == "masked":
                t, tc = time.perf_counter(), time.process_time()
                current[0] = update(e)
                making_s += time.perf_counter() - t
                making_cpu_s += time.process_time() - tc
            data = edge_step(stage, e, calls[stage](e), replies.get(e))
            t = time.thread_time()
            fog.receive(_unpack(data))
            fog_cpu[stage] += time.thread_time() - t
        t = time.thread_time()
        out = closes[stage]()
        replies = {} if stage == "unmask" else {e: _pack(m) for e, m in out.items()}
        fog_cpu[stage] += time.thread_time() - t
        result = out
    total_s = time.perf_counter() - start - making_s
    total_cpu_s = time.process_time() - start_cpu - making_cpu_s

    expected = np.zeros(dim, dtype=np.int64)
    plain = np.zeros(dim, dtype=np.float32)
    plain_sum_s = 0.0
    for e in alive:
        x = update(e)
        expected += params.codec.quantize(x)
        t = time.perf_counter()
        plain += x
        plain_sum_s += time.perf_counter() - t

    def med(d: dict[str, dict[str, float]], scale: float = 1.0) -> dict[str, float]:
        return {s: round(statistics.median(d[s].values()) * scale, 3) for s in STAGES if d[s]}

    return {
        "system": "hierfl", "edges": n, "params": dim, "k": params.k, "t": params.t,
        "dropped_after_share": len(dropped),
        "edge_cpu_ms": med(edge_cpu, 1e3),
        "edge_cpu_ms_max": {s: round(max(edge_cpu[s].values()) * 1e3, 3) for s in STAGES},
        "edge_uplink_bytes": {s: int(v) for s, v in med(up).items()},  # type: ignore[arg-type]
        "edge_downlink_bytes": {s: int(v) for s, v in med(down).items()},  # type: ignore[arg-type]
        "plain_update_bytes": 4 * dim,
        "fog_cpu_ms": {s: round(v * 1e3, 3) for s, v in fog_cpu.items()},
        "total_s": round(total_s, 4),
        "total_cpu_s": round(total_cpu_s, 4),
        "parallel_round_s": round(
            sum(max(edge_cpu[s].values()) + fog_cpu[s] for s in STAGES), 4
        ),
        "plain_sum_ms": round(plain_sum_s * 1e3, 3),
        "exact": isinstance(result, SecAggResult)
        and bool(np.array_equal(params.codec.decode_integers(result.total), expected)),
    }


async def _wired(url: str, n: int, dim: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """The wired secure round and the plain round over the broker at ``url``; see above."""
    import asyncio  # noqa: PLC0415
    import contextlib  # noqa: PLC0415
    import random  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from hierfl import topics  # noqa: PLC0415
    from hierfl.config import MqttSettings  # noqa: PLC0415
    from hierfl.provision import ProjectSpec, provision  # noqa: PLC0415
    from hierfl.secagg.driver import (  # noqa: PLC0415
        EdgeSecAggDriver,
        FogSecAggDriver,
        StageDeadlines,
    )
    from hierfl.security.trust import TrustStore, load_signing_key  # noqa: PLC0415
    from hierfl.transport.mqtt import MqttTransport  # noqa: PLC0415
    from hierfl.wire import UpdateFrame, encode_frame  # noqa: PLC0415
    from hierfl.wire.codec import DEFAULT_LIMITS  # noqa: PLC0415
    from hierfl.wire.signing import Signer, Verifier  # noqa: PLC0415

    fed, fog = f"bench{os.getpid()}n{n}", "north"
    ids = [f"e{i:03d}" for i in range(n)]
    rng = np.random.default_rng(seed)
    updates = {e: (rng.normal(size=dim) * 0.3 / np.sqrt(dim)).astype(np.float32) for e in ids}
    settings = MqttSettings(url=url, queue_size=100_000)
    with tempfile.TemporaryDirectory() as tmp:
        prov = provision(ProjectSpec(federation=fed, fogs={fog: tuple(ids)}), Path(tmp),
                         tls=False)
        trust = TrustStore(prov.trust_bundle, fed)

        def signer(party: str) -> Signer:
            return Signer(party, load_signing_key(prov.kit(party) / "signing.key"), fed)

        plain_got: dict[str, Any] = {}
        plain_done = asyncio.Event()
        verifier = Verifier(trust, fed)
        limits = dataclasses_replace(DEFAULT_LIMITS, expected_params=dim)
        go_topic = topics.model(fed, fog)
        async with contextlib.AsyncExitStack() as stack:
            fog_mqtt = await stack.enter_async_context(
                MqttTransport(settings, client_id=f"{fed}-fog"))

            async def fog_publish(topic: str, payload: bytes) -> None:
                await fog_mqtt.publish(topic, payload)

            driver = FogSecAggDriver(federation=fed, fog=fog, signer=signer(f"fog/{fog}"),
                                     trust=trust, publish=fog_publish, clip_norm=1.0,
                                     deadlines=StageDeadlines(60, 60, 60, 60))
            for f in [*driver.filters(), topics.update_filter(fed, fog)]:
                await fog_mqtt.subscribe(f)

            def fog_handle(topic: str, payload: bytes) -> None:
                if "/secagg/" in topic:
                    driver.handle(topic, payload)
                    return
                frame = verifier.decode(payload, limits=limits).frame  # plain: verify, decode
                plain_got[frame.edge_id] = frame
                if len(plain_got) == n:
                    plain_done.set()

            async def pump(mqtt: Any, handle: Any) -> None:
                async for m in mqtt.messages():
                    r = handle(m.topic, m.payload)
                    if r is not None:
                        await r

            tasks = [asyncio.create_task(pump(fog_mqtt, fog_handle))]
            for i, e in enumerate(ids):
                mqtt = await stack.enter_async_context(
                    MqttTransport(settings, client_id=f"{fed}-{e}"))
                esigner = signer(f"edge/{fog}/{e}")

                async def publish(topic: str, payload: bytes, m: Any = mqtt) -> None:
                    await m.publish(topic, payload)

                drv = EdgeSecAggDriver(federation=fed, fog=fog, edge=e,
                                       signer=esigner, trust=trust, publish=publish,
                                       update=lambda b, e=e: updates[e], clip_norm=1.0,
                                       random_bytes=random.Random(i).randbytes)

                async def edge_handle(topic: str, payload: bytes, drv: Any = drv, e: str = e,
                                      esigner: Any = esigner, publish: Any = publish) -> None:
                    if topic == go_topic:  # the plain round: sign and send the update
                        seq = int(payload)
                        frame = UpdateFrame(fed, fog, e, 0, seq, 10, updates[e])
                        await publish(topics.update(fed, fog, e),
                                      encode_frame(frame, signer=esigner))
                        return
                    await drv.handle(topic, payload)

                for f in [*drv.filters(), go_topic]:
                    await mqtt.subscribe(f)
                tasks.append(asyncio.create_task(pump(mqtt, edge_handle)))
            secure_s, plain_s, stages, exact = [], [], [], True
            begin = driver.begin(1, ids, dim)
            codec = begin.params().codec
            want = np.zeros(dim, dtype=np.uint32)
            for e in ids:
                want += codec.encode(updates[e])
            for r in range(repeats):
                plain_got.clear()
                plain_done.clear()
                t = time.perf_counter()
                await fog_mqtt.publish(go_topic, str(r + 1).encode())
                await asyncio.wait_for(plain_done.wait(), 300)
                mean = np.mean(np.stack([f.delta for f in plain_got.values()]), axis=0)
                plain_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                result = await driver.run_round(r + 1, ids, dim)
                secure_s.append(time.perf_counter() - t)
                stages.append(driver.last_round_s)
                exact &= bool(np.array_equal(result.total, want))
                assert mean.shape == (dim,)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    sec, pl = statistics.median(secure_s), statistics.median(plain_s)
    return {"system": "hierfl-wired", "edges": n, "params": dim, "k": begin.degree,
            "t": begin.threshold, "repeats": repeats, "secure_round_s": round(sec, 4),
            "plain_round_s": round(pl, 4), "ratio": round(sec / pl, 2),
            "secure_rounds_s": [round(x, 4) for x in secure_s],
            "plain_rounds_s": [round(x, 4) for x in plain_s],
            "stage_s": {k: round(v, 4) for k, v in stages[len(stages) // 2].items()},
            "exact": exact}


def dataclasses_replace(obj: Any, **kw: Any) -> Any:
    import dataclasses  # noqa: PLC0415

    return dataclasses.replace(obj, **kw)


def run_wired(edges: list[int], models: list[str], repeats: int) -> list[dict[str, Any]]:
    """``--part wired``: a mosquitto for the run, one line per (model, region size)."""
    import asyncio  # noqa: PLC0415

    from hierfl.sim.brokers import MqttBroker  # noqa: PLC0415

    rows = []
    with MqttBroker(prefer="mosquitto") as broker:
        for model in models:
            for n in edges:
                row = {"model": model, **asyncio.run(_wired(broker.url, n, MODELS[model],
                                                            repeats))}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def run_accuracy(rounds: int) -> list[dict[str, Any]]:
    """``--part accuracy``: digits-20 through ``hierfl sim``, plain and ``--secagg``."""
    import tempfile  # noqa: PLC0415

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("plain", "secagg"):
            out = Path(tmp) / mode
            cmd = [sys.executable, "-m", "hierfl", "sim", "digits", "--fogs", "4", "--edges",
                   "20", "--rounds", str(rounds), "--mode", "inprocess", "--seed", "0",
                   "--federation", "benchsecaggacc", "--out", str(out)]
            if mode == "secagg":
                cmd.append("--secagg")
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            report = json.loads((out / "report.json").read_text())
            row = {"system": "hierfl-sim", "scenario": "digits-20", "mode": mode,
                   "rounds": rounds, "final_accuracy": report["final_accuracy"],
                   "median_round_s": round(statistics.median(
                       r["wall_s"] for r in report["rounds"]), 3),
                   "whole_run_s": round(time.perf_counter() - t, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if len(rows) == 2:
        diff = {"system": "hierfl-sim", "scenario": "digits-20", "accuracy_points":
                round(100 * (rows[1]["final_accuracy"] - rows[0]["final_accuracy"]), 2)}
        print(json.dumps(diff), flush=True)
        rows.append(diff)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["core", "wired", "accuracy"], default="core")
    ap.add_argument("--repeats", type=int, default=3, help="--part wired: rounds each")
    ap.add_argument("--rounds", type=int, default=30, help="--part accuracy: cloud rounds")
    ap.add_argument("--edges", default="5,20,100")
    ap.add_argument("--models", default="digits,wide")
    ap.add_argument("--dropout", type=float, nargs="*", default=[0.0, 0.1],
                    help="fractions of edges dropping after sharing (one run each)")
    ap.add_argument("--flower", action="store_true",
                    help="also run Flower's SecAgg+ (benchmarks/flower_secagg.py, .venv-flower)")
    ap.add_argument("--out", default=str(
        ROOT / f"benchmarks/results/secagg-{datetime.datetime.now(datetime.UTC).date()}.jsonl"
    ), help="append the lines here ('' for nowhere)")
    args = ap.parse_args(argv)
    lines = []
    if args.part == "wired":
        lines = run_wired(list(map(int, args.edges.split(","))), args.models.split(","),
                          args.repeats)
    elif args.part == "accuracy":
        lines = run_accuracy(args.rounds)
    for model in args.models.split(",") if args.part == "core" else []:
        for n in map(int, args.edges.split(",")):
            for dropout in args.dropout:
                row = {"model": model, **run_region(n, MODELS[model], dropout)}
                print(json.dumps(row), flush=True)
                lines.append(row)
    if args.flower:
        python = ROOT / ".venv-flower/bin/python"
        cmd = [str(python), str(ROOT / "benchmarks/flower_secagg.py"),
               "--edges", args.edges, "--models", args.models]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                print(json.dumps(row), flush=True)
                lines.append(row)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            for row in lines:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
