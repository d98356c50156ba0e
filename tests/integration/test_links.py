"""Per-link codecs and the downlink delta, over real brokers.

One federation where every link has its own codec (edge updates top-k, fog aggregates int8,
global models fp16 over Kafka, fog deltas fp16 over MQTT), with one edge that leaves and one
that joins late. Checked on the wire (what the spy and a Kafka reader see) and inside the
tiers (what the edges hold, what the fogs accepted).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
import zstandard

from hierfl import topics
from hierfl.cloud.service import CloudService
from hierfl.config import EdgeSettings, FogSettings, KafkaSettings, SecuritySettings
from hierfl.edge import EdgeClient
from hierfl.model import ModelStore
from hierfl.model.torch_adapter import model_to_vector
from hierfl.transport.kafka import KafkaConsumerTransport
from hierfl.transport.mqtt import MqttTransport
from hierfl.wire import ModelDeltaFrame, ModelFrame, UpdateFrame, decode_frame, weights_digest
from hierfl.wire.codec import _META_LEN, FLAG_META, split_signed
from hierfl.wire.downlink import Downlink
from tests.integration.fed import (
    Topology,
    make_fogs,
    provision_topo,
    running,
    security_for,
    settings_for,
    spy_updates,
    tiny_model,
    tiny_task,
    wait_for,
    write_initial,
)

pytestmark = pytest.mark.integration

VERSIONS = 4


def wide_model() -> torch.nn.Module:
    """3,075 parameters: big enough that frame overhead does not hide the codecs' savings."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.ReLU(), torch.nn.Linear(256, 3))


def body(frame: bytes) -> dict[str, Any]:
    """The msgpack body of a (zstd-compressed) frame, to read the codec names on the wire."""
    payload, _ = split_signed(frame)
    rest = bytes(payload[12:])
    if payload[5] & FLAG_META:  # format version 3: skip the meta section (u32 length + map)
        rest = rest[4 + _META_LEN.unpack_from(rest)[0]:]
    out = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(rest), raw=False)
    assert isinstance(out, dict)
    return out


