"""What a flood of junk costs a fog: honest-round rate idle and under a flood; print JSON.

A digits federation (MLP 64-64-10, digits-20's data split; ``--edges`` honest edges under one
fog, signed, real mosquitto and Tansu brokers started here) runs in this process. One more
edge, ``e<edges>``, is provisioned (in the trust bundle, so the fog subscribes its topic) but
runs no honest client: it is the compromised device. A separate publisher process floods at
``--rate-mbps`` (QoS 0, paced) with one of:

- ``garbage``: 64-byte random messages on the update topics of 16 non-members (``junk<i>``):
  anyone on an unprovisioned broker (no ACL). A provisioned broker's ACL refuses these
  publishes (hierfl/provision/mosquitto.py); a fog that knows its edges never subscribes them.
- ``signed``: bogus top-k frames (k = 1, declared size 50 M parameters, about 390 bytes) signed
  with the compromised edge's key from its kit, on its own topic (an insider, as the ACL
  allows);
- ``unsigned``: the same frames without a signature, on the same topic (an insider, or anyone
  on an unprovisioned broker);
- ``insider-garbage``: the 64-byte random messages on the compromised edge's topic;
- ``mixed``: a third of the bytes each of ``garbage``, ``signed`` and ``unsigned``.

The honest edges' rounds need all ``--edges`` of them (``min_updates``): the compromised edge
contributes nothing, as a quarantined one would not.

Each phase runs ``--phase-s`` seconds after a short warm-up; the honest-round rate is fog rounds
closed per second in that window, and ``ratio_to_idle`` divides it by the first idle phase's.
One JSON line per phase, then a summary line with each flood phase's ratio (issue 9 target: at
least 0.5 at 10 MB/s) and the flood rate the publisher achieved and the fog received (on a
2-core machine the publisher, broker, fog and edges share the cores: the achieved rate is
printed, not assumed; the machine's load average is printed with each phase). ``quarantines``
and ``dropped_quarantined`` count the fog's circuit breaker at work (docs/security.md#floods).

``per_frame`` lines: what one flood frame costs the fog's decode path (verify, then decode with
the model size held), in microseconds and in peak bytes allocated per byte received
(``tracemalloc``), measured in-process without a broker.

Usage::

    python benchmarks/flood.py [--edges 4] [--phase-s 20] [--rate-mbps 10]
        [--phases idle,garbage,signed,unsigned,insider-garbage,mixed,idle]
        [--ingest-connections 1] [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zstandard

from hierfl import topics
from hierfl.cloud.service import CloudService
from hierfl.config import CloudSettings, EdgeSettings, FogSettings
from hierfl.edge import EdgeClient
from hierfl.errors import HierflError
from hierfl.fog.service import FogService
from hierfl.model.torch_adapter import model_layout, model_to_vector
from hierfl.provision import ProjectSpec, provision
from hierfl.security.trust import load_signing_key
from hierfl.sim.brokers import KafkaBroker, MqttBroker
from hierfl.sim.scenarios import digits_model, digits_task
from hierfl.wire.codec import FLAG_SIGNED, MAGIC, DecodeLimits
from hierfl.wire.frames import UpdateFrame
from hierfl.wire.signing import Signer

DECLARED = 50_000_000
FED = "flood"
FOG = "north"
POOL = 512  # distinct payloads per kind (the fog verifies each copy in full)
THREATS = {
    "garbage": "outsider on non-member topics (unprovisioned broker: no ACL)",
    "signed": "insider: a compromised member edge on its own topic (allowed by the ACL)",
    "unsigned": "insider on its own topic, or anyone on an unprovisioned broker",
    "insider-garbage": "insider on its own topic, or anyone on an unprovisioned broker",
    "mixed": "outsider garbage + insider signed + insider unsigned, a third of the bytes each",
}


# --- flood payloads ----------------------------------------------------------------------------


def bogus_update(edge: str, seq: int, signer: Signer | None) -> bytes:
    """A tiny top-k update declaring ``DECLARED`` parameters (signed when ``signer``)."""
    m: dict[str, Any] = {
        "kind": "update", "federation": FED, "created_at": time.time(), "metrics": {},
        "fog": FOG, "edge": edge, "base_version": 0, "base_seq": seq, "num_samples": 10,
        "delta": {"codec": "topk", "size": DECLARED, "k": 1, "idx": b"\x05",
                  "values.data": np.float32(1).tobytes()},
    }
    body = msgpack.packb(m, use_bin_type=True)
    payload = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(body)
    flags = 0x01 | (FLAG_SIGNED if signer else 0)
    header = MAGIC + bytes([1, flags, 0, 0]) + len(body).to_bytes(4, "little")
    if signer is None:
        return header + payload
    claims = UpdateFrame(federation=FED, fog_id=FOG, edge_id=edge, base_version=0,
                         base_seq=seq, num_samples=10, delta=np.zeros(1, np.float32))
    block = signer.signature_block(claims, header, payload)
    return header + payload + block + len(block).to_bytes(2, "little")


def payload_pools(signer: Signer, insider: str) -> dict[str, list[tuple[str, bytes]]]:
    """(topic, payload) pools per flood kind; the insider's go on its own topic."""
    rng = np.random.default_rng(0)
    own = topics.update(FED, FOG, insider)
    garbage = [(topics.update(FED, FOG, f"junk{i % 16}"), rng.bytes(64)) for i in range(POOL)]
    signed = [(own, bogus_update(insider, i, signer)) for i in range(POOL)]
    unsigned = [(own, bogus_update(insider, i, None)) for i in range(POOL)]
    return {"garbage": garbage, "signed": signed, "unsigned": unsigned}


