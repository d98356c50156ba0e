"""Record-level DP over real brokers: when every edge of the region has spent its own budget,
the fog closes its round at once (not at its deadline) and the federation ends with
"stopped: privacy budget"; with ``report_samples`` no edge reveals its dataset size."""

from __future__ import annotations

import time

import pytest

from hierfl.cloud.service import CloudService
from hierfl.edge import EdgeClient
from hierfl.fog.round import FogState
from hierfl.model import ModelStore
from hierfl.privacy.accountant import epsilon_for
from hierfl.privacy.federation import STOPPED
from hierfl.privacy.record import LAST_UPDATE_METRIC
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


async def test_privacy_record_region_spent_ends_the_federation_without_waiting(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    # n0, n1: 16 records, batch 8 (q = 0.5, 2 DP-SGD steps a round): budget for 2 rounds.
    # n2: a budget too small for one round: spent at once, it never sends.
    sigma, q, steps = 1.0, 0.5, 2
    e2 = epsilon_for(noise_multiplier=sigma, sample_rate=q, releases=2 * steps, delta=1e-5)
    e3 = epsilon_for(noise_multiplier=sigma, sample_rate=q, releases=3 * steps, delta=1e-5)
    privacy = {"mode": "record", "noise_multiplier": sigma, "clip_norm": 1.0, "delta": 1e-5,
               "target_epsilon": (e2 + e3) / 2, "report_samples": 1}
    timeout = 300  # a fog or cloud that waited for a deadline would fail the test
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, TOPO, tmp_path / "store",
        tmp_path / "init.npz", versions=None, signed=False, k2=3,
        fog_overrides={"privacy": privacy, "round_timeout_s": timeout, "quorum": 1,
                       "allowed_edges": ["n0", "n1", "n2"]},
        cloud_overrides={"privacy": privacy, "round_timeout_s": timeout},
    )
    edges = []
    for i, s in enumerate(edge_s):
        p = fog_s[0].privacy.model_copy(update={"ledger_dir": tmp_path / f"ledger-{s.edge_id}"})
        if s.edge_id == "n2":
            p = p.model_copy(update={"target_epsilon": 0.01})
        edges.append(EdgeClient(s.model_copy(update={"privacy": p}), tiny_task(i, n=16)))
    cloud = CloudService(cloud_s)
    fogs = make_fogs(fog_s)
    started = time.monotonic()
    async with (
        spy_updates(mqtt_broker.url, unique_id, ["north"]) as spy,
        running(cloud, *fogs, *edges),
    ):
        await wait_for(cloud.finished.is_set, 90, "the cloud to stop on the privacy budget")
        took = time.monotonic() - started
        await wait_for(lambda: fogs[0].round.state is FogState.BUDGET_SPENT, 30,
                       "the fog to stop opening rounds")
    assert took < timeout / 2  # no round waited for its deadline
    assert edges[2].budget_spent and edges[2].updates_sent == 0
    sent = sorted((u.edge_id, u.base_version, u.base_seq) for u in spy.updates)
    assert [e for e, _, _ in sent] == ["n0", "n0", "n1", "n1"]  # two rounds each, then spent
    assert all(u.num_samples == 1 for u in spy.updates)  # report_samples: not the true 16
    # the second round's updates say they are the last
    for u in spy.updates:
        assert u.metrics.get(LAST_UPDATE_METRIC, 0.0) == (1.0 if u.base_seq > 1 else 0.0)
    assert fogs[0].metrics.counters.get("rounds_skipped", 0) == 0
    # v1 is the final model: the fog forwarded after 2 of k2 = 3 fog rounds, the region spent
    store = ModelStore(tmp_path / "store")
    assert store.latest().version == 1
    meta = store.load(1).meta
    assert meta["status"] == STOPPED
    assert meta["privacy"]["status"] == STOPPED
    assert meta["privacy"]["regions"]["north"]["region_spent"] == 1.0
    assert meta["metrics"]["dp.epsilon"] == pytest.approx(e2, rel=1e-6)
    assert cloud.metrics.gauges["privacy_budget_spent"] == 1


async def test_privacy_record_cloud_stops_waiting_for_a_spent_region(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    # east's edges can pay for 1 round, west's for 3 (16 records, batch 8: 2 steps a round)
    topo = Topology({"east": ["e0", "e1"], "west": ["w0", "w1"]})
    sigma, q, steps = 1.0, 0.5, 2
    eps = [epsilon_for(noise_multiplier=sigma, sample_rate=q, releases=k * steps, delta=1e-5)
           for k in (1, 2, 3, 4)]
    budget = {"east": (eps[0] + eps[1]) / 2, "west": (eps[2] + eps[3]) / 2}
    privacy = {"mode": "record", "noise_multiplier": sigma, "clip_norm": 1.0, "delta": 1e-5,
               "target_epsilon": max(budget.values())}
    timeout = 300  # a cloud that waited for the spent region would need 2 x 300 s
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=None, signed=False,
        fog_overrides={"privacy": privacy, "round_timeout_s": timeout, "quorum": 1},
        cloud_overrides={"privacy": privacy, "round_timeout_s": timeout},
    )
    fog_s = [f.model_copy(update={"allowed_edges": list(topo.fogs[f.fog_id])}) for f in fog_s]
    edges = []
    for i, s in enumerate(edge_s):
        p = fog_s[0].privacy.model_copy(update={
            "ledger_dir": tmp_path / f"ledger-{s.edge_id}", "target_epsilon": budget[s.fog_id]})
        edges.append(EdgeClient(s.model_copy(update={"privacy": p}), tiny_task(i, n=16)))
    cloud = CloudService(cloud_s)
    fogs = make_fogs(fog_s)
    started = time.monotonic()
    async with running(cloud, *fogs, *edges):
        await wait_for(cloud.finished.is_set, 120, "the cloud to stop on the privacy budget")
    assert time.monotonic() - started < timeout / 2
    store = ModelStore(tmp_path / "store")
    assert store.latest().version == 3  # one version with east, two more from west alone
    assert cloud.round.config.fogs == frozenset({"west"})
    meta = store.load(3).meta
    assert meta["status"] == STOPPED
    assert meta["num_fogs"] == 1  # v2 and v3 closed with west, not at a deadline
    assert not meta["timed_out"]
    assert {r: v.get("region_spent") for r, v in meta["privacy"]["regions"].items()} == {
        "east": 1.0, "west": 1.0}
    assert store.load(1).meta["num_fogs"] == 2
