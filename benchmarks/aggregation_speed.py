"""Speed of every registered aggregation rule on a 50 x 1,000,000 float32 update stack.

Prints one JSON line per aggregator: ``{"aggregator", "n_updates", "n_params", "seconds",
"threads", "params"}``, where ``seconds`` is the median wall time of 3 runs on one BLAS thread
(numpy's sorts are single-threaded anyway). ``params`` are the (default) parameters used.

Usage: python benchmarks/aggregation_speed.py [--quick] [--n-updates N] [--n-params D]
       [--runs R] [--aggregator NAME ...]

``--quick`` uses 100,000 parameters, for a smoke run in a few seconds.
"""

from __future__ import annotations

import importlib.util
import os

# One thread. threadpoolctl limits the BLAS pool after import when it is installed; the
# variables (read only when numpy loads its BLAS) are the fallback, so they are set first.
_HAVE_THREADPOOLCTL = importlib.util.find_spec("threadpoolctl") is not None
if not _HAVE_THREADPOOLCTL:
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from hierfl.aggregation import AGGREGATORS, make_aggregator  # noqa: E402

# Krum-family rules need n >= 2f + 3; f = 10 of 50 is a realistic Byzantine budget and costs
# the same as any other f.
PARAMS: dict[str, dict[str, Any]] = {
    "krum": {"f": 10},
    "multikrum": {"f": 10},
    "trimmed_mean": {"trim_ratio": 0.1},
}


def _thread_limit() -> contextlib.AbstractContextManager[object]:
    if _HAVE_THREADPOOLCTL:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        limiter: contextlib.AbstractContextManager[object] = threadpool_limits(limits=1)
        return limiter
    return contextlib.nullcontext()


def bench(name: str, updates: np.ndarray, weights: np.ndarray, runs: int) -> dict[str, Any]:
    """Time ``runs`` calls of the aggregator ``name`` and return its JSON record."""
    aggregator = make_aggregator(name, PARAMS.get(name))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        aggregator(updates, weights)
        times.append(time.perf_counter() - start)
    return {
        "aggregator": name,
        "n_updates": int(updates.shape[0]),
        "n_params": int(updates.shape[1]),
        "seconds": round(statistics.median(times), 4),
        "threads": 1,
        "params": dataclasses.asdict(aggregator),  # type: ignore[call-overload]
    }


def main() -> None:
    """Parse arguments, build the stack, print one JSON line per aggregator."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 parameters")
    parser.add_argument("--n-updates", type=int, default=50)
    parser.add_argument("--n-params", type=int, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--aggregator", nargs="*", default=list(AGGREGATORS))
    args = parser.parse_args()
    n_params = args.n_params or (100_000 if args.quick else 1_000_000)

    rng = np.random.default_rng(0)
    updates = rng.standard_normal((args.n_updates, n_params), dtype=np.float32)
    weights = rng.integers(10, 1000, args.n_updates).astype(np.float64)
    with _thread_limit():
        for name in args.aggregator:
            print(json.dumps(bench(name, updates, weights, args.runs)), flush=True)


if __name__ == "__main__":
    main()
