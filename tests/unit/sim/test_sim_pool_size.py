"""hierfl sim --mode inprocess: its tiers' worker threads, one per core (hierfl.sim.runner)."""

from __future__ import annotations

import os

from hierfl.sim.runner import SimConfig, _inprocess_pool


def _cfg(tmp_path, **kw) -> SimConfig:
    return SimConfig(scenario="digits", fogs=1, edges=2, rounds=1, mode="inprocess",
                     out=tmp_path, live=False, **kw)


def test_one_worker_per_core(tmp_path) -> None:
    pool = _inprocess_pool(_cfg(tmp_path))
    try:
        assert pool is not None
        assert pool._max_workers == len(os.sched_getaffinity(0))
        assert pool._thread_name_prefix == "hierfl-sim"
    finally:
        if pool is not None:
            pool.shutdown()


def test_modelled_device_time_keeps_asyncios_default(tmp_path) -> None:
    # a straggler's wait is a sleep in its training thread: it must not hold one of the few
    # workers every other tier needs
    assert _inprocess_pool(_cfg(tmp_path, stragglers="0.25:5")) is None
    assert _inprocess_pool(_cfg(tmp_path, intermittent="0.1:5")) is None
