"""Scale: what one fog process can ingest, and what a population of edges costs; print JSON.

``--part ingest`` (no broker): the fog's per-update path, run in this process on one core
exactly as :class:`~hierfl.fog.service.FogService` runs it for each update that arrives:
signature verification and replay check (:meth:`~hierfl.security.tier.TierSecurity.decode`,
with the model size known), the round's checks (:meth:`~hierfl.fog.round.FogRound.check_update`)
and acceptance (:meth:`~hierfl.fog.round.FogRound.on_update`, which runs those checks, then
aggregation when the round closes; a fog with a spool runs the checks once more before
writing). The updates are valid digits-20 updates (MLP 64-64-10, 4,810 parameters, a
raw float32 delta, 50 samples) of ``--edges`` provisioned edges (default 1,000), signed with
each edge's own key and pre-encoded before the clock starts; the fog's rounds close every
``--round-size`` updates (FedAvg). One line per configuration: updates/s, microseconds per
update, and the split into verify+decode and round (check + accept + aggregate). The same
path unsigned (``security.signing = "off"``) is printed for comparison.

``--part spool`` (no broker): the same signed path with the fog's spool on, in the service's
shape: one thread verifies and decodes (the service's judge stage) while the admission loop
takes what is queued. ``per-update`` is the admission before group commit (checks, one
:meth:`~hierfl.fog.spool.Spool.put` with its fsync, acceptance, per update); ``group`` is
:class:`~hierfl.fog.service.FogService`'s group commit: the updates queued behind one another
(at most :data:`~hierfl.fog.spool_commit.BURST_MAX`) checked
(:func:`~hierfl.fog.spool_commit.check_burst`), written in one batch file with one fsync
(:meth:`~hierfl.fog.spool.Spool.put_batch`), then taken by the round
(:func:`~hierfl.fog.spool_commit.take_burst`). The spool lives in ``--spool-dir`` (default: a
temporary folder; put it on the disk a fog would use). One line per mode, with the number of
fsyncs and the mean burst.

``--part service`` (in-memory brokers): a real :class:`~hierfl.fog.service.FogService`, spool
on and off, admitting ``--edges`` unsigned updates published at once into one round (from the
first publish to the last update accepted). It uses only APIs older than group commit, so it
also runs against an export of an older tree (``PYTHONPATH=<export>``, ``HIERFL_TREE=<name>``
labels the line).

``--part population`` (real brokers): see :mod:`hierfl.sim.population`.

Usage: python benchmarks/scale.py [--part ingest|spool|service|population|all] [--edges 1000]
       [--round-size 100] [--repeat 3] [--results FILE] [--spool-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from hierfl import __version__
from hierfl.aggregation import make_aggregator
from hierfl.config import SecuritySettings
from hierfl.fog.round import FogRound, FogRoundConfig
from hierfl.provision import ProjectSpec, Provisioned, provision
from hierfl.security.tier import tier_security
from hierfl.security.trust import load_signing_key
from hierfl.wire.codec import DecodeLimits, encode_frame
from hierfl.wire.frames import LayoutEntry, ModelFrame, UpdateFrame
from hierfl.wire.signing import Signer

FED, FOG = "scale", "f0"
#: digits-20's model: MLP 64-64-10
LAYOUT = (LayoutEntry("0.weight", (64, 64)), LayoutEntry("0.bias", (64,)),
          LayoutEntry("2.weight", (10, 64)), LayoutEntry("2.bias", (10,)))
PARAMS = sum(int(np.prod(e.shape)) for e in LAYOUT)


def _edges(n: int) -> list[str]:
    return [f"e{i:05d}" for i in range(n)]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024



def _fresh_fog(round_size: int) -> FogRound:
    """A fog round on the global model v0, closing after ``round_size`` updates."""
    fog = FogRound(FogRoundConfig(federation=FED, fog_id=FOG, min_updates=round_size,
                                  k2=10_000, round_timeout_s=3600.0, max_samples=100_000),
                   make_aggregator("fedavg", {}))
    fog.on_global_model(ModelFrame(FED, 0, np.zeros(PARAMS, np.float32), layout=LAYOUT), 0.0)
    return fog

def ingest(n_edges: int, round_size: int, signed: bool, pki: Provisioned | None,
           repeat: int) -> dict[str, Any]:
    """Time the fog's per-update path over ``n_edges`` valid pre-encoded updates."""
    edges = _edges(n_edges)
    if signed:
        assert pki is not None
        sec = SecuritySettings(signing="required",
                               key_file=pki.kit(f"fog/{FOG}") / "signing.key",
                               trust_bundle=pki.trust_bundle,
                               revocation_list=pki.revocation_list)
    else:
        sec = SecuritySettings(signing="off")
    rng = np.random.default_rng(0)
    frames: list[bytes] = []
    t0 = time.perf_counter()
    for e in edges:
        signer = None
        if signed:
            assert pki is not None
            key = load_signing_key(pki.kit(f"edge/{FOG}/{e}") / "signing.key")
            signer = Signer(f"edge/{FOG}/{e}", key, FED)
        delta = (rng.normal(size=PARAMS) * 0.01).astype(np.float32)
        frames.append(encode_frame(UpdateFrame(FED, FOG, e, 0, 1, 50, delta, {"train_loss": 1.0}),
                                   signer=signer))
    encode_s = time.perf_counter() - t0
    limits = DecodeLimits(expected_params=PARAMS)
    rates, decode_us, round_us = [], [], []
    for _ in range(repeat):
        security = tier_security(sec, federation=FED, party_id=f"fog/{FOG}", tier="fog",
                                 replay_file=None, autosave=False)
        fog = _fresh_fog(round_size)
        t_dec = t_round = 0.0
        start = time.perf_counter()
        for i, raw in enumerate(frames):
            a = time.perf_counter()
            frame = security.decode(raw, limits=limits).frame
            b = time.perf_counter()
            assert isinstance(frame, UpdateFrame)
            # each round is a new fog model: re-base the pre-encoded update onto it (the frame
            # object, not the bytes: the bytes were verified as they are)
            if i >= round_size:
                object.__setattr__(frame, "base_seq", fog.seq)
            fog.on_update(frame, 0.0)  # its checks first (a spooling fog runs them twice)
            t_dec += b - a
            t_round += time.perf_counter() - b
        total = time.perf_counter() - start
        rates.append(n_edges / total)
        decode_us.append(t_dec / n_edges * 1e6)
        round_us.append(t_round / n_edges * 1e6)
    return {
        "system": f"hierfl-{__version__}", "bench": "fog-ingest", "signed": signed,
        "edges": n_edges, "round_size": round_size, "params": PARAMS,
        "frame_bytes": len(frames[0]),
        "updates_per_s": round(statistics.median(rates), 1),
        "updates_per_s_runs": [round(r, 1) for r in rates],
        "us_per_update": round(1e6 / statistics.median(rates), 1),
        "verify_decode_us": round(statistics.median(decode_us), 1),
        "round_us": round(statistics.median(round_us), 1),
        "encode_all_s": round(encode_s, 3),
        "peak_rss_mb": round(_rss_mb(), 1),
        "cpu": os.cpu_count(),
        "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]),
    }


