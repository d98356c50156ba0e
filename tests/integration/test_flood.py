"""A flood of junk over a real broker: honest rounds go on, refusals are counted, not logged."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard

from hierfl import topics
from hierfl.cloud.service import CloudService
from hierfl.config import FogSettings
from hierfl.security.trust import load_signing_key
from hierfl.transport.mqtt import MqttTransport
from hierfl.wire.codec import FLAG_SIGNED, MAGIC
from hierfl.wire.frames import UpdateFrame
from hierfl.wire.signing import Signer
from tests.integration.fed import (
    Topology,
    make_edges,
    make_fogs,
    provision_topo,
    running,
    settings_for,
    wait_for,
    write_initial,
)

pytestmark = pytest.mark.integration

DECLARED = 50_000_000  # allowed by the default max_params: 200 MB of zeros each, before


def bogus_update(fed: str, edge: str, base: int, seq: int, signer: Signer | None) -> bytes:
    """A ~200-byte top-k update declaring 50 M parameters (signed by an insider's key)."""
    m: dict[str, Any] = {
        "kind": "update", "federation": fed, "created_at": time.time(), "metrics": {},
        "fog": "north", "edge": edge, "base_version": base, "base_seq": seq, "num_samples": 10,
        "delta": {"codec": "topk", "size": DECLARED, "k": 1, "idx": b"\x05",
                  "values.data": np.float32(1).tobytes()},
    }
    body = msgpack.packb(m, use_bin_type=True)
    payload = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(body)
    flags = 0x01 | (FLAG_SIGNED if signer else 0)
    header = MAGIC + bytes([1, flags, 0, 0]) + len(body).to_bytes(4, "little")
    if signer is None:
        return header + payload
    claims = UpdateFrame(federation=fed, fog_id="north", edge_id=edge, base_version=base,
                         base_seq=seq, num_samples=10, delta=np.zeros(1, np.float32))
    block = signer.signature_block(claims, header, payload)
    return header + payload + block + len(block).to_bytes(2, "little")


async def _federation(tmp_path, mqtt_broker, kafka_broker, fed: str, edges: list[str],
                      honest: int, **fog_overrides: Any) -> Any:
    """Cloud, fog ``north`` (``min_updates = honest``) and edges ``edges[-honest:]``."""
    topo = Topology({"north": edges})
    pki = provision_topo(tmp_path / "pki", fed, topo)
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, fed, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=3, pki=pki,
        fog_overrides={"min_updates": honest, **fog_overrides},
    )
    (fog,) = make_fogs(fog_s)
    return pki, CloudService(cloud_s), fog, make_edges(edge_s)[-honest:]


async def test_unknown_topics_are_not_subscribed_and_honest_rounds_close(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    # Prepare: a signed federation whose fog knows its edges n0, n1 from the trust bundle.
    fed = unique_id
    _, cloud, fog, edges = await _federation(tmp_path, mqtt_broker, kafka_broker, fed,
                                             ["n0", "n1"], honest=2)
    n_junk = 500

    # Execute: junk on update topics of senders that are not edges of the fog, then one junk
    # message on a member's topic: the broker delivers one connection's messages in order, so
    # had the fog been subscribed to the others it would have refused them first.
    async with running(cloud, fog, *edges):
        await wait_for(lambda: fog.round.version == 0, 30, "the fog's first model")
        s = FogSettings.load(fog_id="x", mqtt={"url": mqtt_broker.url}).mqtt
        async with MqttTransport(s, client_id=f"flood-{fed}") as mqtt:
            for i in range(n_junk):
                await mqtt.publish(topics.update(fed, "north", f"junk{i % 7}"), os.urandom(64))
            await mqtt.publish(topics.update(fed, "north", "n1"), b"junk on a member's topic")
        rejected = fog.metrics.rejected
        await wait_for(lambda: rejected["wire.version"] >= 1, 30, "the member topic's junk")
        await wait_for(cloud.finished.is_set, 90, "three global versions")

    # Assert: only the member topic's message reached the fog; rounds went on.
    assert fog._updates.subscribed == {"n0", "n1"}
    assert rejected["wire.version"] == 1
    assert rejected.get("flood.quarantined", 0) == 0
    assert cloud.version == 3


async def test_a_flooding_edge_is_quarantined_then_heard_again(
    mqtt_broker, kafka_broker, unique_id, tmp_path, caplog
):
    # Prepare: edges n0..n2; n0's device is compromised (the attacker holds its key and floods
    # its own topic, as a broker ACL allows); n1 and n2 are honest. Two ingest connections.
    fed = unique_id
    pki, cloud, fog, edges = await _federation(
        tmp_path, mqtt_broker, kafka_broker, fed, ["n0", "n1", "n2"], honest=2,
        flood_refusals=20, flood_quarantine_s=1.0, ingest_connections=2,
    )
    insider = Signer("edge/north/n0", load_signing_key(pki.kit("edge/north/n0") / "signing.key"),
                     fed)
    caplog.set_level(logging.INFO, logger="hierfl.fog.service")
    n_flood = 300

    async with running(cloud, fog, *edges):
        await wait_for(lambda: fog.round.version == 0, 30, "the fog's first model")
        rejected, counters = fog.metrics.rejected, fog.metrics.counters
        s = FogSettings.load(fog_id="x", mqtt={"url": mqtt_broker.url}).mqtt
        async with MqttTransport(s, client_id=f"flood-{fed}") as mqtt:
            # Execute: a flood of signed, misshapen updates (50 M parameters declared).
            frame = bogus_update(fed, "n0", 0, 0, insider)
            for _ in range(n_flood):
                await mqtt.publish(topics.update(fed, "north", "n0"), frame)

            # Assert: n0 is quarantined and its topic unsubscribed; honest rounds close.
            await wait_for(lambda: counters["quarantines"] >= 1, 30, "a quarantine")
            await wait_for(cloud.finished.is_set, 90, "three global versions")
            refused = rejected["validation.shape"] + rejected.get("flood.lane_full", 0)
            assert refused > 20  # the budget
            assert refused + rejected.get("flood.quarantined", 0) <= n_flood
            assert "n0" not in fog._breaker._hits  # its refusals were spent on the quarantine

            # Execute: after the quarantine (1 s), n0 is subscribed again and heard.
            loop = asyncio.get_running_loop()
            await wait_for(lambda: not fog._breaker.quarantined("n0", loop.time())
                           and "n0" in (fog._updates.subscribed or ()), 30,
                           "n0 subscribed again")
            before = rejected["validation.shape"]
            await mqtt.publish(topics.update(fed, "north", "n0"),
                               bogus_update(fed, "n0", 0, 1, insider))
            await wait_for(lambda: rejected["validation.shape"] > before, 30, "n0 heard again")

    assert fog._updates.subscribed == {"n0", "n1", "n2"}
    assert len(fog._updates.links) == 2
    assert cloud.version == 3
    quarantined = [r for r in caplog.records if "quarantined sender 'n0'" in r.getMessage()]
    ended = [r for r in caplog.records if "quarantine of sender 'n0' ended" in r.getMessage()]
    assert 1 <= len(quarantined) <= counters["quarantines"]
    assert len(ended) >= 1
    lines = [r for r in caplog.records if "rejected input" in r.getMessage()]
    assert 1 <= len(lines) <= 12, [r.getMessage() for r in lines]  # one per reason per 10 s
