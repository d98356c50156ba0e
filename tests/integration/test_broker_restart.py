"""An MQTT broker restart (in memory: retained models and queued messages lost) is recovered by
the protocol, not by the round deadline: the fog publishes its model again when its session
comes back, and an edge re-sends its last update while no newer model came."""

from __future__ import annotations

import asyncio
import time

import pytest

from hierfl import topics
from hierfl.cloud.service import CloudService
from hierfl.model import ModelStore
from hierfl.sim.brokers import MqttBroker, free_port
from hierfl.transport.mqtt import MqttTransport
from hierfl.wire import UpdateFrame, decode_frame
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

DEADLINE_S = 300.0  # round deadlines far beyond the test's waits: a timeout cannot be what helps


@pytest.mark.parametrize("when", ["between_rounds", "update_lost"])
async def test_a_broker_restart_costs_seconds_not_a_round_deadline(
    kafka_broker, unique_id, tmp_path, monkeypatch, when
):
    port = free_port()
    broker = MqttBroker(port=port, startup_timeout_s=60).start()
    try:
        topo = Topology({"north": ["n0", "n1"]})
        write_initial(tmp_path / "init.npz")
        cloud_s, fog_s, edge_s = settings_for(
            broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store",
            tmp_path / "init.npz", versions=4,
            fog_overrides={"round_timeout_s": DEADLINE_S,
                           "mqtt": {"url": broker.url, "reconnect_base_s": 0.1,
                                    "reconnect_max_s": 0.5}},
            cloud_overrides={"round_timeout_s": DEADLINE_S},
        )
        fast = {"reconnect_base_s": 0.1, "reconnect_max_s": 0.5}
        edge_s = [e.model_copy(update={"mqtt": e.mqtt.model_copy(update=fast)}) for e in edge_s]
        cloud = CloudService(cloud_s)
        (fog,) = make_fogs(fog_s)
        edges = make_edges(edge_s)
        lost: list[int] = []
        if when == "update_lost":
            # What an in-memory broker does to an update it acknowledged but had not delivered
            # when it went down: n0's first update for v1 never reaches the fog's client.
            real = MqttTransport.messages

            async def lossy(self):  # type: ignore[no-untyped-def]
                async for m in real(self):
                    if (self.client_id.startswith("hierfl-fog-") and not lost
                            and m.topic == topics.update(unique_id, "north", "n0")):
                        f = decode_frame(m.payload)
                        if isinstance(f, UpdateFrame) and f.base_version == 1:
                            lost.append(f.base_seq)
                            continue
                    yield m

            monkeypatch.setattr(MqttTransport, "messages", lossy)
        async with running(cloud, fog, *edges) as tasks:
            await wait_for(lambda: cloud.version >= 1, 60, "v1")
            if when == "update_lost":
                await wait_for(lambda: bool(lost), 30, "n0's v1 update to be lost")
            broker.stop()
            await asyncio.sleep(1.0)
            broker = MqttBroker(port=port, startup_timeout_s=60).start()
            restarted = time.monotonic()
            await wait_for(cloud.finished.is_set, 60, "v4 after the restart")
            waited = time.monotonic() - restarted
            for t in tasks[1:]:
                assert not t.done(), t
        assert waited < DEADLINE_S / 5
        store = ModelStore(tmp_path / "store")
        assert store.versions() == [0, 1, 2, 3, 4]
        # every version after the restart closed with both edges, none at a deadline
        for v in (2, 3, 4):
            meta = store.load(v).meta
            assert not meta["timed_out"]
            assert meta["fogs"]["north"]["contributors"] == ["n0", "n1"]
        assert fog.metrics.counters.get("reconnects", 0) >= 1
        if when == "update_lost":
            assert edges[0].metrics.counters.get("updates_resent", 0) >= 1
    finally:
        broker.stop()
