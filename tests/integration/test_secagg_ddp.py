"""Distributed DP through secure aggregation over real brokers (MQTT + Kafka): a secure fog,
three torch edges in ``privacy.mode = "untrusted_fog"``; each edge adds its Skellam share
inside the SecAgg+ round, the fog accounts every release with the distributed ledger by the
edges whose masked input survived, and the federation stops at its budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hierfl.cloud.service import CloudService
from hierfl.config import EdgeSettings
from hierfl.edge import EdgeClient
from hierfl.fog.round import FogState
from hierfl.model import ModelStore
from hierfl.privacy.distributed import (
    DISTRIBUTED_LEDGER_FILE,
    DistributedLedger,
    params_from_settings,
)
from hierfl.privacy.federation import STOPPED
from tests.integration.fed import (
    Topology,
    make_fogs,
    running,
    settings_for,
    spy_updates,
    tiny_task,
    wait_for,
    write_initial,
)

pytestmark = pytest.mark.integration

TOPO = Topology({"north": ["n0", "n1", "n2"]})
DIM = 51  # tests/integration/fed.py's tiny model: 8*4 + 4 + 4*3 + 3
CLIP = 1.0
STAGES = {"mode": "secure", "advertise_s": 10, "share_s": 10, "masked_s": 20, "unmask_s": 10}


def _privacy(sigma: float, target: float | None = None) -> dict[str, Any]:
    return {"mode": "untrusted_fog", "noise_multiplier": sigma, "clip_norm": CLIP,
            "delta": 1e-5, "target_epsilon": target}


async def _run(url: str, bootstrap: str, fed: str, folder: Path, *, versions: int,
               privacy: dict[str, Any] | None, stop: bool = False, topo: Topology = TOPO,
               stages: dict[str, Any] = STAGES, drop: str | None = None) -> Any:
    initial = folder / "init.npz"
    folder.mkdir()
    write_initial(initial)
    # without DP, the same secure fog unweighted (each survivor counts once) and clipping to
    # the same bound: the plain FedAvg of the clipped updates the DP run is compared with
    secagg: dict[str, Any] = dict(stages) if privacy else {**stages, "weighted": False,
                                                            "clip_norm": CLIP}
    fog_over: dict[str, Any] = {"round_timeout_s": 90, "secagg": secagg,
                                "spool_dir": folder / "spool"}
    cloud_over: dict[str, Any] = {}
    if privacy:
        fog_over["privacy"] = privacy
        cloud_over["privacy"] = privacy
    cloud_s, fog_s, edge_s = settings_for(url, bootstrap, fed, topo, folder / "store", initial,
                                          versions=versions, fog_overrides=fog_over,
                                          cloud_overrides=cloud_over)
    # through the validators (model_copy skips them): weighted forced off, clip = privacy's
    edge_s = [EdgeSettings.load(**{**e.model_dump(exclude_none=True), "secagg": secagg,
                                   **({"privacy": privacy} if privacy else {})})
              for e in edge_s]
    cloud = CloudService(cloud_s)
    fogs = make_fogs(fog_s)
    edges = [EdgeClient(s, tiny_task(i)) for i, s in enumerate(edge_s)]
    for e in edges:
        if e.settings.edge_id == drop:  # fault injection: silent after sharing its keys
            assert e.secagg is not None
            e.secagg.driver.stop_after = "shares"
    async with spy_updates(url, fed, ["north"]) as spy:
        async with running(cloud, *fogs, *edges) as tasks:
            await wait_for(cloud.finished.is_set, 120, "the cloud rounds")
            if stop:
                await wait_for(lambda: tasks[0].done(), 30, "the cloud's run() to return")
                await wait_for(lambda: fogs[0].round.state is FogState.BUDGET_SPENT, 60,
                               "the fog's budget stop")
    return ModelStore(folder / "store"), fogs, edges, spy, fog_s[0]


def _expected_ledger(fog_settings: Any) -> DistributedLedger:
    params = params_from_settings(fog_settings.privacy, expected_edges=3, dim=DIM)
    return DistributedLedger(None, population="north", params=params, delta=1e-5)


async def test_secagg_ddp_noised_sum_accounted_by_survivors(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    sigma, versions = 0.5, 2
    plain, *_ = await _run(mqtt_broker.url, kafka_broker.bootstrap, f"{unique_id}p",
                           tmp_path / "plain", versions=1, privacy=None)
    store, (fog,), edges, spy, fog_s = await _run(
        mqtt_broker.url, kafka_broker.bootstrap, f"{unique_id}d", tmp_path / "ddp",
        versions=versions, privacy=_privacy(sigma))
    assert fog_s.secagg.weighted is False and fog_s.secagg.clip_norm == CLIP  # forced
    assert spy.updates == []  # nothing in the clear
    assert fog.secagg is not None and fog.secagg.driver is not None
    for e in edges:  # each edge's update left through SecAgg+ (its share added there)
        assert e.secagg is not None and len(e.secagg.driver.completed) >= versions
        assert e.privacy is not None and e.privacy.distributed
    # v1: both runs start from the same model and train the same way, so the difference is
    # the noise of the mean of 3 survivors: the sum carries std sigma * C (3 shares of
    # variance (sigma C)^2 / 3 each), the mean a third of it
    got = store.load(1).weights.astype(np.float64)
    want = plain.load(1).weights.astype(np.float64)
    diff = got - want
    expected_std = sigma * CLIP / 3
    assert not np.allclose(got, want, atol=1e-4)  # noised
    assert 0.6 * expected_std < float(np.std(diff)) < 1.5 * expected_std  # of the right scale
    assert float(np.abs(np.mean(diff))) < 4 * expected_std / np.sqrt(DIM)  # unbiased
    # every release: 3 surviving noise shares, epsilon as DistributedLedger accounts them
    ledger = _expected_ledger(fog_s)
    for v in range(1, versions + 1):
        eps = ledger.spend(3)
        meta = store.load(v).meta
        m = meta["fogs"]["north"]["metrics"]
        assert m["dp.surviving_edges"] == 3.0
        assert m["dp.expected_edges"] == 3.0
        assert m["dp.releases"] == float(v)
        assert m["dp.epsilon"] == pytest.approx(eps, rel=1e-9)
        assert m["dp.effective_noise_multiplier"] == pytest.approx(
            ledger.metrics()["dp.effective_noise_multiplier"], rel=1e-9)
        assert meta["privacy"]["epsilon"] == pytest.approx(eps, rel=1e-9)
        assert meta["status"] == "running"
    # the ledger is on disk (the fog's spool folder) and a restart reads it back
    path = tmp_path / "ddp" / "spool" / DISTRIBUTED_LEDGER_FILE
    data = json.loads(path.read_text())
    assert data["kind"] == "distributed-skellam" and data["last_surviving"] == 3
    assert sum(g["releases"] for g in data["groups"]) == versions
    again = DistributedLedger(path, population="north", params=ledger.params, delta=1e-5)
    assert again.epsilon() == pytest.approx(ledger.epsilon(), rel=1e-12)


async def test_secagg_ddp_federation_stops_at_its_budget(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    sigma = 1.0
    probe = _expected_ledger(EdgeSettings.load(
        federation="x", fog_id="north", edge_id="n0", privacy=_privacy(sigma)))
    e2, e3 = probe.epsilon(3, releases=2), probe.epsilon(3, releases=3)
    target = (e2 + e3) / 2  # pays for 2 releases of 3 shares, not 3
    store, (fog,), _, _, _ = await _run(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, tmp_path / "ddp", versions=6,
        privacy=_privacy(sigma, target), stop=True)
    final = store.load(store.versions()[-1])
    assert store.versions() == [0, 1, 2]
    assert final.meta["status"] == STOPPED
    assert final.meta["privacy"]["epsilon"] == pytest.approx(e2, rel=1e-9)
    assert final.meta["privacy"]["epsilon"] <= target
    assert fog.round.privacy.ledger.releases == 2
    assert fog.metrics.gauges.get("privacy_budget_spent") == 1
    data = json.loads((tmp_path / "ddp" / "spool" / DISTRIBUTED_LEDGER_FILE).read_text())
    assert sum(g["releases"] for g in data["groups"]) == 2


async def test_secagg_ddp_dropped_edge_is_accounted_with_less_noise(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    sigma = 0.5
    topo = Topology({"north": ["n0", "n1", "n2", "n3"]})  # t = 3 of 4: one may drop
    # n3 goes silent after sharing its keys in every round: its masked input (and its
    # noise share) never reaches the sum; masked_s is short so the round does not wait long
    stages = {**STAGES, "masked_s": 3}
    store, (fog,), _, _, fog_s = await _run(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, tmp_path / "ddp", versions=1,
        privacy=_privacy(sigma), topo=topo, stages=stages, drop="n3")
    meta = store.load(1).meta
    m = meta["fogs"]["north"]["metrics"]
    assert meta["fogs"]["north"]["num_edges"] == 3
    assert (m["dp.expected_edges"], m["dp.surviving_edges"]) == (4.0, 3.0)
    params = params_from_settings(fog_s.privacy, expected_edges=4, dim=DIM)
    full = DistributedLedger(None, population="north", params=params, delta=1e-5)
    ledger = DistributedLedger(None, population="north", params=params, delta=1e-5)
    assert m["dp.epsilon"] == pytest.approx(ledger.spend(3), rel=1e-9)
    assert m["dp.epsilon"] > full.spend(4)  # fewer shares: less noise, more epsilon
    assert m["dp.effective_noise_multiplier"] == pytest.approx(
        full.metrics()["dp.effective_noise_multiplier"] * np.sqrt(3 / 4), rel=1e-9)
    assert fog.secagg is not None and fog.secagg.driver is not None
