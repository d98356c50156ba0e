"""Run many seeds, in worker processes, and sum them up (``hierfl simtest``, the tests).

Each seed is independent, so seeds are spread over ``jobs`` processes (started with
``spawn`` and ``PYTHONHASHSEED=0``: a worker's result is exactly what
``hierfl simtest --seed N`` prints when it replays the seed).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from hierfl.simtest.world import SeedResult, run_seed

__all__ = ["Outcome", "replay_command", "run_seeds", "summary"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one seed did, small enough to send between processes."""

    seed: int
    ok: bool
    violation: str | None
    versions: int
    steps: int
    virtual_s: float
    wall_s: float
    digest: str
    plan: str = ""
    trace: str = ""

    @classmethod
    def of(cls, r: SeedResult, *, detail: bool) -> Outcome:
        keep = detail or not r.ok
        return cls(r.seed, r.ok, r.violation, r.versions, r.steps, r.virtual_s, r.wall_s,
                   r.digest, r.plan if keep else "", r.trace if keep else "")


def replay_command(seed: int, *, faults: bool = True, mutate: str | None = None) -> str:
    """The one command that replays ``seed`` with its plan and trace."""
    extra = ("" if faults else " --no-faults") + (f" --mutate {mutate}" if mutate else "")
    return f"hierfl simtest --seed {seed}{extra}"


def _one(args: tuple[int, bool, str | None, bool]) -> Outcome:
    seed, faults, mutate, detail = args
    return Outcome.of(run_seed(seed, faults=faults, mutate=mutate), detail=detail)


def run_seeds(seeds: Iterable[int], *, jobs: int = 1, faults: bool = True,
              mutate: str | None = None, detail: bool = False) -> Iterator[Outcome]:
    """Run ``seeds`` and yield their outcomes in seed order.

    Args:
        seeds: the seeds.
        jobs: worker processes; 1 runs in this process.
        faults: False runs every seed's federation without faults.
        mutate: a deliberate bug (:func:`~hierfl.simtest.world.run_seed`).
        detail: keep the plan and the trace of seeds that passed too.
    """
    work = [(s, faults, mutate, detail) for s in seeds]
    if jobs <= 1 or len(work) <= 1:
        for w in work:
            yield _one(w)
        return
    before = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = "0"  # the workers' interpreters start with it
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            chunk = max(1, min(16, len(work) // (4 * jobs)))
            yield from pool.map(_one, work, chunksize=chunk)
    finally:
        if before is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = before


def summary(outcomes: list[Outcome], *, wall_s: float, jobs: int, faults: bool = True,
            mutate: str | None = None) -> dict[str, Any]:
    """The JSON summary ``hierfl simtest`` prints."""
    failed = [o for o in outcomes if not o.ok]
    steps = sum(o.steps for o in outcomes)
    return {
        "seeds": len(outcomes),
        "first": min((o.seed for o in outcomes), default=None),
        "last": max((o.seed for o in outcomes), default=None),
        "passed": len(outcomes) - len(failed),
        "failed": [{"seed": o.seed, "violation": o.violation,
                    "replay": replay_command(o.seed, faults=faults, mutate=mutate)}
                   for o in failed],
        "jobs": jobs,
        "faults": faults,
        "mutate": mutate,
        "wall_s": round(wall_s, 3),
        "seeds_per_s": round(len(outcomes) / wall_s, 2) if wall_s > 0 else None,
        "steps": steps,
        "steps_per_s": round(steps / wall_s) if wall_s > 0 else None,
        "virtual_s": round(sum(o.virtual_s for o in outcomes), 1),
        "versions": sum(o.versions for o in outcomes),
    }


def timed(seeds: Iterable[int], **kwargs: Any) -> tuple[list[Outcome], float]:
    """:func:`run_seeds` into a list, with its wall time."""
    started = time.perf_counter()
    out = list(run_seeds(seeds, **kwargs))
    return out, time.perf_counter() - started
