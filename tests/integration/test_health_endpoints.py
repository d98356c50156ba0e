"""/healthz, /readyz and /metrics of a real federation (Tansu, mosquitto, cloud, fog, edge):
readiness follows the MQTT broker going away and coming back, the histograms fill after real
rounds, and a bad update moves the refused-by-reason counter."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hierfl import topics
from hierfl.cloud.service import CloudService
from hierfl.config import FogSettings
from hierfl.sim.brokers import MqttBroker, free_port
from hierfl.transport.mqtt import MqttTransport
from tests.integration.fed import (
    Topology,
    make_edges,
    make_fogs,
    running,
    settings_for,
    wait_for,
    write_initial,
)

pytestmark = pytest.mark.integration


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def _metrics(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, body = await _get(port, "/metrics")
    assert status == 200
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _one(samples: dict, name: str, **labels: str) -> float:
    hits = [v for ls, v in samples.get(name, []) if all(ls.get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


async def _poll(port: int, path: str, status: int, what: str, **want: object) -> dict:
    """Poll until ``path`` answers ``status`` (and, for /readyz, its body has ``want``)."""
    box: dict = {}

    async def check() -> bool:
        try:
            code, body = await _get(port, path)
        except ConnectionRefusedError:  # the service has not started listening yet
            return False
        box["body"] = body
        doc = json.loads(body) if path == "/readyz" else {}
        return code == status and all(doc.get(k) == v for k, v in want.items())

    async with asyncio.timeout(60):
        while not await check():
            await asyncio.sleep(0.1)
    assert box, what
    return json.loads(box["body"]) if path == "/readyz" else {}


async def test_readyz_follows_the_broker_and_metrics_fill_after_real_rounds(
    kafka_broker, unique_id, tmp_path
):
    mqtt_port = free_port()
    broker = MqttBroker(port=mqtt_port, startup_timeout_s=60).start()
    try:
        fog_port, cloud_port, edge_port = free_port(), free_port(), free_port()
        fast = {"url": broker.url, "reconnect_base_s": 0.1, "reconnect_max_s": 0.5}
        write_initial(tmp_path / "init.npz")
        cloud_s, fog_s, edge_s = settings_for(
            broker.url, kafka_broker.bootstrap, unique_id, Topology({"north": ["n0"]}),
            tmp_path / "store", tmp_path / "init.npz", versions=10_000,
            fog_overrides={"metrics_port": fog_port, "mqtt": fast},
            cloud_overrides={"metrics_port": cloud_port},
        )
        edge_s = [e.model_copy(update={"mqtt": e.mqtt.model_copy(update=fast),
                                       "metrics_port": edge_port}) for e in edge_s]
        cloud = CloudService(cloud_s)
        (fog,) = make_fogs(fog_s)
        edges = make_edges(edge_s)
        async with running(cloud, fog, *edges):
            # v3: the round machine names v2 before v2's checkpoint is written; fogs train
            # on v2 (and so make v3) only once it was checkpointed and published
            await wait_for(lambda: cloud.version >= 3, 90, "v3")
            for port in (fog_port, cloud_port, edge_port):
                assert await _get(port, "/healthz") == (200, b"ok\n")
                await _poll(port, "/readyz", 200, "ready")

            # histograms after real rounds, at every tier
            f = await _metrics(fog_port)
            assert _one(f, "hierfl_updates_accepted_total", tier="fog", id="north") >= 2
            assert _one(f, "hierfl_stage_duration_seconds_count", stage="decode") >= 2
            assert _one(f, "hierfl_stage_duration_seconds_count", stage="aggregate") >= 2
            assert _one(f, "hierfl_round_duration_seconds_count") >= 1
            assert _one(f, "hierfl_broker_connected", broker="mqtt") == 1
            assert _one(f, "hierfl_broker_connected", broker="kafka") == 1
            assert _one(f, "hierfl_edges_seen") == 1
            assert _one(f, "hierfl_spool_depth") in (0, 1)  # the open round's update, if any
            assert _one(f, "hierfl_received_bytes_total", stream="updates") > 0
            assert _one(f, "hierfl_sent_bytes_total", stream="aggregates") > 0
            c = await _metrics(cloud_port)
            assert _one(c, "hierfl_model_version", tier="cloud") >= 2
            assert _one(c, "hierfl_stage_duration_seconds_count", stage="combine") >= 2
            assert _one(c, "hierfl_stage_duration_seconds_count", stage="checkpoint") >= 2
            assert _one(c, "hierfl_round_duration_seconds_count") >= 1
            e = await _metrics(edge_port)
            assert _one(e, "hierfl_stage_duration_seconds_count", stage="train") >= 2
            assert _one(e, "hierfl_stage_duration_seconds_count", stage="publish") >= 2
            assert _one(e, "hierfl_round_duration_seconds_count") >= 2
            assert _one(e, "hierfl_updates_sent_total", tier="edge", id="n0") >= 2

            # a bad update: refused, counted under its reason
            before = sum(fog.metrics.rejected.values())
            junk = FogSettings.load(fog_id="spy", federation=unique_id,
                                    mqtt={"url": broker.url}).mqtt
            async with MqttTransport(junk, client_id=f"junk-{unique_id}") as mqtt:
                for _ in range(10):  # again every 2 s until it is seen (a loaded machine)
                    await mqtt.publish(topics.update(unique_id, "north", "n0"),
                                       b"\x00not a frame")
                    with contextlib.suppress(AssertionError):
                        await wait_for(lambda: sum(fog.metrics.rejected.values()) > before, 2)
                        break
            refused = (await _metrics(fog_port))["hierfl_updates_refused_total"]
            bad = {ls["reason"]: v for ls, v in refused}
            assert bad["wire.version"] >= 1  # "bad magic: not a hierfl frame"
            assert bad == dict(fog.metrics.rejected)

            # the MQTT broker goes away: not ready (why: not connected), still alive
            broker.stop()
            for port in (fog_port, edge_port):
                body = await _poll(port, "/readyz", 503, "not ready without the broker",
                                   connected=False)
                assert body["connected"] is False and body["ready"] is False
                assert body["reasons"][0].startswith("not connected to mqtt")
                assert (await _get(port, "/healthz"))[0] == 200
            assert _one(await _metrics(fog_port), "hierfl_broker_connected", broker="mqtt") == 0
            version = cloud.version

            # ... and comes back: ready again, the federation goes on
            broker = MqttBroker(port=mqtt_port, startup_timeout_s=60).start()
            for port in (fog_port, edge_port):
                await _poll(port, "/readyz", 200, "ready after the broker is back")
            await wait_for(lambda: cloud.version >= version + 1, 90, "a version after")
            f = await _metrics(fog_port)
            assert _one(f, "hierfl_broker_connected", broker="mqtt") == 1
            assert _one(f, "hierfl_reconnects_total") >= 1
        # the services stopped: their endpoints with them
        with pytest.raises(ConnectionRefusedError):
            await _get(fog_port, "/healthz")
    finally:
        broker.stop()


async def test_a_fog_without_progress_is_not_ready_until_its_model_arrives(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    port = free_port()
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, _ = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, Topology({"north": ["n0"]}),
        tmp_path / "store", tmp_path / "init.npz", versions=1,
        fog_overrides={"metrics_port": port, "monitoring": {"stall_after_s": 1.0}},
    )
    (fog,) = make_fogs(fog_s)
    async with running(fog):  # no cloud: no model, no progress
        body = await _poll(port, "/readyz", 503, "stalled", connected=True)
        assert body["connected"] is True and body["stalled"] is True
        assert body["stall_after_s"] == 1.0
        assert body["reasons"][0].startswith("stalled: no progress")
        cloud = CloudService(cloud_s)
        async with running(cloud):
            await wait_for(lambda: fog.metrics.counters.get("models_received", 0) >= 1, 60,
                           "the fog's model")
            # the model is progress: the clock /readyz measures from was reset
            assert fog.metrics.last_progress > fog.metrics.started
            age = _one(await _metrics(port), "hierfl_progress_age_seconds")
            assert age < fog.metrics.clock() - fog.metrics.started
