"""FedAdam at the cloud over real brokers: each new version is the previous one plus FedAdam's
step on the FedAvg of what the edges sent (recomputed here in numpy from the spied updates),
and a cloud restart resumes the optimiser's moments from the checkpoint."""

from __future__ import annotations

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

LR, B1, B2, TAU = 0.05, 0.9, 0.99, 1e-3
OPT = {"name": "fedadam", "server_lr": LR, "beta1": B1, "beta2": B2, "tau": TAU,
       "bias_correction": False}


class Adam:
    """FedAdam as Reddi et al. 2021 write it, independent of hierfl.optim."""

    def __init__(self, size: int) -> None:
        self.m = np.zeros(size)
        self.v = np.zeros(size)

    def step(self, delta: np.ndarray) -> np.ndarray:
        self.m = B1 * self.m + (1 - B1) * delta
        self.v = B2 * self.v + (1 - B2) * delta * delta
        return LR * self.m / (np.sqrt(self.v) + TAU)



def fedavg_delta(updates: list) -> np.ndarray:
    n = np.array([u.num_samples for u in updates], dtype=np.float64)
    return (n[:, None] * np.stack([u.delta for u in updates]).astype(np.float64)).sum(0) / n.sum()


async def test_fedadam_steps_and_resumes_after_a_cloud_restart(
        mqtt_broker, kafka_broker, unique_id, tmp_path):
    topo = Topology({"north": ["n0", "n1"]})
    initial = tmp_path / "init.npz"
    write_initial(initial)
    store_dir = tmp_path / "store"

    def federation(versions: int):  # type: ignore[no-untyped-def]
        return settings_for(mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, store_dir,
                            initial, versions=versions, cloud_overrides={"server_opt": OPT},
                            pki=pki)

    from hierfl.provision import ProjectSpec, provision

    # keys provisioned once, used by both lives of the federation
    pki = provision(ProjectSpec(federation=unique_id, fogs={"north": ("n0", "n1")}),
                    tmp_path / "pki", tls=False)
    cloud_s, fog_s, edge_s = federation(2)
    async with spy_updates(mqtt_broker.url, unique_id, ["north"]) as spy:
        cloud = CloudService(cloud_s)
        # each edge stops after its updates for v0 and v1: nothing for v2 waits in a session
        edges = make_edges([e.model_copy(update={"max_rounds": 2}) for e in edge_s])
        async with running(cloud, *make_fogs(fog_s), *edges):
            await wait_for(cloud.finished.is_set, 90, "two versions with FedAdam")
        store = ModelStore(store_dir)
        assert store.versions() == [0, 1, 2]
        ref = Adam(store.load(0).weights.size)
        for v in (0, 1):
            ups = first_per_edge(spy.updates, v)
            assert [u.edge_id for u in ups] == ["n0", "n1"]
            w = store.load(v).weights.astype(np.float64)
            want = w + ref.step(fedavg_delta(ups))
            np.testing.assert_allclose(store.load(v + 1).weights, want, rtol=1e-5, atol=1e-6)
            # not FedAvg: the optimiser changed the step
            assert not np.allclose(store.load(v + 1).weights, w + fedavg_delta(ups), atol=1e-4)
        meta = store.load(2).meta["server_opt"]
        assert meta["name"] == "fedadam" and meta["step"] == 2
        assert (store_dir / meta["file"]).is_file()

        # second life: a new cloud process on the same store resumes the moments
        cloud_s, fog_s, edge_s = federation(3)
        cloud = CloudService(cloud_s)
        assert cloud.round.server_opt is not None and cloud.round.server_opt.t == 2
        np.testing.assert_allclose(cloud.round.server_opt.m, ref.m, rtol=1e-5, atol=1e-9)
        async with running(cloud, *make_fogs(fog_s), *make_edges(edge_s)):
            await wait_for(cloud.finished.is_set, 90, "v3 after the restart")
    ups = first_per_edge(spy.updates, 2)
    assert [u.edge_id for u in ups] == ["n0", "n1"]
    w2 = store.load(2).weights.astype(np.float64)
    d = fedavg_delta(ups)
    fresh = Adam(w2.size).step(d)
    want = w2 + ref.step(d)
    got = store.load(3).weights
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # an optimiser that had forgotten its state would have stepped elsewhere
    assert not np.allclose(got, w2 + fresh, atol=1e-5)
    assert store.load(3).meta["server_opt"]["step"] == 3
