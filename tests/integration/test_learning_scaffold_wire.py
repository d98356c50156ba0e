"""SCAFFOLD over real brokers: every edge update carries its control change (option II of
the paper, checked against the spied delta), the cloud's c is their mean, it is checkpointed
and it rides with the next global model to the edges; without SCAFFOLD no frame carries a
control vector."""

from __future__ import annotations

import io

import numpy as np
import pytest

from hierfl.cloud.service import CloudService
from hierfl.model import ModelStore
from tests.integration.fed import (
    Topology,
    first_per_edge,
    make_edges,
    make_fogs,
    running,
    settings_for,
    spy_updates,
    wait_for,
    write_initial,
)

pytestmark = pytest.mark.integration



async def test_scaffold_control_variates_travel_and_combine(
        mqtt_broker, kafka_broker, unique_id, tmp_path):
    topo = Topology({"north": ["n0", "n1"]})
    initial = tmp_path / "init.npz"
    write_initial(initial)
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store", initial,
        versions=2, cloud_overrides={"scaffold": True})
    cloud = CloudService(cloud_s)
    edges = make_edges(edge_s)
    async with spy_updates(mqtt_broker.url, unique_id, ["north"]) as spy:
        async with running(cloud, *make_fogs(fog_s), *edges):
            await wait_for(cloud.finished.is_set, 90, "two versions with SCAFFOLD")
    first = first_per_edge(spy.updates, 0)
    assert [u.edge_id for u in first] == ["n0", "n1"]
    for u in first:
        assert u.control is not None and u.control.size == u.delta.size
        # c = 0 and c_i = 0 at v0: Delta c_i = (x - y) / (K lr) = -delta / (K lr); the tiny
        # task: lr 0.1, batch 8, 10 + 7i samples, one local epoch
        i = int(u.edge_id[1:])
        steps = -(-(10 + 7 * i) // 8)
        np.testing.assert_allclose(u.control, -u.delta / (steps * 0.1), rtol=1e-4, atol=1e-6)
    store = ModelStore(tmp_path / "store")
    entry = store.load(1).meta["scaffold"]
    with np.load(io.BytesIO((tmp_path / "store" / entry["file"]).read_bytes()),
                 allow_pickle=False) as z:
        c1 = z["c"]
    # one fog: c = the plain mean of its edges' control changes
    np.testing.assert_allclose(c1, np.mean([u.control for u in first], axis=0), rtol=1e-5,
                               atol=1e-7)
    # the edges trained on v1 with that c and kept their own c_i: their second control
    # change is c_i+ - c_i = -c + (x - y) / (K lr)
    second = {u.edge_id: u for u in first_per_edge(spy.updates, 1)}
    assert sorted(second) == ["n0", "n1"]
    for e in edges:
        assert e.scaffold.c_i is not None
        u = second[e.settings.edge_id]
        i = int(u.edge_id[1:])
        steps = -(-(10 + 7 * i) // 8)
        np.testing.assert_allclose(u.control, -c1 - u.delta / (steps * 0.1), rtol=1e-3,
                                   atol=1e-5)
    assert "scaffold" in store.load(2).meta


async def test_without_scaffold_no_frame_carries_a_control(
        mqtt_broker, kafka_broker, unique_id, tmp_path):
    topo = Topology({"north": ["n0", "n1"]})
    initial = tmp_path / "init.npz"
    write_initial(initial)
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store", initial,
        versions=1)
    cloud = CloudService(cloud_s)
    async with spy_updates(mqtt_broker.url, unique_id, ["north"]) as spy:
        async with running(cloud, *make_fogs(fog_s), *make_edges(edge_s)):
            await wait_for(cloud.finished.is_set, 60, "one version")
    assert spy.updates and all(u.control is None for u in spy.updates)
    assert "scaffold" not in ModelStore(tmp_path / "store").load(1).meta