def _security(signed: bool, pki: Provisioned | None) -> SecuritySettings:
    if not signed:
        return SecuritySettings(signing="off")
    assert pki is not None
    return SecuritySettings(signing="required", key_file=pki.kit(f"fog/{FOG}") / "signing.key",
                            trust_bundle=pki.trust_bundle, revocation_list=pki.revocation_list)


def _signed_frames(n_edges: int, pki: Provisioned) -> list[bytes]:
    rng = np.random.default_rng(0)
    frames = []
    for e in _edges(n_edges):
        key = load_signing_key(pki.kit(f"edge/{FOG}/{e}") / "signing.key")
        delta = (rng.normal(size=PARAMS) * 0.01).astype(np.float32)
        frames.append(encode_frame(UpdateFrame(FED, FOG, e, 0, 1, 50, delta, {"train_loss": 1.0}),
                                   signer=Signer(f"edge/{FOG}/{e}", key, FED)))
    return frames


def spooled_ingest(n_edges: int, round_size: int, pki: Provisioned, mode: str, repeat: int,
                   spool_root: Path | None) -> dict[str, Any]:
    """Time the signed per-update path with the spool on (``mode``: per-update or group)."""
    from hierfl.fog.spool import Spool  # noqa: PLC0415
    from hierfl.fog.spool_commit import BURST_MAX  # noqa: PLC0415

    frames = _signed_frames(n_edges, pki)
    limits = DecodeLimits(expected_params=PARAMS)
    rates, fsyncs, bursts = [], [], []
    real_fsync = os.fsync
    for _ in range(repeat):
        security = tier_security(_security(True, pki), federation=FED, party_id=f"fog/{FOG}",
                                 tier="fog", replay_file=None, autosave=False)
        fog = _fresh_fog(round_size)
        count = [0]

        def counted(fd: int, count: list[int] = count) -> None:
            count[0] += 1
            real_fsync(fd)

        with tempfile.TemporaryDirectory(prefix="hierfl-spool-", dir=spool_root) as tmp:
            spool = Spool(tmp)
            q: queue.Queue[tuple[UpdateFrame, bytes] | None] = queue.Queue(maxsize=1000)

            def judge(security: Any = security,
                      q: queue.Queue[tuple[UpdateFrame, bytes] | None] = q) -> None:
                # the service's judge stage: verify + decode, in order
                for raw in frames:
                    frame = security.decode(raw, limits=limits).frame
                    assert isinstance(frame, UpdateFrame)
                    q.put((frame, raw))
                q.put(None)

            os.fsync = counted  # type: ignore[assignment]  # count what the spool syncs
            try:
                start = time.perf_counter()
                t = threading.Thread(target=judge)
                t.start()
                n_bursts = _admit_all(fog, spool, q, mode)
                total = time.perf_counter() - start
                t.join()
            finally:
                os.fsync = real_fsync  # type: ignore[assignment]
            drained = spool.drop_except(None)
        assert drained == n_edges, drained  # every update was spooled once
        rates.append(n_edges / total)
        fsyncs.append(count[0])
        bursts.append(n_edges / n_bursts)
    return {
        "system": f"hierfl-{__version__}", "bench": "fog-ingest-spool", "signed": True,
        "spool": mode, "edges": n_edges, "round_size": round_size, "params": PARAMS,
        "frame_bytes": len(frames[0]),
        "updates_per_s": round(statistics.median(rates), 1),
        "updates_per_s_runs": [round(r, 1) for r in rates],
        "us_per_update": round(1e6 / statistics.median(rates), 1),
        "fsyncs": fsyncs, "mean_burst": round(statistics.median(bursts), 1),
        "burst_max": BURST_MAX if mode == "group" else 1,
        "peak_rss_mb": round(_rss_mb(), 1), "cpu": os.cpu_count(),
        "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]),
    }


