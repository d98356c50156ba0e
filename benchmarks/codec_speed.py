"""Encode/decode speed and size of every update codec on a 1,000,000-parameter float32 delta.

Prints one JSON line per codec: payload size (msgpack of the field dict, and that after zstd
level 1, as the wire layer would send it), ratio against raw float32, and median encode/decode
times over 5 runs on one thread.

Usage: python benchmarks/codec_speed.py [--n-params N] [--runs R] [--codec SPEC ...]
"""

from __future__ import annotations

import os

# One core, as on an edge device: must be set before numpy is imported.
for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import zstandard  # noqa: E402

from hierfl.compression import decode_vector, make_codec  # noqa: E402

DEFAULT_CODECS = [
    "raw",
    "fp16",
    "int8",
    "topk:fraction=0.01",
    "topk+fp16:fraction=0.01",
    "topk+int8:fraction=0.01",
    "randk:fraction=0.01",
    "randk+int8:fraction=0.01",
]


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 3)


def bench(spec: str, delta: np.ndarray, runs: int) -> dict[str, Any]:
    """Time ``runs`` encodes and decodes of ``delta`` with the codec ``spec``."""
    codec = make_codec(spec)
    rng = np.random.default_rng(0)
    fields = codec.encode(delta, rng)  # warm-up
    decode_vector(fields, delta.size)
    enc: list[float] = []
    dec: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fields = codec.encode(delta, rng)
        t1 = time.perf_counter()
        out = decode_vector(fields, delta.size)
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append(t2 - t1)
    assert out.shape == delta.shape
    packed = msgpack.packb(fields, use_bin_type=True)
    zipped = zstandard.ZstdCompressor(level=1).compress(packed)
    raw_bytes = delta.nbytes
    encode_ms, decode_ms = _median_ms(enc), _median_ms(dec)
    mb = raw_bytes / 1e6
    return {
        "codec": spec,
        "n_params": int(delta.size),
        "bytes": len(packed),
        "bytes_payload": sum(len(v) for v in fields.values() if isinstance(v, bytes)),
        "bytes_zstd": len(zipped),
        "ratio_vs_f32": round(raw_bytes / len(packed), 2),
        "ratio_zstd_vs_f32": round(raw_bytes / len(zipped), 2),
        "encode_ms": encode_ms,
        "decode_ms": decode_ms,
        "encode_mb_s": round(mb / (encode_ms / 1e3), 1),
        "decode_mb_s": round(mb / (decode_ms / 1e3), 1),
        "rel_l2_error": round(float(np.linalg.norm(out - delta) / np.linalg.norm(delta)), 5),
    }


def main() -> None:
    """Parse arguments and print one JSON line per codec."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-params", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--codec", action="append", help="codec spec (repeatable)")
    args = parser.parse_args()
    # A realistic update: small Gaussian deltas, a few heavier coordinates (last-layer bias).
    rng = np.random.default_rng(42)
    delta = rng.normal(0.0, 1e-3, args.n_params).astype(np.float32)
    heavy = rng.choice(args.n_params, size=max(1, args.n_params // 1000), replace=False)
    delta[heavy] *= 20
    for spec in args.codec or DEFAULT_CODECS:
        print(json.dumps(bench(spec, delta, args.runs)), flush=True)


if __name__ == "__main__":
    main()
