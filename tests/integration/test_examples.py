"""The shipped example configs run as shipped: cloud/cloud.toml, fog/fog.toml and
edge/edge.toml, each copied into its party's startup kit (as an operator deploys them), produce
global versions over real brokers.

What the test overrides, and why: the broker addresses (the examples name deployment hosts),
the Kafka security protocol (the Tansu broker the tests start is PLAINTEXT only; the examples
ask for SSL), MQTT plain instead of the examples' mqtts (their CA files live in a kit with TLS;
TLS against mosquitto is tested in test_tls_transport.py and test_sim_secure.py), the metrics
ports (fixed ports would collide with other test runs), and each edge's id and data shard (one
example edge.toml serves eight devices). Topics are created first: the examples say
`create_topics = false`, the operator's job.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hierfl import topics
from hierfl.cloud.service import CloudService
from hierfl.config import CloudSettings, EdgeSettings, FogSettings, KafkaSettings
from hierfl.edge import EdgeClient
from hierfl.edge.client import load_task
from hierfl.fog.service import FogService
from hierfl.model import ModelStore
from hierfl.model.flatten import unflatten
from hierfl.model.torch_adapter import model_layout, model_to_vector
from hierfl.provision import ProjectSpec, provision
from hierfl.transport.kafka import ensure_topics
from tests.integration.fed import running, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EDGES = tuple(f"sensor-{17 + i:04d}" for i in range(8))  # fog.toml: min_updates = 8


async def test_the_example_configs_run_as_shipped(mqtt_broker, kafka_broker, tmp_path):
    spec = ProjectSpec(federation="city-air", fogs={"district-3": EDGES})
    prov = provision(spec, tmp_path / "fed", tls=False)
    # each party's kit gets the example TOML (in place of the one provision wrote)
    cloud_toml = prov.cloud_kit / "cloud.toml"
    fog_toml = prov.fog_kit("district-3") / "fog.toml"
    shutil.copy(ROOT / "cloud" / "cloud.toml", cloud_toml)
    shutil.copy(ROOT / "fog" / "fog.toml", fog_toml)
    edge_tomls = []
    for e in EDGES:
        dst = prov.edge_kit("district-3", e) / "edge.toml"
        shutil.copy(ROOT / "edge" / "edge.toml", dst)
        edge_tomls.append(dst)
    # the examples' federation id ("city-air") is used by no other test on the shared brokers
    overrides: dict[str, Any] = {"metrics_port": None}
    kafka = {"bootstrap": kafka_broker.bootstrap, "security_protocol": "PLAINTEXT"}
    mqtt = {"url": mqtt_broker.url}
    await ensure_topics(KafkaSettings(bootstrap=kafka_broker.bootstrap),
                        [topics.aggregates("city-air"), topics.models("city-air")])
    cloud_s = CloudSettings.load(cloud_toml, kafka=kafka, max_versions=1, **overrides)
    fog_s = FogSettings.load(fog_toml, kafka=kafka, mqtt=mqtt, **overrides)
    edge_s = [EdgeSettings.load(p, mqtt=mqtt, edge_id=e, task_options={"index": i}, **overrides)
              for i, (p, e) in enumerate(zip(edge_tomls, EDGES, strict=True))]
    # relative paths come from each TOML's folder: the cloud's store and initial model, the
    # fog's spool, every kit's key and trust files
    assert cloud_s.store_dir == prov.cloud_kit / "store"
    assert fog_s.spool_dir == prov.fog_kit("district-3") / "spool"
    assert fog_s.security.key_file == prov.fog_kit("district-3") / "signing.key"
    # the initial model the README makes with `hierfl init-model`, for the edges' task
    task = load_task(edge_s[0].task, edge_s[0].task_options, edge_s[0])
    model = task.build_model()
    named = unflatten(model_to_vector(model), model_layout(model))
    assert cloud_s.initial_model is not None
    np.savez(cloud_s.initial_model, **named)  # type: ignore[arg-type]

    cloud = CloudService(cloud_s)
    fog = FogService(fog_s)
    edges = [EdgeClient(s, load_task(s.task, s.task_options, s)) for s in edge_s]
    async with running(cloud, fog, *edges) as tasks:
        await wait_for(cloud.finished.is_set, 180, "v1 from the example federation")
        for t in tasks[1:]:
            assert not t.done() or t.exception() is None
    meta = ModelStore(cloud_s.store_dir).load(1).meta
    assert meta["fogs"]["district-3"]["fog_rounds"] == fog_s.k2 == 2
    assert sorted(meta["fogs"]["district-3"]["contributors"]) == sorted(EDGES)
    assert meta["lineage"]["signed"] is True
    assert not fog.metrics.rejected and not cloud.metrics.rejected