def _admit_all(fog: FogRound, spool: Any,
               q: queue.Queue[tuple[UpdateFrame, bytes] | None], mode: str) -> int:
    """Admit everything the judge thread queues; return the number of spool writes."""
    from hierfl.fog.spool_commit import BURST_MAX, check_burst, take_burst  # noqa: PLC0415

    writes = 0
    backlog: list[tuple[UpdateFrame, bytes]] = []
    done = False
    while not done or backlog:
        if backlog:
            burst, backlog = backlog[:BURST_MAX], backlog[BURST_MAX:]
        else:
            item = q.get()
            if item is None:
                done = True
                continue
            burst = [item]
        while mode == "group" and len(burst) < BURST_MAX and not done:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            if item is None:
                done = True
            else:
                burst.append(item)
        if mode == "per-update":
            backlog = burst[1:] + backlog
            burst = burst[:1]
        key = (fog.version or 0, fog.seq)
        for frame, _ in burst:  # each round is a new fog model: re-base (see ingest)
            object.__setattr__(frame, "base_seq", fog.seq)
        if mode == "per-update":
            ((frame, raw),) = burst
            fog.check_update(frame)
            spool.put(key[0], key[1], frame.edge_id, raw)
            fog.on_update(frame, 0.0)
            writes += 1
            continue
        refused = check_burst(fog, [f for f, _ in burst])
        assert not any(refused), refused
        path = spool.put_batch(key[0], key[1], [(f.edge_id, raw) for f, raw in burst])
        writes += 1
        taken = take_burst(fog, key, [f for f, _ in burst], [None] * len(burst), 0.0)
        assert len(taken.kept) == taken.stopped, taken  # nothing refused
        if taken.stopped < len(burst):  # the round closed: the rest go to the next one
            spool.keep_only(path, list(taken.kept))
            backlog = burst[taken.stopped:] + backlog
    return writes


