"""``hierfl sim`` with the learning options: FedAdam at the cloud, SCAFFOLD and fog-level
personalisation run end to end, and report.json carries per-region metrics."""

from __future__ import annotations

import json

import pytest

from hierfl.sim.runner import SimConfig, run_sim_async

pytestmark = pytest.mark.integration


async def test_sim_reports_per_region_metrics_with_personalisation(
        mqtt_broker, kafka_broker, tmp_path, unique_id):
    cfg = SimConfig(
        scenario="sensors", fogs=2, edges=4, rounds=2, k1=1, mode="inprocess",
        mqtt_url=mqtt_broker.url, kafka_bootstrap=kafka_broker.bootstrap, out=tmp_path,
        federation=unique_id, live=False, server_opt="fedadam", scaffold=True,
        personalise=0.5,
    )
    report = await run_sim_async(cfg)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert len(on_disk["rounds"]) == 2
    for r in on_disk["rounds"]:
        assert set(r["regions"]) == {"fog0", "fog1"}
        for m in r["regions"].values():
            assert 0.0 <= m["accuracy"] <= 1.0 and m["loss"] > 0
    regions = on_disk["regions"]
    assert set(regions["final"]) == {"fog0", "fog1"}
    accs = [m["accuracy"] for m in regions["final"].values()]
    assert regions["worst_accuracy"] == min(accs) and regions["best_accuracy"] == max(accs)
    assert regions["spread"] == pytest.approx(max(accs) - min(accs))
    # the optimiser's state and SCAFFOLD's c were checkpointed with the last version
    meta = json.loads((tmp_path / "store" / "v00000002.json").read_text())
    assert meta["server_opt"]["name"] == "fedadam" and meta["server_opt"]["step"] == 2
    assert "scaffold" in meta
    assert report["config"]["personalise"] == 0.5
