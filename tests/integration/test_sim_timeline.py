"""Round timelines over real brokers: every tier's spans reach the cloud, the report shows where
each round's time went, and uplink bytes are the same run to run (clock readings travel in the
frames' meta section, outside the compressed body)."""

from __future__ import annotations

import json

import pytest

from hierfl.sim.runner import SimConfig, run_sim_async
from hierfl.timeline import read_timelines

pytestmark = pytest.mark.integration


async def _run(out, federation, mqtt_broker=None, kafka_broker=None):
    cfg = SimConfig(
        scenario="digits", fogs=2, edges=6, rounds=3, k1=1, mode="inprocess",
        mqtt_url=mqtt_broker.url if mqtt_broker else None,
        kafka_bootstrap=kafka_broker.bootstrap if kafka_broker else None, out=out,
        federation=federation, live=False, lr=0.2,
    )
    return await run_sim_async(cfg)


async def test_timeline_reaches_the_report_and_bytes_repeat(mqtt_broker, kafka_broker,
                                                            tmp_path, unique_id):
    first = await _run(tmp_path / "a", unique_id, mqtt_broker, kafka_broker)
    # the same federation (its name is in every frame) on brokers of its own (a fresh log)
    second = await _run(tmp_path / "b", unique_id)

    # same seed, same data, same models: the same bytes on the uplink, round by round, whatever
    # the clocks read (they travel outside the compressed body)
    assert [r["edge_fog_bytes"] for r in first["rounds"]] == [
        r["edge_fog_bytes"] for r in second["rounds"]]
    assert first["final_accuracy"] == second["final_accuracy"]

    # the cloud wrote one line per round, each with every tier's spans
    lines = read_timelines(tmp_path / "a" / "store" / "timeline.jsonl")
    assert [ln["version"] for ln in lines] == [0, 1, 2]
    for ln in lines:
        assert ln["round_s"] > 0
        st = ln["stages"]
        assert st["edge.train"]["n"] == 6 and st["edge.encode"]["n"] == 6
        assert st["fog.update_in"]["n"] == 6 and st["fog.admit"]["n"] == 6
        assert st["fog.aggregate"]["n"] == 2 and st["fog.forward"]["n"] == 2
        assert st["cloud.aggregate_in"]["n"] == 2 and st["cloud.combine"]["n"] == 1
        assert st["cloud.publish"]["n"] == 1 and st["cloud.checkpoint"]["n"] == 1
        parties = {s[1] for s in ln["spans"]}
        assert {"cloud", "fog0", "fog1"} <= parties
        assert {f"fog0/e00{i}" for i in range(3)} <= parties
        path = [p["stage"] for p in ln["critical_path"]]
        assert path[0] == "cloud.publish" and "edge.train" in path and "cloud.combine" in path
        # a stage on the path never ends before it starts, nor after the round
        for p in ln["critical_path"]:
            assert 0 <= p["start_s"] <= p["end_s"] <= ln["round_s"] + 0.5

    # the report: round time from the cloud's clock, the breakdown, the observer's figure too
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    tl = report["timeline"]
    assert report["totals"]["median_round_s"] == tl["median_round_s"]
    assert report["totals"]["observer_median_round_s"] > 0
    assert set(tl["stages"]) >= {"edge.train", "fog.aggregate", "cloud.combine"}
    assert tl["critical_path_s"]["edge.train"] > 0
    assert tl["median_round"]["critical_path"][0]["stage"] == "cloud.publish"
