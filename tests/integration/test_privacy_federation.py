"""Device-level DP over real brokers: the fog clips what arrives, noises the region's sum,
accounts every release in a persisted ledger, and the federation stops on its budget.

Each test runs a tiny federation (one fog, two edges, the tiny model of tests/integration/fed.py)
on the session's real MQTT and Kafka brokers.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from hierfl.cloud.service import CloudService
from hierfl.edge import EdgeClient
from hierfl.fog.round import FogState
from hierfl.model import ModelStore
from hierfl.privacy.accountant import epsilon_for
from hierfl.privacy.federation import STOPPED
from hierfl.privacy.ledger import LEDGER_FILE
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

TOPO = Topology({"north": ["n0", "n1"]})


def dp(**kw):
    return {"mode": "trusted_fog", "delta": 1e-5, **kw}


class HugeEdge(EdgeClient):
    """An edge that does not clip: it sends an update of L2 norm 1e6 every round."""

    def _train_on(self, frame):
        u = super()._train_on(frame)
        v = np.ones_like(u.delta, dtype=np.float64)
        v *= 1e6 / np.linalg.norm(v)
        return dataclasses.replace(u, delta=v.astype(np.float32))


async def test_privacy_fog_clips_an_edge_sending_norm_1e6(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    clip, sigma = 0.05, 0.5
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, TOPO, tmp_path / "store",
        tmp_path / "init.npz", versions=1, signed=False,
        fog_overrides={"privacy": dp(noise_multiplier=sigma, clip_norm=clip),
                       "spool_dir": tmp_path / "spool"},
        cloud_overrides={"privacy": dp(noise_multiplier=sigma, clip_norm=clip)},
    )
    honest_s = edge_s[0].model_copy(update={"max_rounds": 1, "privacy": fog_s[0].privacy})
    huge_s = edge_s[1].model_copy(update={"max_rounds": 1})  # privacy off: it does not clip
    cloud = CloudService(cloud_s)
    fogs = make_fogs(fog_s)
    edges = [EdgeClient(honest_s, tiny_task(0)), HugeEdge(huge_s, tiny_task(1))]
    async with (
        spy_updates(mqtt_broker.url, unique_id, ["north"]) as spy,
        running(cloud, *fogs, *edges),
    ):
        await wait_for(cloud.finished.is_set, 60, "one cloud round")
    store = ModelStore(tmp_path / "store")
    step = store.load(1).weights.astype(np.float64) - store.load(0).weights.astype(np.float64)
    sent = {u.edge_id: u.delta.astype(np.float64) for u in spy.updates}
    assert np.linalg.norm(sent["n1"]) == pytest.approx(1e6, rel=1e-5)  # it did send 1e6
    assert np.linalg.norm(sent["n0"]) <= clip * (1 + 1e-5)  # the honest edge clipped itself
    assert fogs[0].metrics.counters["accepted"] == 2
    # the fog's release: (clip(n0) + clip(n1) + noise) / m with m = min_updates = 2; the huge
    # update counts for exactly C in its own direction
    noise = 2 * step - sent["n0"] - sent["n1"] * (clip / np.linalg.norm(sent["n1"]))
    d = step.size
    std = float(np.linalg.norm(noise) / np.sqrt(d))
    assert 0.6 * sigma * clip < std < 1.4 * sigma * clip, std  # N(0, (sigma C)^2) per coordinate
    assert np.linalg.norm(step) < 2 * clip + 5 * sigma * clip * np.sqrt(d) / 2  # not ~5e5
    # the version's metadata records sigma, C, q, releases and epsilon at delta
    meta = store.load(1).meta
    region = meta["privacy"]["regions"]["north"]
    assert region["releases"] == 1
    assert region["noise_multiplier"] == sigma
    assert region["clip_norm"] == clip
    assert region["sample_rate"] == 1.0
    eps1 = epsilon_for(noise_multiplier=sigma, sample_rate=1.0, releases=1, delta=1e-5)
    assert meta["privacy"]["epsilon"] == pytest.approx(eps1)
    assert meta["metrics"]["dp.epsilon"] == pytest.approx(eps1)
    assert meta["status"] == "running"


def _ledger_releases(folder) -> int:
    data = json.loads((folder / LEDGER_FILE).read_text())
    return sum(g["releases"] for g in data["groups"])


async def test_privacy_budget_stop_survives_cloud_and_fog_restart(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    sigma, stop_at = 2.0, 4
    e4 = epsilon_for(noise_multiplier=sigma, sample_rate=1.0, releases=stop_at, delta=1e-5)
    e5 = epsilon_for(noise_multiplier=sigma, sample_rate=1.0, releases=stop_at + 1, delta=1e-5)
    target = (e4 + e5) / 2  # pays for exactly 4 releases
    privacy = dp(noise_multiplier=sigma, clip_norm=0.1, target_epsilon=target)
    spool = tmp_path / "spool"
    write_initial(tmp_path / "init.npz")

    def federation(versions):
        cloud_s, fog_s, edge_s = settings_for(
            mqtt_broker.url, kafka_broker.bootstrap, unique_id, TOPO, tmp_path / "store",
            tmp_path / "init.npz", versions=versions, signed=False,
            fog_overrides={"privacy": privacy, "spool_dir": spool},
            cloud_overrides={"privacy": privacy, "max_versions": versions},
        )
        edges = [EdgeClient(s.model_copy(update={"privacy": fog_s[0].privacy}), tiny_task(i))
                 for i, s in enumerate(edge_s)]
        return CloudService(cloud_s), make_fogs(fog_s), edges

    # 1. two cloud rounds, then the cloud and the fog stop (restart below)
    cloud, fogs, edges = federation(2)
    async with running(cloud, *fogs, *edges):
        await wait_for(cloud.finished.is_set, 60, "two cloud rounds")
    assert ModelStore(tmp_path / "store").latest().version == 2
    first = _ledger_releases(spool)
    assert first in (2, 3)  # the third may have been released before the fog stopped

    # 2. a new cloud and a new fog from the same store and spool: no max_versions, the budget
    #    ends the federation, at the release the ledger on disk says, not 4 releases later
    cloud, fogs, edges = federation(None)
    async with running(cloud, *fogs, *edges) as tasks:
        await wait_for(cloud.finished.is_set, 90, "the budget stop")
        await wait_for(lambda: tasks[0].done(), 30, "the cloud's run() to return")
        await wait_for(lambda: fogs[0].round.state is FogState.BUDGET_SPENT, 30,
                       "the fog to stop releasing")
        assert tasks[0].exception() is None  # a normal end (exit 0 from the CLI)
    store = ModelStore(tmp_path / "store")
    final = store.latest()
    assert final.version == stop_at
    assert final.meta["status"] == STOPPED
    assert final.meta["privacy"]["releases"] == stop_at
    assert final.meta["privacy"]["epsilon"] == pytest.approx(e4)
    assert final.meta["privacy"]["epsilon"] <= target
    assert _ledger_releases(spool) == stop_at
    assert fogs[0].metrics.gauges["privacy_budget_spent"] == 1
    # a cloud started again stays stopped: the final model is published, nothing more runs
    cloud, fogs, edges = federation(None)
    async with running(cloud):
        await wait_for(cloud.finished.is_set, 30, "the stopped cloud to finish at once")
    assert ModelStore(tmp_path / "store").latest().version == stop_at



async def test_privacy_record_mode_stops_an_edge_whose_budget_is_spent(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    # both edges hold 16 records, batch 8: q = 0.5, 2 DP-SGD steps per epoch (one per round)
    sigma, q, steps = 1.0, 0.5, 2
    e2 = epsilon_for(noise_multiplier=sigma, sample_rate=q, releases=2 * steps, delta=1e-5)
    e3 = epsilon_for(noise_multiplier=sigma, sample_rate=q, releases=3 * steps, delta=1e-5)
    privacy = {"mode": "record", "noise_multiplier": sigma, "clip_norm": 1.0, "delta": 1e-5,
               "target_epsilon": (e2 + e3) / 2}
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, TOPO, tmp_path / "store",
        tmp_path / "init.npz", versions=None, signed=False,
        fog_overrides={"privacy": privacy, "round_timeout_s": 5, "quorum": 1},
        cloud_overrides={"privacy": privacy},
    )
    edges = [
        EdgeClient(s.model_copy(update={"privacy": fog_s[0].privacy.model_copy(
            update={"ledger_dir": tmp_path / f"ledger-{s.edge_id}"})}), tiny_task(i, n=16))
        for i, s in enumerate(edge_s)
    ]
    cloud = CloudService(cloud_s)
    fogs = make_fogs(fog_s)
    async with (
        spy_updates(mqtt_broker.url, unique_id, ["north"]) as spy,
        running(cloud, *fogs, *edges) as tasks,
    ):
        await wait_for(lambda: all(t.done() for t in tasks[2:]), 60, "the edges to stop")
        await wait_for(lambda: fogs[0].metrics.gauges.get("edges_budget_spent") == 2, 30,
                       "the fog to count both edges as spent")
        await wait_for(lambda: cloud.version >= 2, 30, "two cloud rounds")
    for edge in edges:
        assert edge.budget_spent
        assert edge.updates_sent == 2  # the third epoch would exceed the target
        assert edge.metrics.gauges["privacy_budget_spent"] == 1
    sent = sorted((u.edge_id, u.base_version) for u in spy.updates)
    assert sent == [("n0", 0), ("n0", 1), ("n1", 0), ("n1", 1)]
    assert all(u.metrics["dp.epsilon"] <= (e2 + e3) / 2 for u in spy.updates)
    # the edges' own ledgers hold the steps taken (a restart resumes them)
    for e in ("n0", "n1"):
        assert _ledger_releases(tmp_path / f"ledger-{e}") == 2 * steps
    # the model metadata records the worst edge's epsilon for the region
    meta = ModelStore(tmp_path / "store").load(2).meta
    assert meta["privacy"]["regions"]["north"]["epsilon"] == pytest.approx(e2, rel=1e-6)
    assert meta["metrics"]["dp.epsilon"] == pytest.approx(e2, rel=1e-6)
