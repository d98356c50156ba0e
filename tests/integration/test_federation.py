"""End to end over real brokers: edges -> fogs -> cloud -> back, checked against numpy."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from hierfl.cloud.service import CloudService
from hierfl.model import ModelStore
from tests.integration.fed import (
    make_edges,
    make_fogs,
    running,
    settings_for,
    six_edges,
    spy_updates,
    wait_for,
    write_initial,
)

pytestmark = pytest.mark.integration


def expected_next(w: np.ndarray, updates: list, k2: int) -> np.ndarray:
    """Hierarchical weighted average of what the edges sent, computed directly in float64."""
    by_fog: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for u in updates:
        by_fog[u.fog_id][u.base_seq].append(u)
    fog_deltas, fog_samples = [], []
    for fog, rounds in by_fog.items():
        assert len(rounds) == k2, f"fog {fog} ran {len(rounds)} fog rounds, expected {k2}"
        cum = np.zeros_like(w, dtype=np.float64)
        samples: dict[str, int] = {}
        for seq in sorted(rounds):
            us = rounds[seq]
            n = np.array([u.num_samples for u in us], dtype=np.float64)
            stack = np.stack([u.delta for u in us]).astype(np.float64)
            cum += (n[:, None] * stack).sum(0) / n.sum()
            for u in us:
                samples[u.edge_id] = max(samples.get(u.edge_id, 0), u.num_samples)
        fog_deltas.append(cum)
        fog_samples.append(sum(samples.values()))
    ns = np.array(fog_samples, dtype=np.float64)
    return w + (ns[:, None] * np.stack(fog_deltas)).sum(0) / ns.sum()


def flat_fedavg(w: np.ndarray, updates: list) -> np.ndarray:
    n = np.array([u.num_samples for u in updates], dtype=np.float64)
    return w + (n[:, None] * np.stack([u.delta for u in updates])).sum(0) / n.sum()


@pytest.mark.parametrize("k2", [1, 2])
async def test_two_fogs_six_edges_three_rounds(mqtt_broker, kafka_broker, unique_id, tmp_path, k2):
    topo = six_edges()
    initial = tmp_path / "init.npz"
    write_initial(initial)
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store", initial,
        versions=3, k2=k2,
    )
    cloud = CloudService(cloud_s)
    fogs = make_fogs(fog_s)
    edges = make_edges(edge_s)
    async with spy_updates(mqtt_broker.url, unique_id, list(topo.fogs)) as spy:
        async with running(cloud, *fogs, *edges):
            await wait_for(cloud.finished.is_set, 90, "three cloud rounds")
    store = ModelStore(tmp_path / "store")
    assert store.versions() == [0, 1, 2, 3]
    for v in range(3):
        w = store.load(v).weights.astype(np.float64)
        ups = [u for u in spy.updates if u.base_version == v]
        assert len(ups) == 6 * k2, f"v{v}: {len(ups)} updates"
        got = store.load(v + 1).weights
        np.testing.assert_allclose(got, expected_next(w, ups, k2), rtol=1e-5, atol=1e-6)
        if k2 == 1:
            # HierFAVG with k2 = 1 is flat FedAvg over every edge's update.
            np.testing.assert_allclose(got, flat_fedavg(w, ups), rtol=1e-5, atol=1e-6)
        meta = store.load(v + 1).meta
        assert meta["parent"] == v
        assert sorted(meta["fogs"]) == ["north", "south"]
        assert all(f["num_edges"] == 3 and f["fog_rounds"] == k2 for f in meta["fogs"].values())
        # lineage: every aggregate signed by its fog, carrying each edge update's signed claims
        lineage = meta["lineage"]
        assert lineage["signed"] is True
        for agg in lineage["aggregates"]:
            assert agg["sig"]["signer"] == f"fog/{agg['fog']}"
            assert agg["sig"]["base"] == v
            edges = sorted({e["edge"] for e in agg["edges"]})
            assert edges == sorted(meta["fogs"][agg["fog"]]["contributors"])
            assert len(agg["edges"]) == 3 * k2  # one signed update per edge per fog round
        # the model changed: training happened
        assert not np.allclose(got, w)
    for f in fogs:
        assert f.metrics.counters["fog_rounds"] >= 3 * k2
        assert not f.metrics.rejected
