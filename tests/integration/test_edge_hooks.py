"""The embedded edge's hooks in a real federation (Tansu, mosquitto, cloud, fog, two edges):
``on_model(version, weights)`` sees every global version with the cloud's exact weights;
``evaluate(model)`` scores the received model, its results are the edge's gauges on
``metrics_port`` and end its INFO line."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from hierfl.cloud.service import CloudService
from hierfl.edge import EdgeClient
from hierfl.model import ModelStore
from hierfl.model.torch_adapter import vector_to_model
from hierfl.sim.brokers import free_port
from tests.integration.fed import (
    Topology,
    make_fogs,
    running,
    settings_for,
    tiny_model,
    tiny_task,
    wait_for,
    write_initial,
)

pytestmark = pytest.mark.integration

_rng = np.random.default_rng(7)
X_TEST = torch.from_numpy(_rng.normal(size=(64, 8)).astype(np.float32))
Y_TEST = (X_TEST[:, 0] > 0).long()


def evaluate(model: Any) -> dict[str, float]:
    with torch.no_grad():
        out = model(X_TEST)
        return {"accuracy": float((out.argmax(1) == Y_TEST).float().mean()),
                "loss": float(torch.nn.functional.cross_entropy(out, Y_TEST))}


async def _metrics(port: int) -> dict[tuple[str, str], float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200"
    return {(s.name, s.labels.get("metric") or s.labels.get("stage") or ""): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples
            if s.name.startswith("hierfl_")}


async def test_on_model_and_evaluate_in_a_real_federation(
    mqtt_broker, kafka_broker, unique_id, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="hierfl.edge.client")
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, Topology({"north": ["n0", "n1"]}),
        tmp_path / "store", tmp_path / "init.npz", versions=3,
    )
    port = free_port()
    edge_s[0] = edge_s[0].model_copy(update={"metrics_port": port})
    seen: list[tuple[int, np.ndarray]] = []

    async def on_model(version: int, weights: np.ndarray) -> None:  # a coroutine: awaited
        seen.append((version, np.array(weights)))

    edges = [EdgeClient(edge_s[0], tiny_task(0), on_model=on_model, evaluate=evaluate),
             EdgeClient(edge_s[1], tiny_task(1))]  # no hooks: as before
    cloud = CloudService(cloud_s)
    (fog,) = make_fogs(fog_s)
    async with running(cloud, fog, *edges):
        await wait_for(cloud.finished.is_set, 120, "v3")
        await wait_for(lambda: any(v == 3 for v, _ in seen), 30, "v3 at the edge")
        # the edge evaluates a model when it trains on it, after its on_model hook: scrape
        # once the last one (v3) is evaluated, so the scrape and the snapshot show the same
        await wait_for(lambda: edges[0].metrics.snapshot()["gauges"].get(
            "evaluated_version") == 3, 30, "v3 evaluated at the edge")
        scraped = await _metrics(port)
        evaluated = edges[0].metrics.snapshot()

    # on_model: every version, in order, with the weights the cloud saved for it
    store = ModelStore(tmp_path / "store")
    versions = [v for v, _ in seen]
    assert versions == sorted(versions) and set(versions) >= {0, 1, 2, 3}
    for v, weights in seen:
        np.testing.assert_allclose(weights, store.load(v).weights, rtol=0, atol=1e-6)

    # evaluate: the received (untrained) model of the version it names, scored exactly
    version = int(evaluated["gauges"]["evaluated_version"])
    assert 0 <= version <= 3
    model = tiny_model()
    vector_to_model(model, store.load(version).weights)
    expected = evaluate(model)
    assert evaluated["evaluation"] == pytest.approx(expected, abs=1e-6)
    # ... exposed on the edge's metrics port, with its other metrics
    assert scraped[("hierfl_evaluation", "accuracy")] == pytest.approx(expected["accuracy"])
    assert scraped[("hierfl_evaluation", "loss")] == pytest.approx(expected["loss"], abs=1e-6)
    assert scraped[("hierfl_evaluated_version", "")] == version
    assert scraped[("hierfl_stage_duration_seconds_count", "train")] >= 3
    assert edges[0].metrics.counters.get("hook_errors", 0) == 0
    # ... and in its INFO line, once per round
    lines = [r.getMessage() for r in caplog.records if "evaluated: accuracy" in r.getMessage()]
    assert len(lines) >= 3 and all("edge n0:" in line for line in lines)
    assert not any("evaluated" in r.getMessage() for r in caplog.records
                   if "edge n1:" in r.getMessage())
