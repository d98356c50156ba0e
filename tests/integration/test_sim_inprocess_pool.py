"""An in-process federation runs its tiers' thread hops on the sim's own pool (one worker per
core), on real brokers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from hierfl.sim import runner
from hierfl.sim.runner import SimConfig, run_sim_async

pytestmark = pytest.mark.integration


class _CountingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=2, thread_name_prefix="hierfl-sim")
        self.submitted = 0
        self.closed = False

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.closed = True
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


async def test_inprocess_tiers_use_the_sims_pool(mqtt_broker, kafka_broker, tmp_path,
                                                 unique_id, monkeypatch):
    pools: list[_CountingPool] = []

    def pool(cfg: SimConfig) -> _CountingPool:
        pools.append(_CountingPool())
        return pools[-1]

    monkeypatch.setattr(runner, "_inprocess_pool", pool)
    cfg = SimConfig(scenario="digits", fogs=1, edges=2, rounds=2, mode="inprocess",
                    mqtt_url=mqtt_broker.url, kafka_bootstrap=kafka_broker.bootstrap,
                    out=tmp_path, federation=unique_id, live=False)
    report = await run_sim_async(cfg)
    assert report["stopped"] is None and len(report["rounds"]) == 2
    assert len(pools) == 1
    # every edge trains in a thread (always), every round: at least 2 x 2 hops, and the
    # spool and model store's durable writes besides
    assert pools[0].submitted >= 2 * 2 + 2
    assert pools[0].closed
