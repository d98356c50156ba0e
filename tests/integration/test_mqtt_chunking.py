"""Frames over an MQTT broker's packet limit cross as chunks (AWS IoT Core: 128 KB).

Every test here runs against mosquitto configured with ``max_packet_size 131072``, which, like
AWS IoT Core, disconnects a client that sends a bigger packet.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator

import aiomqtt
import numpy as np
import pytest
import torch

from hierfl import topics
from hierfl.cloud.service import CloudService
from hierfl.config import EdgeSettings, MqttSettings
from hierfl.edge import EdgeClient, SupervisedTask
from hierfl.errors import ConfigError, DisconnectedError
from hierfl.model import ModelStore
from hierfl.sim.brokers import MqttBroker
from hierfl.transport.base import Inbound
from hierfl.transport.mqtt import MqttTransport, chunk_topic, publish_packet_size
from hierfl.wire import ModelFrame, UpdateFrame, decode_frame, encode_frame, split_frame
from hierfl.wire.chunking import CHUNK_HEADER_SIZE
from tests.integration.fed import (
    Topology,
    make_fogs,
    provision_topo,
    running,
    security_for,
    settings_for,
    spy_updates,
    wait_for,
    write_initial,
)
from tests.integration.test_federation import expected_next

pytestmark = pytest.mark.integration

AWS_LIMIT = 131_072  # AWS IoT Core's largest MQTT message, 128 KB


@pytest.fixture(scope="module")
def small_broker() -> Iterator[MqttBroker]:
    """mosquitto that disconnects a client sending a packet over 128 KB."""
    try:
        broker = MqttBroker(prefer="mosquitto", max_packet_bytes=AWS_LIMIT, startup_timeout_s=60)
    except ConfigError:
        pytest.skip("mosquitto is not installed (amqtt has no packet limit)")
    with broker:
        yield broker


def _settings(broker: MqttBroker, *, chunked: bool = True) -> MqttSettings:
    return MqttSettings(url=broker.url, max_packet_bytes=AWS_LIMIT if chunked else None)


async def _drain(messages: AsyncIterator[Inbound] | AsyncIterator[aiomqtt.Message],
                 publisher: MqttTransport, marker: str) -> list[Inbound | aiomqtt.Message]:
    """Everything that arrives before ``marker`` (the caller subscribed to it): publish the
    marker now, so the list holds what the broker had for the subscriber, retained included."""
    await publisher.publish(marker, b"end")
    out: list[Inbound | aiomqtt.Message] = []
    async with asyncio.timeout(30):
        async for m in messages:
            if str(m.topic) == marker:
                return out
            out.append(m)
    raise AssertionError("the message stream ended")


def _update(fed: str, n: int) -> UpdateFrame:
    delta = np.random.default_rng(n).standard_normal(n, dtype=np.float32)
    return UpdateFrame(fed, "fog", "edge", 0, 0, 10, delta, created_at=1.0)


def _model(fed: str, version: int, n: int) -> bytes:
    weights = np.random.default_rng(version).standard_normal(n, dtype=np.float32)
    return encode_frame(ModelFrame(fed, version, weights, scope="fog", fog_id="fog"))


async def test_broker_disconnects_an_oversized_packet_and_publish_says_why(
    small_broker, unique_id
):
    topic = f"hierfl/{unique_id}/fog/update/edge"
    async with MqttTransport(_settings(small_broker, chunked=False), client_id=unique_id) as mqtt:
        # the largest packet the limit allows is accepted
        largest = 2 * AWS_LIMIT - publish_packet_size(topic, AWS_LIMIT)
        assert publish_packet_size(topic, largest) == AWS_LIMIT
        await mqtt.publish(topic, b"x" * largest)
        # a larger one makes the broker drop the connection: publish fails at once, typed,
        # instead of waiting for a PUBACK that never comes (timeout=inf)
        with pytest.raises(DisconnectedError, match="max_packet_bytes") as info:
            async with asyncio.timeout(60):
                await mqtt.publish(topic, b"x" * (AWS_LIMIT + 1), timeout=math.inf)
    assert "AWS IoT Core" in str(info.value)
    assert info.value.retriable


async def test_update_over_the_limit_crosses_as_chunks(small_broker, unique_id):
    fed = unique_id
    topic = f"hierfl/{fed}/fog/update/edge"
    marker = f"hierfl/{fed}/marker"
    frame = _update(fed, 300_000)
    data = encode_frame(frame)
    room = 2 * AWS_LIMIT - publish_packet_size(topic, AWS_LIMIT) - CHUNK_HEADER_SIZE
    assert len(data) > 8 * AWS_LIMIT
    async with (
        MqttTransport(_settings(small_broker), client_id=f"{fed}-sub") as sub,
        MqttTransport(_settings(small_broker), client_id=f"{fed}-pub") as pub,
        aiomqtt.Client(small_broker.host, small_broker.port, identifier=f"{fed}-raw") as raw,
    ):
        await sub.subscribe(f"hierfl/{fed}/fog/update/+")
        await raw.subscribe(topic, qos=1)
        await raw.subscribe(marker, qos=1)
        # Execute
        await pub.publish(topic, data)
        got = await anext(sub.messages())
        packets = await _drain(raw.messages, pub, marker)
    # Assert: one reassembled payload on the original topic, identical to what was sent
    assert (got.topic, got.retain) == (topic, False)
    assert got.payload == data
    np.testing.assert_array_equal(decode_frame(got.payload).delta, frame.delta)
    # ... carried by packets that each fit the broker's limit, filled up to it
    sizes = sorted(publish_packet_size(topic, len(bytes(p.payload))) for p in packets)
    assert len(sizes) == pub.chunk_stats["chunks_sent"] == -(-len(data) // room) == 9
    assert sizes[-1] <= AWS_LIMIT
    assert sizes[-2] > AWS_LIMIT - 32
    assert sum(len(bytes(p.payload)) - CHUNK_HEADER_SIZE for p in packets) == len(data)
    assert sub.chunk_stats["frames_reassembled"] == 1
    assert sub.chunk_stats["buffered_bytes"] == 0


async def test_retained_model_over_the_limit_reaches_late_subscribers(small_broker, unique_id):
    fed = unique_id
    topic = f"hierfl/{fed}/fog/model"
    marker = f"hierfl/{fed}/marker"
    big, smaller, small = _model(fed, 1, 300_000), _model(fed, 2, 100_000), _model(fed, 3, 100)
    async with MqttTransport(_settings(small_broker), client_id=f"{fed}-a") as a:
        await a.publish(topic, big, retain=True)  # 10 chunks
    # A new publisher (a restarted fog) does not know which sub-topics the last one filled:
    # chunks 4..9 of the big model stay retained behind the smaller one.
    async with MqttTransport(_settings(small_broker), client_id=f"{fed}-b") as b:
        await b.publish(topic, smaller, retain=True)  # 4 chunks
        async with MqttTransport(_settings(small_broker), client_id=f"{fed}-late") as late:
            await late.subscribe(topic)  # the base topic only: the chunk sub-topics come along
            await late.subscribe(marker)
            got = await _drain(late.messages(), b, marker)
            # Assert: the newest model, whole and marked retained; the leftovers never
            # complete (their chunk 0 was overwritten): one partial frame, held until it expires
            assert [(m.topic, m.payload, m.retain) for m in got] == [(topic, smaller, True)]
            stats = late.chunk_stats
            assert stats["partial_frames"] == 1
            assert stats["chunks_refused"] == 0
            # Live subscribers get later models too (not retained)
            await b.publish(topic, big, retain=True)
            got = await _drain(late.messages(), b, marker)
            assert [(m.topic, m.payload, m.retain) for m in got] == [(topic, big, False)]
        stored = await _retained_under(small_broker, topic, b, marker)
        assert sorted(stored) == [topic] + [chunk_topic(topic, i) for i in range(1, len(stored))]
        # A small model replaces it whole; the publisher deletes the chunks it left
        await b.publish(topic, small, retain=True)
        assert await _retained_under(small_broker, topic, b, marker) == {topic: small}
    assert b.chunk_stats["stale_chunks_cleared"] == len(stored) - 1 >= 8


async def _retained_under(
    broker: MqttBroker, topic: str, publisher: MqttTransport, marker: str
) -> dict[str, bytes]:
    """The retained messages the broker holds on ``topic`` and below, raw (no reassembly)."""
    async with aiomqtt.Client(broker.host, broker.port) as raw:
        await raw.subscribe(f"{topic}/#", qos=1)  # matches the topic itself too
        await raw.subscribe(marker, qos=1)
        return {str(m.topic): bytes(m.payload)
                for m in await _drain(raw.messages, publisher, marker)}


async def test_hostile_chunks_on_the_broker_are_refused_and_counted(small_broker, unique_id):
    fed = unique_id
    rejected: list[tuple[str, str]] = []
    base = f"hierfl/{fed}/fog/update"
    good = split_frame(bytes(range(256)) * 70, chunk_bytes=10_000)  # 2 chunks
    bad_crc = bytearray(good[1])
    bad_crc[-1] ^= 1
    async with (
        MqttTransport(_settings(small_broker), client_id=f"{fed}-sub", max_frame_bytes=20_000,
                      on_reject=lambda e, t: rejected.append((e.reason, t))) as sub,
        MqttTransport(_settings(small_broker), client_id=f"{fed}-evil") as evil,
    ):
        await sub.subscribe(f"{base}/+")
        await sub.subscribe(f"hierfl/{fed}/marker")
        await evil.publish(f"{base}/e1", bytes(bad_crc))
        big = split_frame(b"x" * 30_000, chunk_bytes=10_000)[0]  # over max_frame_bytes
        await evil.publish(f"{base}/e2", big)
        await evil.publish(f"{base}/e3", good[0])  # chunk 0 of a frame never finished
        await evil.publish(chunk_topic(f"{base}/e4", 2), good[1])  # wrong sub-topic
        other = split_frame(b"y" * 20_000, chunk_bytes=10_000)  # a frame beside the partial
        for rec in reversed(other):
            await evil.publish(f"{base}/e3", rec)
        got = await _drain(sub.messages(), evil, f"hierfl/{fed}/marker")
    assert [(m.topic, m.payload) for m in got] == [(f"{base}/e3", b"y" * 20_000)]
    assert sorted(rejected) == [
        ("wire.chunk", f"{base}/e1"),
        ("wire.chunk", f"{base}/e4"),
        ("wire.too_large", f"{base}/e2"),
    ]
    stats = sub.chunk_stats
    held = len(good[0]) - CHUNK_HEADER_SIZE  # e3's unfinished frame, until it expires
    assert (stats["partial_frames"], stats["buffered_bytes"]) == (1, held)
    assert stats["chunks_refused"] == 3


# --- the tiers over a 128 KB broker ------------------------------------------------------------


def wide_model() -> torch.nn.Module:
    """316,716 parameters: a 1.27 MB raw frame, ten 128 KB packets."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 1024), torch.nn.ReLU(),
                               torch.nn.Linear(1024, 300))