def service_ingest(n_edges: int, spool_root: Path | None, repeat: int,
                   spool: bool = True) -> dict[str, Any]:
    """Time a real :class:`~hierfl.fog.service.FogService` (in-memory brokers, unsigned,
    spool on) admitting ``n_edges`` updates published at once into one round: from the
    first publish to the last update accepted. Runs against whatever ``hierfl`` is imported
    (the tree before group commit too: it uses no API group commit added)."""
    import asyncio  # noqa: PLC0415

    from hierfl import topics  # noqa: PLC0415
    from hierfl.config import FogSettings  # noqa: PLC0415
    from hierfl.fog.round import FogState  # noqa: PLC0415
    from hierfl.fog.service import FogService  # noqa: PLC0415
    from hierfl.transport.factory import MemoryTransports  # noqa: PLC0415
    from hierfl.transport.memory_kafka import MemoryKafkaBroker  # noqa: PLC0415
    from hierfl.transport.memory_mqtt import MemoryMqttBroker  # noqa: PLC0415

    edges = _edges(n_edges)
    rng = np.random.default_rng(0)

    async def once(spool_dir: Path | None) -> float:
        t = MemoryTransports(MemoryMqttBroker(), MemoryKafkaBroker())
        s = FogSettings.load(federation=FED, fog_id=FOG, security={"signing": "off"},
                             spool_dir=spool_dir, min_updates=n_edges, k2=10_000,
                             round_timeout_s=3600.0,
                             max_samples=100_000)
        fog = FogService(s, transports=t)
        task = asyncio.create_task(fog.run())
        await asyncio.wait_for(fog.ready.wait(), 30)
        async with t.producer(s.kafka, client_id="cloud") as producer:
            await producer.send_frame(topics.models(FED), key=b"global", frame=encode_frame(
                ModelFrame(FED, 0, np.zeros(PARAMS, np.float32), layout=LAYOUT)))
        while fog.round.state is not FogState.COLLECTING:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        seq = fog.round.seq
        frames = [encode_frame(UpdateFrame(
            FED, FOG, e, 0, seq, 50, (rng.normal(size=PARAMS) * 0.01).astype(np.float32),
            {"train_loss": 1.0})) for e in edges]
        async with t.mqtt(s.mqtt, client_id="edges") as mqtt:
            start = time.perf_counter()
            for e, raw in zip(edges, frames, strict=True):
                await mqtt.publish(topics.update(FED, FOG, e), raw)
            while fog.round.seq == seq and len(fog.round.pending) < n_edges:  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            total = time.perf_counter() - start
        fog.stop()
        await asyncio.wait_for(task, 30)
        return total

    rates, files = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="hierfl-spool-", dir=spool_root) as tmp:
            spool_dir = Path(tmp) / "spool"
            total = asyncio.run(once(spool_dir if spool else None))
            n_files = sum(1 for p in spool_dir.iterdir() if p.suffix in (".hfl", ".hfb")
                          ) if spool else 0
        rates.append(n_edges / total)
        files.append(n_files)
    return {
        "system": f"hierfl-{__version__}", "bench": "fog-service-spool", "signed": False,
        "spool": spool, "edges": n_edges, "params": PARAMS,
        "updates_per_s": round(statistics.median(rates), 1),
        "updates_per_s_runs": [round(r, 1) for r in rates],
        "spool_files": files, "cpu": os.cpu_count(),
        "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts; print one JSON line per measurement."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", default="ingest",
                   choices=["ingest", "spool", "service", "population", "all"])
    p.add_argument("--spool-dir", type=Path, default=None)
    p.add_argument("--spool-modes", default="per-update,group")
    p.add_argument("--edges", type=int, default=1000)
    p.add_argument("--round-size", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--results", type=Path, default=None)
    a = p.parse_args(argv)
    lines: list[dict[str, Any]] = []
    if a.part in ("ingest", "all"):
        with tempfile.TemporaryDirectory(prefix="hierfl-scale-") as tmp:
            t0 = time.perf_counter()
            prov = provision(ProjectSpec(federation=FED, fogs={FOG: tuple(_edges(a.edges))}),
                             Path(tmp) / "pki", tls=False)
            provision_s = time.perf_counter() - t0
            for signed in (True, False):
                row = ingest(a.edges, a.round_size, signed, prov if signed else None, a.repeat)
                row["provision_s"] = round(provision_s, 2)
                lines.append(row)
                _emit(row, a.results)
    if a.part in ("spool", "all"):
        with tempfile.TemporaryDirectory(prefix="hierfl-scale-") as tmp:
            prov = provision(ProjectSpec(federation=FED, fogs={FOG: tuple(_edges(a.edges))}),
                             Path(tmp) / "pki", tls=False)
            for mode in a.spool_modes.split(","):
                row = spooled_ingest(a.edges, a.round_size, prov, mode, a.repeat, a.spool_dir)
                _emit(row, a.results)
    if a.part in ("service", "all"):
        for spool in (True, False):
            row = service_ingest(a.edges, a.spool_dir, a.repeat, spool)
            row["tree"] = os.environ.get("HIERFL_TREE", "this")
            _emit(row, a.results)
    if a.part in ("population", "all"):
        from hierfl.sim.population import run_population_benchmark  # noqa: PLC0415

        for row in run_population_benchmark():
            _emit(row, a.results)
    return 0


def _emit(row: dict[str, Any], results: Path | None) -> None:
    text = json.dumps(row)
    print(text, flush=True)
    if results is not None:
        with results.open("a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
