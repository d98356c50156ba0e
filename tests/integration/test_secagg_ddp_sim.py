"""``hierfl sim --secagg --dp untrusted_fog``: distributed DP end to end in the simulator (one
secure fog, three digits edges, real brokers); each round's epsilon is the distributed
ledger's for releases of three Skellam shares."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hierfl.config import PrivacySettings
from hierfl.model import ModelStore
from hierfl.privacy.distributed import (
    DISTRIBUTED_LEDGER_FILE,
    DistributedLedger,
    params_from_settings,
)
from hierfl.sim.runner import SimConfig, run_sim_async

pytestmark = pytest.mark.integration


async def test_secagg_ddp_sim_accounts_each_round_by_its_survivors(
    mqtt_broker, kafka_broker, tmp_path, unique_id
):
    sigma, rounds = 2.0, 2
    cfg = SimConfig(
        scenario="digits", fogs=1, edges=3, rounds=rounds, k1=1, mode="inprocess",
        mqtt_url=mqtt_broker.url, kafka_bootstrap=kafka_broker.bootstrap, out=tmp_path,
        federation=unique_id, live=False, secagg=True, dp="untrusted_fog", dp_sigma=sigma,
        dp_clip=0.5,
    )
    await run_sim_async(cfg)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["privacy"]["mode"] == "untrusted_fog"
    assert len(report["rounds"]) == rounds
    store = ModelStore(tmp_path / "store")
    dim = store.load(rounds).weights.size
    privacy = PrivacySettings(mode="untrusted_fog", noise_multiplier=sigma, clip_norm=0.5)
    ledger = DistributedLedger(None, population="fog0", params=params_from_settings(
        privacy, expected_edges=3, dim=dim), delta=cfg.dp_delta)
    want = [ledger.spend(3) for _ in range(rounds)]
    assert [r["epsilon"] for r in report["rounds"]] == pytest.approx(want, rel=1e-9)
    for v in range(1, rounds + 1):
        m = store.load(v).meta["fogs"]["fog0"]["metrics"]
        assert m["dp.surviving_edges"] == 3.0 and m["dp.expected_edges"] == 3.0
        assert m["dp.effective_noise_multiplier"] == pytest.approx(
            ledger.metrics()["dp.effective_noise_multiplier"], rel=1e-9)
    on_disk = json.loads((tmp_path / "privacy" / "fog0" / DISTRIBUTED_LEDGER_FILE).read_text())
    assert on_disk["last_surviving"] == 3
    assert sum(g["releases"] for g in on_disk["groups"]) == rounds
    # the model trained despite the noise being inside the sum (it moved, and stayed finite)
    w0, w = store.load(0).weights, store.load(rounds).weights
    assert np.all(np.isfinite(w)) and not np.allclose(w, w0)