def wide_task(index: int) -> SupervisedTask:
    rng = np.random.default_rng(index)
    x = rng.normal(size=(12 + index, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)
    return SupervisedTask(wide_model, torch.from_numpy(x), torch.from_numpy(y), lr=0.1,
                          batch_size=8, seed=index)


@pytest.mark.slow
async def test_federation_over_a_128kb_broker(small_broker, kafka_broker, unique_id, tmp_path):
    fed = unique_id
    mqtt = {"url": small_broker.url, "max_packet_bytes": AWS_LIMIT}
    write_initial(tmp_path / "init.npz", wide_model)
    topo = Topology({"north": ["n0", "n1"]})
    pki = provision_topo(tmp_path / "pki", fed, Topology({"north": ["n0", "n1", "n2"]}))
    cloud_s, (fog_s,), _ = settings_for(
        small_broker.url, kafka_broker.bootstrap, fed, topo,
        tmp_path / "store", tmp_path / "init.npz", versions=1, fog_overrides={"mqtt": mqtt},
        pki=pki,
    )
    cloud = CloudService(cloud_s)
    (fog,) = make_fogs([fog_s])

    def edge(name: str, index: int, rounds: int | None = 1) -> EdgeClient:
        s = EdgeSettings.load(federation=fed, fog_id="north", edge_id=name, mqtt=mqtt,
                              max_rounds=rounds, security=security_for(pki, f"edge/north/{name}"))
        return EdgeClient(s, wide_task(index))

    async with (
        spy_updates(small_broker.url, fed, ["north"]) as spy,
        running(cloud, fog, edge("n0", 0), edge("n1", 1)),
    ):
        await wait_for(cloud.finished.is_set, 120, "one cloud round")
        # both fog models (v0, v1: over 8 x 128 KB each) published: v1 is all retained
        await wait_for(lambda: fog.round.version == 1
                       and fog.metrics.counters["bytes_down_edges"] > 16 * AWS_LIMIT, 30)
        # An edge that subscribes later gets the retained chunked v1 model
        s = EdgeSettings.load(federation=fed, fog_id="north", edge_id="n2", mqtt=mqtt).mqtt
        async with MqttTransport(s, client_id=f"{fed}-late") as late:
            await late.subscribe(topics.model(fed, "north"))
            got = await anext(late.messages())
        async with running(late_edge := edge("n2", 2, None)):
            await wait_for(lambda: late_edge.updates_sent == 1, 60, "the late edge's update")
            await wait_for(lambda: any(u.edge_id == "n2" for u in spy.updates), 30)
            # Corrupted chunks on an update and a model topic: fog and edge count them
            bad = bytearray(split_frame(b"z" * 5000, chunk_bytes=2000)[1])
            bad[-1] ^= 1
            async with MqttTransport(s, client_id=f"{fed}-evil") as evil:
                # on a member's topic: the fog subscribes only its edges' update topics
                await evil.publish(topics.update(fed, "north", "n0"), bytes(bad))
                # an up-to-date edge listens to its fog's model stream (the delta topic);
                # it left the full-model topic once it held a model
                await evil.publish(topics.model_delta(fed, "north"), bytes(bad))
            await wait_for(lambda: fog.metrics.rejected["wire.chunk"] == 1, 30)
            await wait_for(lambda: late_edge.metrics.rejected["wire.chunk"] == 1, 30)
    store = ModelStore(tmp_path / "store")
    ups = [u for u in spy.updates if u.base_version == 0]
    assert sorted(u.edge_id for u in ups) == ["n0", "n1"]
    assert all(len(encode_frame(u)) > 7 * AWS_LIMIT for u in ups)  # ~1 MB: 8 chunks each
    np.testing.assert_allclose(
        store.load(1).weights,
        expected_next(store.load(0).weights.astype(np.float64), ups, 1), rtol=1e-5, atol=1e-6,
    )
    assert fog.metrics.counters["accepted"] >= 2
    assert fog.metrics.rejected == {"wire.chunk": 1}
    model = decode_frame(got.payload)
    assert isinstance(model, ModelFrame)
    assert got.retain
    assert len(got.payload) > 8 * AWS_LIMIT
    assert model.version == 1
    np.testing.assert_array_equal(model.weights, store.load(1).weights)
    (late_update,) = [u for u in spy.updates if u.edge_id == "n2"]
    assert late_update.base_version == 1
