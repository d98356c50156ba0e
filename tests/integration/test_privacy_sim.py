"""``hierfl sim --dp``: epsilon per round in report.json, the budget stop ends the run early."""

from __future__ import annotations

import json

import pytest

from hierfl.privacy.accountant import epsilon_for
from hierfl.sim.runner import SimConfig, run_sim_async

pytestmark = pytest.mark.integration


async def test_privacy_sim_trusted_fog_stops_on_its_budget(
    mqtt_broker, kafka_broker, tmp_path, unique_id
):
    sigma = 3.0
    eps = [epsilon_for(noise_multiplier=sigma, sample_rate=1.0, releases=n, delta=1e-5)
           for n in range(5)]
    cfg = SimConfig(
        scenario="digits", fogs=2, edges=4, rounds=10, k1=1, mode="inprocess",
        mqtt_url=mqtt_broker.url, kafka_bootstrap=kafka_broker.bootstrap, out=tmp_path,
        federation=unique_id, live=False, security="insecure",
        dp="trusted_fog", dp_sigma=sigma, dp_clip=0.5, dp_epsilon=(eps[3] + eps[4]) / 2,
    )
    report = await run_sim_async(cfg)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["stopped"] == "stopped: privacy budget"
    assert len(on_disk["rounds"]) == 3  # 10 asked, the budget paid for 3 releases per region
    assert [r["epsilon"] for r in on_disk["rounds"]] == pytest.approx(eps[1:4])
    priv = on_disk["privacy"]
    assert priv["mode"] == "trusted_fog"
    assert priv["budget_stop"] is True
    assert priv["epsilon"] == pytest.approx(eps[3])
    assert priv["epsilon"] <= cfg.dp_epsilon
    assert report["plot_path"] and (tmp_path / "report.png").stat().st_size > 0
    # each region's ledger is on disk under OUT/privacy/<fog>
    for fog in ("fog0", "fog1"):
        ledger = json.loads((tmp_path / "privacy" / fog / "privacy-ledger.json").read_text())
        assert sum(g["releases"] for g in ledger["groups"]) == 3
