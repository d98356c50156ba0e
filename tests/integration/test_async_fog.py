"""Buffered (FedBuff) fogs over real brokers: a fog aggregates each K updates as they arrive,
so the federation moves on without its slow edge, whose too-stale update is refused and
counted; a late update within the bound is used and its provenance accepted by the cloud."""

from __future__ import annotations

import pytest

from hierfl.cloud.service import CloudService
from hierfl.edge import EdgeClient
from hierfl.model import ModelStore
from hierfl.sim.stragglers import SlowTask
from tests.integration.fed import (
    Topology,
    make_fogs,
    running,
    settings_for,
    tiny_task,
    wait_for,
    write_initial,
)

pytestmark = pytest.mark.integration


async def test_buffered_fog_does_not_wait_for_a_slow_edge(mqtt_broker, kafka_broker, unique_id,
                                                          tmp_path):
    topo = Topology({"f": ["a", "b", "c", "slow"]})
    initial = tmp_path / "init.npz"
    write_initial(initial)
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store", initial,
        versions=500,
        fog_overrides={"aggregation": "buffered", "buffer_size": 3, "max_staleness": 2,
                       "round_timeout_s": 60},
        cloud_overrides={"max_staleness": 2},
    )
    cloud = CloudService(cloud_s)
    fogs = make_fogs(fog_s)
    fog = fogs[0]
    # three edges pass in ~0.15 s; the slow one needs 30x as long: by the time its update
    # arrives the fog has published many more models than max_staleness allows
    edges = [EdgeClient(s, SlowTask(tiny_task(i), slowdown=30.0 if s.edge_id == "slow" else 1.0,
                                    base_s=0.15))
             for i, s in enumerate(edge_s)]
    async with running(cloud, *fogs, *edges):
        await wait_for(lambda: fog.metrics.rejected["validation.stale"] >= 1, 60,
                       "the slow edge's too-stale update refused")
        published = fog.metrics.counters["fog_rounds"]
    # by the time the slow edge's first update came the fog had aggregated and moved on
    assert published >= 4, published
    store = ModelStore(tmp_path / "store")
    assert len(store.versions()) >= 5
    # every global version was built from the fast edges alone until then: no waiting
    meta = store.load(3).meta
    assert "slow" not in meta["fogs"]["f"]["contributors"]
    assert fog.metrics.counters["fog_rounds"] >= 4


async def test_late_update_within_the_bound_is_used_weighted(mqtt_broker, kafka_broker,
                                                             unique_id, tmp_path):
    topo = Topology({"f": ["a", "b", "late"]})
    initial = tmp_path / "init.npz"
    write_initial(initial)
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store", initial,
        versions=500,
        fog_overrides={"aggregation": "buffered", "buffer_size": 2, "max_staleness": 50,
                       "round_timeout_s": 60},
        cloud_overrides={"max_staleness": 50},
    )
    cloud = CloudService(cloud_s)
    fogs = make_fogs(fog_s)
    edges = [EdgeClient(s, SlowTask(tiny_task(i), slowdown=6.0 if s.edge_id == "late" else 1.0,
                                    base_s=0.2))
             for i, s in enumerate(edge_s)]
    async with running(cloud, *fogs, *edges):
        def late_in_a_version() -> bool:
            versions = ModelStore(tmp_path / "store").versions()
            return any("late" in ModelStore(tmp_path / "store").load(v).meta.get("fogs", {})
                       .get("f", {}).get("contributors", []) for v in versions[-3:] if v > 0)
        await wait_for(late_in_a_version, 60, "a version with the late edge's update")
    assert not cloud.metrics.rejected  # its provenance (an older version) was accepted
    assert fogs[0].metrics.counters["accepted"] >= 4
