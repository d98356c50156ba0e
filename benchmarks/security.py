"""What trust costs: signatures and TLS against the same federation without them; print JSON.

One JSON line per measurement:

- ``sign_verify``: encode+sign and verify+decode of one update of ``--params`` float32
  parameters (default 1,000,000), against plain encode and decode; medians of ``--reps``.
- ``signing_overhead``: digits-20-wide (20 edges, 4 fogs, the 1.1 M-parameter model), signed
  vs signatures off (``--insecure``), runs interleaved (off, on, off, on, ...): median round
  time of each and the overhead. Issue 8 target: at most 5 %.
- ``tls_overhead``: digits-20, signed over mutual-TLS MQTT (``--secure``) vs signed over plain
  MQTT, interleaved the same way. Issue 8 target: at most 10 %. Kafka stays plaintext in both:
  the Tansu broker that ``hierfl sim`` starts has no TLS (``"kafka_tls": false``).
- ``provision``: ``hierfl provision`` (with TLS material) for 1 cloud, 10 fogs and 1,000 edges.
  Issue 8 target: under 60 s.

Round times come from the sim's report (``rounds[i].wall_s``; the first round, which waits for
every process to start, is left out). Usage::

    python benchmarks/security.py [--only sign_verify,signing_overhead,tls_overhead,provision]
        [--mode processes|inprocess] [--repeats 2] [--rounds 20] [--wide-rounds 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hierfl.provision import ProjectSpec, provision
from hierfl.security.trust import TrustStore
from hierfl.sim.runner import SimConfig, run_sim
from hierfl.wire.codec import decode_frame, encode_frame
from hierfl.wire.frames import UpdateFrame
from hierfl.wire.signing import Signer, Verifier

ALL = ("sign_verify", "signing_overhead", "tls_overhead", "provision")


def _median_ms(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 3)


def sign_verify(params: int, reps: int) -> dict[str, Any]:
    """Per-frame cost of signing and verifying one update."""
    key = Ed25519PrivateKey.generate()
    trust = TrustStore.from_parties({"edge/f/e": key.public_key()}, "bench")
    signer = Signer("edge/f/e", key, "bench")
    rng = np.random.default_rng(0)
    frame = UpdateFrame("bench", "f", "e", 0, 0, 10, rng.normal(size=params).astype(np.float32))
    plain = encode_frame(frame)
    signed = encode_frame(frame, signer=signer)
    verifier = Verifier(trust, "bench")
    enc = _median_ms(lambda: encode_frame(frame), reps)
    enc_s = _median_ms(lambda: encode_frame(frame, signer=signer), reps)
    dec = _median_ms(lambda: decode_frame(plain), reps)
    dec_v = _median_ms(lambda: verifier.decode(signed, replay=False), reps)
    return {"bench": "sign_verify", "params": params, "frame_bytes": len(plain),
            "signature_bytes": len(signed) - len(plain), "encode_ms": enc,
            "encode_signed_ms": enc_s, "decode_ms": dec, "decode_verified_ms": dec_v,
            "added_ms": round(enc_s - enc + dec_v - dec, 3)}


def _round_times(report: dict[str, Any]) -> list[float]:
    rounds = report["rounds"]
    return [r["wall_s"] for r in (rounds[1:] or rounds)]


def compare(name: str, base: str, other: str, *, wide: bool, rounds: int, repeats: int,
            mode: str) -> dict[str, Any]:
    """Run the same federation in security modes ``base`` and ``other``, interleaved."""
    times: dict[str, list[float]] = {base: [], other: []}
    acc: dict[str, list[float]] = {base: [], other: []}
    runs: dict[str, list[float]] = {base: [], other: []}
    with tempfile.TemporaryDirectory(prefix="hierfl-bench-security-") as tmp:
        for i in range(repeats):
            for sec in (base, other):
                cfg = SimConfig(scenario="digits", fogs=4, edges=20, rounds=rounds, k1=2, k2=1,
                                wide=wide, mode=mode, out=Path(tmp) / f"{sec}-{i}", live=False,
                                security=sec)  # type: ignore[arg-type]
                report = run_sim(cfg)
                rt = _round_times(report)
                times[sec].extend(rt)
                runs[sec].append(statistics.median(rt))
                acc[sec].append(report["final_accuracy"])
                print(f"# {name}: {sec} run {i}: median round {statistics.median(rt):.4f} s",
                      file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "bench": name, "scenario": "digits-20-wide" if wide else "digits-20", "mode": mode,
        "rounds": rounds, "repeats": repeats,
        f"median_round_s_{base}": round(med[base], 4),
        f"median_round_s_{other}": round(med[other], 4),
        f"per_run_median_s_{base}": [round(x, 4) for x in runs[base]],
        f"per_run_median_s_{other}": [round(x, 4) for x in runs[other]],
        "overhead_pct": round(100 * (med[other] / med[base] - 1), 2),
        f"final_acc_{base}": acc[base], f"final_acc_{other}": acc[other],
    }


def provision_bench(fogs: int, edges_per_fog: int) -> dict[str, Any]:
    """Time ``hierfl provision`` with TLS material."""
    spec = ProjectSpec(federation="bench",
                       fogs={f"f{i:02d}": tuple(f"e{j:04d}" for j in range(edges_per_fog))
                             for i in range(fogs)})
    with tempfile.TemporaryDirectory(prefix="hierfl-bench-provision-") as tmp:
        t = time.perf_counter()
        provision(spec, Path(tmp) / "pki", tls=True)
        seconds = time.perf_counter() - t
    return {"bench": "provision", "cloud": 1, "fogs": fogs, "edges": fogs * edges_per_fog,
            "tls": True, "seconds": round(seconds, 3), "target_s": 60}


def main(argv: list[str] | None = None) -> int:
    """Run the selected measurements; one JSON line each on stdout."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {ALL}")
    p.add_argument("--mode", default="processes", choices=["processes", "inprocess"])
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs per mode")
    p.add_argument("--rounds", type=int, default=20, help="rounds of digits-20 (TLS)")
    p.add_argument("--wide-rounds", type=int, default=8, help="rounds of digits-20-wide")
    p.add_argument("--params", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=15)
    a = p.parse_args(argv)
    only = a.only.split(",")
    unknown = set(only) - set(ALL)
    if unknown:
        p.error(f"unknown measurement(s): {sorted(unknown)}")
    if "sign_verify" in only:
        print(json.dumps(sign_verify(a.params, a.reps)), flush=True)
    if "signing_overhead" in only:
        out = compare("signing_overhead", "insecure", "signed", wide=True, rounds=a.wide_rounds,
                      repeats=a.repeats, mode=a.mode)
        print(json.dumps(out | {"target_pct": 5}), flush=True)
    if "tls_overhead" in only:
        out = compare("tls_overhead", "signed", "secure", wide=False, rounds=a.rounds,
                      repeats=a.repeats, mode=a.mode)
        print(json.dumps(out | {"target_pct": 10, "mqtt_tls": True, "kafka_tls": False}),
              flush=True)
    if "provision" in only:
        print(json.dumps(provision_bench(10, 100)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
