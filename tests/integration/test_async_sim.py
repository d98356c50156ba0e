"""hierfl sim with buffered fogs and a straggler (in-process, real brokers): the federation
makes its versions without waiting for the slow edge, whose slowness the profile models."""

from __future__ import annotations

import time

import pytest

from hierfl.model import ModelStore
from hierfl.sim.runner import SimConfig, run_sim_async

pytestmark = pytest.mark.integration


async def test_buffered_sim_runs_on_without_its_straggler(mqtt_broker, kafka_broker, tmp_path,
                                                          unique_id):
    # 4 edges on one fog; edge e000 is the straggler: each pass 0.3 + 10 x 0.3 = 3.3 s
    cfg = SimConfig(
        scenario="digits", fogs=1, edges=4, rounds=4, k1=1, mode="inprocess",
        mqtt_url=mqtt_broker.url, kafka_bootstrap=kafka_broker.bootstrap, out=tmp_path,
        federation=unique_id, live=False, stragglers="0.25:11:0.3",
        aggregation="buffered", buffer_size=3, max_staleness=1,
    )
    started = time.monotonic()
    report = await run_sim_async(cfg)
    took = time.monotonic() - started
    assert report["stopped"] is None and len(report["rounds"]) == 4
    # a version is 3 updates; the first came from the three fast edges: the fog did not wait
    # for the straggler's first pass (3.3 s of modelled device time)
    assert all(r["fogs"] == {"fog0": 3} for r in report["rounds"])
    first = ModelStore(tmp_path / "store").load(1).meta["fogs"]["fog0"]["contributors"]
    assert sorted(first) == ["e001", "e002", "e003"]
    assert report["config"]["aggregation"] == "buffered"
    assert report["config"]["stragglers"] == "0.25:11:0.3"
    assert took < 60
