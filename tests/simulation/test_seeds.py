"""The deterministic simulator in the default suite: 500 seeds, replayable, and able to fail.

Every seed runs the real cloud, fog and edge services over the in-memory brokers (proved
against mosquitto, amqtt and Tansu by tests/contract) on a virtual clock, with faults drawn
from the seed, and checks the invariants after every step (hierfl/simtest/ledger.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hierfl.simtest.batch import replay_command, run_seeds, summary, timed
from hierfl.simtest.world import plan_for, run_seed

SEEDS = range(500)


@pytest.mark.timeout(1200)  # ~90 s on 2 idle cores; CPU-bound, so a loaded machine stretches it
def test_500_seeds_hold_every_invariant():
    jobs = max(2, os.cpu_count() or 1)
    outcomes, wall = timed(SEEDS, jobs=jobs)
    out = summary(outcomes, wall_s=wall, jobs=jobs)
    print(json.dumps(out))  # seeds/s in the log of a -s run
    assert out["seeds"] == len(SEEDS)
    assert not out["failed"], "\n".join(
        f"seed {f['seed']}: {f['violation']}\n  replay: {f['replay']}" for f in out["failed"])
    # the seeds really exercised the hierarchy: versions were made and faults were planned
    assert out["versions"] >= 2 * len(SEEDS)
    assert sum(len(plan_for(s).events) for s in SEEDS[:50]) > 50 * 5


def test_a_seed_replays_exactly_in_this_process_and_in_a_worker():
    # one seed per edge codec (the lossy ones keep error-feedback state on disk)
    by_codec: dict[str, int] = {}
    for s in range(60):
        by_codec.setdefault(plan_for(s).codec, s)
    seeds = sorted(by_codec.values())
    assert len(seeds) >= 3
    workers = {o.seed: o for o in run_seeds(seeds, jobs=2)}
    for seed in seeds:
        first, again = run_seed(seed), run_seed(seed)
        for other in (again, workers[seed]):
            assert (other.digest, other.steps, other.versions) == (
                first.digest, first.steps, first.versions), seed
        assert first.ok and first.versions >= 2


def test_different_seeds_draw_different_runs():
    digests = {run_seed(s, faults=False).digest for s in range(4)}
    assert len(digests) == 4


def test_a_deliberate_bug_is_caught_and_its_seed_replays_to_the_same_violation():
    """Fogs without a spool lose accepted updates when they crash: the ledger must see it."""
    caught = None
    for seed in range(200):
        r = run_seed(seed, mutate="no-spool")
        if not r.ok:
            caught = r
            break
    assert caught is not None, "200 seeds with fogs that forget on crash, none caught"
    assert "lost update" in (caught.violation or "")
    assert run_seed(caught.seed).ok  # the same seed with the spool passes
    replay = run_seed(caught.seed, mutate="no-spool")
    assert replay.violation == caught.violation and replay.steps == caught.steps
    assert "crash fog/" in caught.trace


def test_the_cli_replays_a_failing_seed_and_prints_the_command(tmp_path):
    seed = next(s for s in range(200) if not run_seed(s, mutate="no-spool").ok)
    cmd = [sys.executable, "-m", "hierfl", "simtest", "--seed", str(seed),
           "--mutate", "no-spool"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 1, p.stderr
    out = json.loads(p.stdout)
    assert out["failed"][0]["seed"] == seed
    assert out["failed"][0]["replay"] == replay_command(seed, mutate="no-spool")
    assert f"hierfl simtest --seed {seed} --mutate no-spool" in p.stderr
    assert "trace" in p.stderr and "lost update" in p.stderr


def test_the_cli_runs_a_range_and_prints_seeds_per_second():
    cmd = [sys.executable, "-m", "hierfl", "simtest", "--seeds", "0:6", "--jobs", "2"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["seeds"], out["passed"], out["failed"]) == (6, 6, [])
    assert out["seeds_per_s"] > 0 and out["steps"] > 0


@pytest.mark.parametrize("bad", ["5", "9:3", "a:b"])
def test_the_cli_refuses_a_bad_range(bad):
    cmd = [sys.executable, "-m", "hierfl", "simtest", "--seeds", bad]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2 and "A:B" in p.stderr + p.stdout