def mixed(pools: dict[str, list[tuple[str, bytes]]]) -> list[tuple[str, bytes]]:
    """A third of the bytes from each kind."""
    out: list[tuple[str, bytes]] = []
    sizes = {k: len(v[0][1]) for k, v in pools.items()}
    biggest = max(sizes.values())
    for i in range(POOL):
        for kind, pool in pools.items():
            out.extend([pool[i % POOL]] * max(1, round(biggest / sizes[kind])))
    return out


# --- the publisher (a child process) -----------------------------------------------------------


def publish(host: str, port: int, pool_file: Path, rate_bps: float, duration_s: float) -> None:
    """Publish the pool round-robin at ``rate_bps`` (QoS 0) for ``duration_s``; print JSON."""
    import paho.mqtt.client as paho  # noqa: PLC0415

    pool = msgpack.unpackb(pool_file.read_bytes(), raw=False)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"flood-{os.getpid()}")
    client.max_queued_messages_set(100_000)
    client.connect(host, port)
    client.loop_start()
    sent_bytes = sent = dropped = i = 0
    start = time.perf_counter()
    end = start + duration_s
    while (now := time.perf_counter()) < end:
        due = rate_bps * (now - start)
        burst = 0
        while sent_bytes < due and burst < 256:  # bursts give paho's network thread turns
            topic, payload = pool[i % len(pool)]
            i += 1
            burst += 1
            if client.publish(topic, payload, qos=0).rc != paho.MQTT_ERR_SUCCESS:
                dropped += 1  # paho's outgoing queue is full: the publisher is the limit
                time.sleep(0.001)
                continue
            sent_bytes += len(payload)
            sent += 1
        if sent_bytes >= due:
            time.sleep(0.002)
    elapsed = time.perf_counter() - start
    client.loop_stop()
    client.disconnect()
    print(json.dumps({"sent_msgs": sent, "sent_bytes": sent_bytes, "not_queued": dropped,
                      "elapsed_s": elapsed, "publisher_cpu_s": time.process_time(),
                      "sent_mbps": sent_bytes / elapsed / 1e6}))


# --- the federation -----------------------------------------------------------------------------


def write_initial(path: Path) -> None:
    m = digits_model()
    vec = model_to_vector(m)
    named, pos = {}, 0
    for e in model_layout(m):
        named[e.name] = vec[pos : pos + e.size].reshape(e.shape)
        pos += e.size
    np.savez(path, **named)


def build(work: Path, mqtt_url: str, bootstrap: str, n_edges: int, ingest_connections: int
          ) -> tuple[CloudService, FogService, list[EdgeClient], Signer]:
    edges = [f"e{i}" for i in range(n_edges)]
    insider = f"e{n_edges}"  # provisioned, compromised: runs no honest client
    prov = provision(ProjectSpec(federation=FED, fogs={FOG: (*edges, insider)}), work / "pki",
                     tls=False)

    def sec(party: str) -> dict[str, Any]:
        kit = prov.kit(party)
        out: dict[str, Any] = {"signing": "required", "key_file": kit / "signing.key",
                               "trust_bundle": prov.trust_bundle,
                               "revocation_list": prov.revocation_list}
        if party.startswith("fog/"):
            out["state_dir"] = kit / "state"
        return out

    write_initial(work / "init.npz")
    cloud = CloudService(CloudSettings.load(
        federation=FED, security=sec("cloud"), kafka={"bootstrap": bootstrap}, fogs=[FOG],
        min_fogs=1, store_dir=work / "store", initial_model=work / "init.npz",
        max_versions=100_000, round_timeout_s=60,
    ))
    fog = FogService(FogSettings.load(
        federation=FED, fog_id=FOG, mqtt={"url": mqtt_url}, kafka={"bootstrap": bootstrap},
        security=sec(f"fog/{FOG}"), min_updates=n_edges, round_timeout_s=60, k2=1,
        resume_wait_s=0.3, aggregator="fedavg", ingest_connections=ingest_connections,
    ))
    clients = [
        EdgeClient(
            EdgeSettings.load(federation=FED, fog_id=FOG, edge_id=e, mqtt={"url": mqtt_url},
                              security=sec(f"edge/{FOG}/{e}"), local_epochs=2),
            digits_task(edge_id=e, fog_id=FOG, index=i, num_edges=20),
        )
        for i, e in enumerate(edges)
    ]
    key = load_signing_key(prov.kit(f"edge/{FOG}/{insider}") / "signing.key")
    return cloud, fog, clients, Signer(f"edge/{FOG}/{insider}", key, FED)