@dataclass
class Wire:
    """Every MQTT message of one federation, as the broker delivered it to a bystander."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p in self.messages if t == topic]


@contextlib.asynccontextmanager
async def mqtt_wire(url: str, fed: str) -> AsyncIterator[Wire]:
    wire = Wire()
    s = FogSettings.load(fog_id="spy", federation=fed, mqtt={"url": url}).mqtt
    async with MqttTransport(s, client_id=f"wire-{fed}") as mqtt:
        await mqtt.subscribe(f"hierfl/{fed}/#")

        async def loop() -> None:
            async for m in mqtt.messages():
                wire.messages.append((m.topic, m.payload))

        task = asyncio.create_task(loop())
        try:
            yield wire
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def kafka_frames(bootstrap: str, topic: str, count: int) -> list[bytes]:
    """The first ``count`` frames of a Kafka topic (reassembled from their chunks)."""
    frames: list[bytes] = []
    settings = KafkaSettings(bootstrap=bootstrap)
    async with KafkaConsumerTransport(settings, topic, client_id="reader", start="earliest") as c:
        async with asyncio.timeout(30):
            async for inbound in c.messages():
                assert inbound.error is None
                assert inbound.payload is not None
                frames.append(inbound.payload)
                if len(frames) >= count:
                    break
    return frames


async def test_per_link_codecs_and_downlink_deltas(mqtt_broker, kafka_broker, unique_id,
                                                    tmp_path):
    fed = unique_id
    topo = Topology({"north": ["n0", "n1"], "south": ["s0", "s1"]})
    initial = tmp_path / "init.npz"
    write_initial(initial, wide_model)
    # n2 joins later: it is provisioned (has a key in the trust bundle) from the start
    pki = provision_topo(tmp_path / "pki", fed,
                         Topology({"north": ["n0", "n1", "n2"], "south": ["s0", "s1"]}))
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, fed, topo, tmp_path / "store", initial,
        versions=VERSIONS, pki=pki,
        fog_overrides={"cloud_codec": "int8", "model_codec": "fp16", "downlink_delta": True},
        cloud_overrides={"model_codec": "fp16"},
    )
    # n1 leaves after two updates; n2 joins north afterwards and starts from the full model
    edge_s = [s.model_copy(update={"codec": "topk:fraction=0.3"}) for s in edge_s]
    edge_s[1] = edge_s[1].model_copy(update={"max_rounds": 2})
    late_s = edge_s[1].model_copy(update={
        "edge_id": "n2", "max_rounds": None,
        "security": SecuritySettings(**security_for(pki, "edge/north/n2")),
    })
    cloud = CloudService(cloud_s)
    fogs = make_fogs(fog_s)
    edges = [EdgeClient(s, tiny_task(i, model=wide_model)) for i, s in enumerate(edge_s)]
    late = EdgeClient(late_s, tiny_task(7, model=wide_model))
    n0, n1 = edges[0], edges[1]
    async with (
        mqtt_wire(mqtt_broker.url, fed) as wire,
        running(cloud, *fogs, *edges) as tasks,
    ):
        await wait_for(lambda: tasks[1 + len(fogs) + 1].done(), 60, "n1 leaves")
        assert n1.updates_sent == 2
        north = fogs[0]
        # join once the round n0 waits on is open (a model of a closed round is stale)
        await wait_for(lambda: north._downlink.held is not None
                       and north._downlink.held.version >= 2, 60, "v2 at north")
        async with running(late):
            await wait_for(cloud.finished.is_set, 90, "all versions")
            # the last fog model reaches the edges that follow the deltas
            await wait_for(lambda: north._downlink.held is not None and all(
                e.model_feed.held is not None
                and north._downlink.held.version == VERSIONS
                and e.model_feed.held.seq == north._downlink.held.seq
                for e in (n0, late)), 30, "last model")
            # ... and the bystander saw every fog's last model on the stream
            await wait_for(lambda: all(
                len(wire.on(topics.model_delta(fed, f))) >= VERSIONS + 1 for f in topo.fogs
            ), 30, "every model on the wire")
            north_held = north._downlink.held
            for e in (n0, late):
                # fog and edges agree bit for bit on the model the next updates are against
                assert weights_digest(e.model_feed.held.weights) == weights_digest(
                    north_held.weights)
    store = ModelStore(tmp_path / "store")
    assert store.versions() == list(range(VERSIONS + 1))

    # --- inside the tiers -------------------------------------------------------------------
    for f in fogs:
        assert not f.metrics.rejected, f.metrics.rejected  # no stale, shape or base refusals
        assert f.metrics.counters["model_deltas_sent"] >= VERSIONS - 1
    for e in (n0, *edges[2:], late):
        assert not e.metrics.rejected, (e.settings.edge_id, e.metrics.rejected)
    c = n0.metrics.counters
    # n0 was there from the start: the first model in full, then deltas only
    assert c["models_from_full"] <= 2  # the first model on the full topic and the stream
    assert c["models_from_delta"] >= VERSIONS
    assert c["frames_down_model"] <= 2  # the retained model, and at most one in flight
    assert c["bytes_down_delta"] < c["frames_down_delta"] * 0.6 * (
        c["bytes_down_model"] / c["frames_down_model"])
    assert c["full_model_subscriptions"] == 1
    # the late edge got the full model first, then followed the deltas
    lc = late.metrics.counters
    assert lc["models_from_full"] >= 1
    assert lc["models_from_delta"] >= 1
    assert late.updates_sent >= 1

    # --- on the wire ------------------------------------------------------------------------
    updates = [decode_frame(p) for t, p in wire.messages if "/update/" in t]
    assert all(body(p)["delta"]["codec"] == "topk" for t, p in wire.messages if "/update/" in t)
    late_updates = [u for u in updates if isinstance(u, UpdateFrame) and u.edge_id == "n2"]
    assert late_updates
    first_late = min(late_updates, key=lambda u: u.base_seq)
    assert first_late.base_seq > 1  # it joined a running federation
    for fog in topo.fogs:
        fulls = wire.on(topics.model(fed, fog))
        stream = wire.on(topics.model_delta(fed, fog))
        assert fulls
        assert all(body(p)["weights"]["codec"] == "raw" for p in fulls)  # exact, for joiners
        kinds = Counter(body(p)["kind"] for p in stream)
        assert kinds["model"] == 1  # the first model had no base
        assert kinds["model_delta"] >= VERSIONS
        deltas = [decode_frame(p) for p in stream if body(p)["kind"] == "model_delta"]
        assert all(isinstance(d, ModelDeltaFrame) for d in deltas)
        assert all(body(p)["delta"]["codec"] == "fp16" for p in stream
                   if body(p)["kind"] == "model_delta")
        # consecutive: every delta is against the model published just before it
        seqs = [(d.base_seq, d.seq) for d in deltas if isinstance(d, ModelDeltaFrame)]
        assert all(a == prev_seq for (a, _), (_, prev_seq) in zip(seqs[1:], seqs, strict=False))
    aggs = await kafka_frames(kafka_broker.bootstrap, topics.aggregates(fed), 2 * VERSIONS)
    assert all(body(a)["kind"] == "aggregate" and body(a)["delta"]["codec"] == "int8"
               for a in aggs)
    models = await kafka_frames(kafka_broker.bootstrap, topics.models(fed), VERSIONS + 1)
    assert all(body(m)["weights"]["codec"] == "fp16" for m in models)
    got = [decode_frame(m) for m in models]
    assert [m.version for m in got if isinstance(m, ModelFrame)][:VERSIONS + 1] == list(
        range(VERSIONS + 1))
    # The cloud keeps its exact model: fp16 only rounds what the fogs receive.
    v0 = np.asarray(store.load(0).weights)
    assert isinstance(got[0], ModelFrame)
    assert not np.array_equal(got[0].weights, v0)
    np.testing.assert_allclose(got[0].weights, v0, rtol=2**-10, atol=2**-24)


async def test_edge_that_misses_a_model_resyncs_from_the_retained_one(mqtt_broker, unique_id):
    """A fog (driven by hand) loses one delta on the way: the edge notices the gap at the next
    delta, takes the retained full model, trains on it, and follows the deltas again."""
    fed = unique_id
    fog_s = FogSettings.load(fog_id="g", federation=fed, mqtt={"url": mqtt_broker.url})
    edge_s = EdgeSettings.load(federation=fed, fog_id="g", edge_id="e",
                               mqtt={"url": mqtt_broker.url},
                               security={"signing": "off"})  # the "fog" here signs nothing
    edge = EdgeClient(edge_s, tiny_task(0))
    dl = Downlink(codec="fp16", delta=True, max_params=10_000)
    weights = model_to_vector(tiny_model())
    async with (
        MqttTransport(fog_s.mqtt, client_id=f"fog-{fed}") as fog,
        spy_updates(mqtt_broker.url, fed, ["g"]) as spy,
        running(edge),
    ):
        await wait_for(edge.ready.is_set, 30, "edge connected")
        for seq in range(1, 6):
            out = dl.prepare(ModelFrame(federation=fed, version=0, weights=weights, parent=0,
                                        scope="fog", fog_id="g", seq=seq))
            await fog.publish(topics.model(fed, "g"), out.full, retain=True)
            if seq != 3:  # the delta of seq 3 is lost
                await fog.publish(topics.model_delta(fed, "g"), out.stream)
            dl.commit(out)
            await wait_for(lambda s=seq: any(u.base_seq == s for u in spy.updates) or s == 3,
                           30, f"update for seq {seq}")
            weights = (weights + 0.01).astype(np.float32)
    c = edge.metrics.counters
    assert edge.metrics.rejected == {"validation.model_base": 1}  # the delta of seq 4
    assert c["full_model_subscriptions"] == 2  # at the start, and after the gap
    assert c["models_from_delta"] == 2  # seq 2 and seq 5
    assert sorted(u.base_seq for u in spy.updates) == [1, 2, 4, 5]  # never trained on seq 3
    held = edge.model_feed.held
    assert held is not None
    assert weights_digest(held.weights) == weights_digest(dl.held.weights)
