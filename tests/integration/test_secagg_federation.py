"""A whole federation with a secure fog, over real brokers: torch edges train, their updates
leave only masked (SecAgg+ over signed MQTT messages), the fog closes each round with the
unmasked mean, the cloud builds the global models; the result equals a plain FedAvg run of the
same seed within fixed-point error, and no update crosses the broker in the clear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hierfl.cloud.service import CloudService
from hierfl.config import SecAggSettings
from hierfl.edge import EdgeClient
from hierfl.model import ModelStore
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

VERSIONS = 3
SECURE = {"mode": "secure", "clip_norm": 10.0, "max_weight": 100, "advertise_s": 10,
          "share_s": 10, "masked_s": 20, "unmask_s": 10}


async def _run(url: str, bootstrap: str, fed: str, folder: Path, secure: bool) -> Any:
    topo = Topology({"north": ["n0", "n1", "n2"]})
    initial = folder / "init.npz"
    folder.mkdir()
    write_initial(initial)
    fog_over: dict[str, Any] = {"round_timeout_s": 90}
    if secure:
        fog_over["secagg"] = SECURE
    cloud_s, fog_s, edge_s = settings_for(url, bootstrap, fed, topo, folder / "store", initial,
                                          versions=VERSIONS, fog_overrides=fog_over)
    if secure:
        edge_s = [e.model_copy(update={"secagg": SecAggSettings(**SECURE)}) for e in edge_s]
    cloud = CloudService(cloud_s)
    fogs = make_fogs(fog_s)
    # 10, 17 and 24 samples: the secure fog weighs them inside the masked sum, as FedAvg does
    edges = [EdgeClient(s, tiny_task(i)) for i, s in enumerate(edge_s)]
    async with spy_updates(url, fed, ["north"]) as spy:
        async with running(cloud, *fogs, *edges):
            await wait_for(cloud.finished.is_set, 120, f"{VERSIONS} cloud rounds")
    return ModelStore(folder / "store"), fogs, edges, spy


async def test_secure_fog_equals_plain_fedavg_within_fixed_point_error(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    plain_store, _, _, _ = await _run(mqtt_broker.url, kafka_broker.bootstrap,
                                      f"{unique_id}p", tmp_path / "plain", secure=False)
    store, (fog,), edges, spy = await _run(mqtt_broker.url, kafka_broker.bootstrap,
                                           f"{unique_id}s", tmp_path / "secure", secure=True)
    assert store.versions() == plain_store.versions() == list(range(VERSIONS + 1))
    assert spy.updates == []  # nothing in the clear on the update topics
    assert fog.secagg is not None and fog.secagg.driver is not None
    assert fog.secagg.driver.completed >= VERSIONS
    assert not fog.secagg.driver.rejected  # (a round of v3 may be refused: the edges stop)
    for e in edges:
        assert e.secagg is not None and len(e.secagg.driver.completed) >= VERSIONS
    w0 = store.load(0).weights
    for v in range(1, VERSIONS + 1):
        got, want = store.load(v).weights, plain_store.load(v).weights
        assert not np.allclose(got, w0)  # trained
        # (w x, w) bounded by 100 * hypot(10, 1): scale 2^19, so the mean is off by at most
        # 3 / (2 * 2^19 * 51) per coordinate and round
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        meta = store.load(v).meta
        assert meta["fogs"]["north"]["num_edges"] == 3
        # the region's weight at the cloud is its sample count, as in plain FedAvg
        assert meta["fogs"]["north"]["num_samples"] == 10 + 17 + 24