def per_frame_cost(fog: FogService, pools: dict[str, list[tuple[str, bytes]]]
                   ) -> list[dict[str, Any]]:
    """Decode cost of one flood frame on the fog's path (verify, then bounded decode)."""
    limits = DecodeLimits(expected_params=fog.round.model_size)
    out = []
    for kind, pool in pools.items():
        frames = [p for _, p in pool]
        t = time.perf_counter()
        for f in frames:
            with contextlib.suppress(HierflError):
                fog.security.decode(f, limits=limits, replay=False)
        us = (time.perf_counter() - t) / len(frames) * 1e6
        tracemalloc.start()
        for f in frames[:64]:
            with contextlib.suppress(HierflError):
                fog.security.decode(f, limits=limits, replay=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        size = len(frames[0])
        out.append({"bench": "per_frame", "kind": kind, "frame_bytes": size,
                    "decode_us": round(us, 1), "decode_mbps": round(size / us, 2),
                    "peak_alloc_bytes": peak, "peak_alloc_per_byte": round(peak / size, 1)})
    return out


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = [{
        "bench": "config", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2), "edges": args.edges,
        "phase_s": args.phase_s, "warmup_s": args.warmup_s, "rate_mbps": args.rate_mbps,
        "ingest_connections": args.ingest_connections, "publisher_nice": args.publisher_nice,
        "carry_quarantine": args.carry_quarantine,
    }]
    with tempfile.TemporaryDirectory(prefix="hierfl-flood-") as tmp, \
            MqttBroker() as mqtt_broker, KafkaBroker() as kafka_broker:
        work = Path(tmp)
        cloud, fog, edges, insider = build(work, mqtt_broker.url, kafka_broker.bootstrap,
                                           args.edges, args.ingest_connections)
        pools = payload_pools(insider, f"e{args.edges}")
        pools_all = {**pools, "mixed": mixed(pools),
                     "insider-garbage": [(pools["signed"][0][0], p) for _, p in pools["garbage"]]}
        services = [cloud, fog, *edges]
        tasks = [asyncio.create_task(s.run()) for s in services]
        try:
            async with asyncio.timeout(120):
                while fog.metrics.counters["fog_rounds"] < 2:  # noqa: ASYNC110 - a counter
                    await asyncio.sleep(0.1)
            lines.extend(per_frame_cost(fog, pools))
            idle_rate: float | None = None
            for phase in args.phases:
                line = await run_phase(phase, fog, cloud, pools_all, mqtt_broker, work, args)
                if phase == "idle" and idle_rate is None:
                    idle_rate = line["rounds_per_s"]
                line["ratio_to_idle"] = (round(line["rounds_per_s"] / idle_rate, 3)
                                         if idle_rate else None)
                lines.append(line)
                print(json.dumps(line), file=sys.stderr, flush=True)
        finally:
            for s in services:
                s.stop()
            _, pending = await asyncio.wait(tasks, timeout=15)
            for t in pending:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
    idle = next((x for x in lines if x.get("phase") == "idle"), None)
    if idle is not None and idle["rounds_per_s"]:
        summary: dict[str, Any] = {"bench": "summary", "edges": args.edges,
                                   "ingest_connections": args.ingest_connections,
                                   "publisher_nice": args.publisher_nice,
                                   "target_rate_mbps": args.rate_mbps,
                                   "idle_rounds_per_s": idle["rounds_per_s"]}
        for x in lines:
            if x.get("bench") == "phase" and x["phase"] != "idle":
                summary[f"{x['phase']}_ratio"] = x["ratio_to_idle"]
                summary[f"{x['phase']}_sent_mbps"] = x["flood"]["sent_mbps"]
                summary[f"{x['phase']}_fog_received_mbps"] = x["fog_received_mbps"]
        ratios = [v for k, v in summary.items() if k.endswith("_ratio")]
        summary["target_met"] = bool(ratios) and min(ratios) >= 0.5
        lines.append(summary)
    return lines


def cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (0 where unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fresh_breaker(fog: FogService) -> None:
    """Forget the fog's quarantines, so each phase measures a flood from its first message
    (by default a repeat offender's quarantine doubles across phases: --carry-quarantine)."""
    breaker = fog._flood_breaker()
    breaker._until.clear()
    breaker._last.clear()
    breaker._hits.clear()
    await asyncio.sleep(1.5)  # the fog re-syncs its subscriptions at least once a second


async def run_phase(phase: str, fog: FogService, cloud: CloudService,
                    pools: dict[str, list[tuple[str, bytes]]], broker: MqttBroker, work: Path,
                    args: argparse.Namespace) -> dict[str, Any]:
    if not args.carry_quarantine:
        await fresh_breaker(fog)
    proc = None
    if phase != "idle":
        pool_file = work / f"{phase}.msgpack"
        pool_file.write_bytes(msgpack.packb(pools[phase], use_bin_type=True))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--publish", str(pool_file), "--host", broker.host,
            "--port", str(broker.port), "--rate-mbps", str(args.rate_mbps),
            "--duration-s", str(args.warmup_s + args.phase_s),
            "--nice", str(args.publisher_nice),
            stdout=subprocess.PIPE,
        )
    await asyncio.sleep(args.warmup_s)
    c, rej = fog.metrics.counters, fog.metrics.rejected
    r0, v0, b0, m0 = c["fog_rounds"], cloud.version, c["bytes_in"], c["received"]
    rej0 = sum(rej.values())
    q0, d0 = c["quarantines"], rej["flood.quarantined"]
    cpu0, t0, bcpu0 = time.process_time(), time.perf_counter(), cpu_s(broker.pid)
    await asyncio.sleep(args.phase_s)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    broker_cpu = cpu_s(broker.pid) - bcpu0
    r1, v1, b1, m1 = c["fog_rounds"], cloud.version, c["bytes_in"], c["received"]
    rej1 = sum(rej.values())
    q1, d1 = c["quarantines"], rej["flood.quarantined"]
    load1 = os.getloadavg()[0]
    flood: dict[str, Any] = {}
    if proc is not None:
        out, _ = await proc.communicate()
        flood = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "bench": "phase", "phase": phase, "threat": THREATS.get(phase, "none"),
        "window_s": round(elapsed, 2),
        "fog_rounds": r1 - r0, "rounds_per_s": round((r1 - r0) / elapsed, 3),
        "global_versions": v1 - v0,
        "fog_received_msgs": m1 - m0, "fog_received_mbps": round((b1 - b0) / elapsed / 1e6, 3),
        "fog_rejected": rej1 - rej0,
        "quarantines": q1 - q0, "dropped_quarantined": d1 - d0,
        "loadavg_1m_at_end": round(load1, 2),
        "process_cpu_s": round(cpu, 2),  # cloud + fog + edges, all in this process
        "broker_cpu_s": round(broker_cpu, 2),  # mosquitto
        "flood": {k: round(v, 3) if isinstance(v, float) else v for k, v in flood.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--edges", type=int, default=4)
    p.add_argument("--phase-s", type=float, default=20.0)
    p.add_argument("--warmup-s", type=float, default=3.0)
    p.add_argument("--rate-mbps", type=float, default=10.0, help="flood rate, MB/s (1e6 B)")
    p.add_argument("--phases", default="idle,garbage,signed,unsigned,insider-garbage,mixed,idle")
    p.add_argument("--publisher-nice", type=int, default=0,
                   help="niceness of the flood publisher: a real attacker runs on another "
                   "machine; here it shares the cores with the fog (0: an equal share)")
    p.add_argument("--carry-quarantine", action="store_true",
                   help="keep the fog's quarantines from one phase to the next")
    p.add_argument("--ingest-connections", type=int, default=1,
                   help="the fog's ingest_connections (MQTT connections for update topics)")
    p.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    # the publisher child
    p.add_argument("--publish", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--host", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--duration-s", type=float, help=argparse.SUPPRESS)
    p.add_argument("--nice", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.publish is not None:
        os.nice(args.nice)
        publish(args.host, args.port, args.publish, args.rate_mbps * 1e6, args.duration_s)
        return
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    lines = asyncio.run(measure(args))
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(args.out.open("a")) if args.out else None
        for line in lines:
            text = json.dumps(line)
            print(text)
            if out is not None:
                out.write(text + "\n")


if __name__ == "__main__":
    main()
