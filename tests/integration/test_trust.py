"""Trust over real brokers: what an attacker on MQTT or Kafka sends is refused by signature.

Each forged, replayed, tampered or revoked frame is refused with its reason and counted; the
rounds complete with the honest parties; no service crashes; the model store (and its lineage,
checked by ``hierfl audit``'s verifier) credits only honest parties.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hierfl import topics
from hierfl.cloud.service import CloudService
from hierfl.config import FogSettings, KafkaSettings
from hierfl.errors import SignatureError
from hierfl.model import ModelStore
from hierfl.model.lineage import verify_store
from hierfl.provision import Provisioned, revoke
from hierfl.security.trust import TrustStore, load_signing_key
from hierfl.transport.kafka import KafkaConsumerTransport, KafkaProducerTransport
from hierfl.transport.mqtt import MqttTransport
from hierfl.wire import AggregateFrame, ModelFrame, UpdateFrame, encode_frame
from hierfl.wire.frames import EdgeProof
from hierfl.wire.signing import Signer, Verifier
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


def signer_of(prov: Provisioned, party: str, fed: str) -> Signer:
    return Signer(party, load_signing_key(prov.kit(party) / "signing.key"), fed)


def stranger(party: str, fed: str) -> Signer:
    """A key the trust bundle does not hold, claiming to be ``party``."""
    return Signer(party, Ed25519PrivateKey.generate(), fed)


def flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


@contextlib.asynccontextmanager
async def raw_updates(url: str, fed: str, fog: str) -> AsyncIterator[dict[str, list[bytes]]]:
    """Every raw update payload published in ``fog``'s region, by topic (an eavesdropper)."""
    seen: dict[str, list[bytes]] = {}
    s = FogSettings.load(fog_id="spy", federation=fed, mqtt={"url": url}).mqtt
    async with MqttTransport(s, client_id=f"eavesdrop-{fed}") as mqtt:
        await mqtt.subscribe(topics.update_filter(fed, fog))

        async def loop() -> None:
            async for m in mqtt.messages():
                seen.setdefault(m.topic, []).append(m.payload)

        task = asyncio.create_task(loop())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def alive(tasks: list[asyncio.Task[None]]) -> None:
    """No service crashed (the cloud returns normally once it built max_versions)."""
    for t in tasks:
        assert not t.done() or t.exception() is None, f"a service crashed: {t.exception()}"


async def test_forged_replayed_tampered_and_revoked_updates_are_refused(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    fed = unique_id
    topo = Topology({"north": ["n0", "n1", "n2"]})
    write_initial(tmp_path / "init.npz")
    prov = provision_topo(tmp_path / "pki", fed, topo)
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, fed, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=2, pki=prov,
        fog_overrides={"min_updates": 2, "quorum": 2, "round_timeout_s": 4},
    )
    # n2's device is stolen: whoever holds its key ignores the revocation list
    sec2 = edge_s[2].security.model_copy(update={"revocation_list": None})
    edge_s[2] = edge_s[2].model_copy(update={"security": sec2})
    cloud = CloudService(cloud_s)
    (fog,) = make_fogs(fog_s)
    n1_key = signer_of(prov, "edge/north/n1", fed)  # an insider: a real edge's own key
    n2_key = signer_of(prov, "edge/north/n2", fed)  # stolen, and revoked below
    async with (
        raw_updates(mqtt_broker.url, fed, "north") as captured,
        running(cloud, fog) as tiers,
    ):
        await wait_for(lambda: fog.round.version == 0, 30, "the fog's v0 round")
        # revoked while the fog runs: it re-reads revoked.json, no restart
        assert revoke(tmp_path / "pki", "edge/north/n2", reason="device stolen")
        trust = fog.security.trust
        assert trust is not None
        await wait_for(lambda: trust.is_revoked("edge/north/n2"), 10, "the fog to see it")
        size, seq = fog.round.model_size, fog.round.seq

        def update(edge: str, value: float = 1.0) -> UpdateFrame:
            return UpdateFrame(fed, "north", edge, 0, seq, 10,
                               np.full(size, value, np.float32))

        valid_n1 = encode_frame(update("n1", 5.0), signer=n1_key)
        hostile = [
            # no signature at all, under a real edge's id
            ("wire.signature", "n0", encode_frame(update("n0", 100.0))),
            # a real edge's key signing for another edge (impersonation by an insider)
            ("wire.signer", "n0", encode_frame(update("n0", 100.0), signer=n1_key)),
            # an invented edge id with a key of its own (on a member's topic: the fog
            # subscribes only its edges' topics, so it never hears the ghost's own)
            ("wire.signer", "n0", encode_frame(update("ghost", 100.0),
                                               signer=stranger("edge/north/ghost", fed))),
            # the stolen, revoked key (its own topic is unsubscribed since the revocation)
            ("wire.revoked", "n0", encode_frame(update("n2", 100.0), signer=n2_key)),
            # a real edge id, signed with a key that is not its own
            ("wire.signature", "n0", encode_frame(update("n0", 100.0),
                                                  signer=stranger("edge/north/n0", fed))),
            # a body changed under a valid signature
            ("wire.signature", "n1", flip(valid_n1, 40)),
            # a garbage signature (the block's last field is the 64-byte signature)
            ("wire.signature", "n1", valid_n1[:-66] + os.urandom(64) + valid_n1[-2:]),
        ]
        s = FogSettings.load(fog_id="x", mqtt={"url": mqtt_broker.url}).mqtt
        async with MqttTransport(s, client_id=f"attacker-{fed}") as mqtt:
            for _, edge, payload in hostile:
                await mqtt.publish(topics.update(fed, "north", edge), payload)
        await wait_for(lambda: sum(fog.metrics.rejected.values()) >= len(hostile), 30,
                       "the forged updates to be refused")
        assert fog.metrics.counters.get("accepted", 0) == 0
        edges = make_edges(edge_s)  # n0, n1 honest; n2 revoked
        async with running(*edges) as edge_tasks:
            # the revoked edge's updates never reach the fog: its topic is unsubscribed
            await wait_for(lambda: "n2" not in (fog._updates.subscribed or {"n2"}), 10,
                           "the revoked edge's topic to be unsubscribed")
            await wait_for(lambda: cloud.version >= 1, 60, "v1")
            # replay: an honest edge's v0 update, captured on the broker, published again
            n0_topic = topics.update(fed, "north", "n0")
            genuine = Verifier(TrustStore(prov.trust_bundle, fed), fed)

            def honest_n0() -> list[bytes]:
                out = []
                for data in captured.get(n0_topic, []):
                    with contextlib.suppress(SignatureError):
                        if genuine.check(data).signer == "edge/north/n0":
                            out.append(data)
                return out

            await wait_for(lambda: bool(honest_n0()), 30, "n0's update on the wire")
            async with MqttTransport(s, client_id=f"attacker2-{fed}") as mqtt:
                await mqtt.publish(n0_topic, honest_n0()[0])
            await wait_for(lambda: fog.metrics.rejected.get("wire.replay", 0) >= 1, 30,
                           "the replayed update to be refused")
            await wait_for(cloud.finished.is_set, 60, "v2")
            alive(tiers)
            alive(edge_tasks[:2])
    rejected = fog.metrics.rejected
    assert rejected["wire.signature"] == 4
    assert rejected["wire.signer"] == 2
    assert rejected["wire.replay"] >= 1
    assert rejected["wire.revoked"] >= 1
    store = ModelStore(tmp_path / "store")
    for v in (1, 2):
        meta = store.load(v).meta
        assert meta["fogs"]["north"]["contributors"] == ["n0", "n1"], v
        (agg,) = meta["lineage"]["aggregates"]
        assert sorted({e["edge"] for e in agg["edges"]}) == ["n0", "n1"]
    # the weights moved by the honest updates only: no 100.0s of the forgeries
    assert np.abs(store.load(1).weights - store.load(0).weights).max() < 10
    trust = TrustStore(prov.trust_bundle, fed)
    report = verify_store(tmp_path / "store", trust, fed)
    assert report.ok, report.first_bad


async def test_forged_aggregates_and_global_models_on_kafka_are_refused(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    fed = unique_id
    topo = Topology({"north": ["n0", "n1"], "south": ["s0", "s1"]})
    write_initial(tmp_path / "init.npz")
    prov = provision_topo(tmp_path / "pki", fed, topo)
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, fed, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=3, pki=prov,
    )
    cloud = CloudService(cloud_s)
    fogs = make_fogs(fog_s)
    north_key = signer_of(prov, "fog/north", fed)
    kafka = KafkaSettings(bootstrap=kafka_broker.bootstrap)
    captured: list[bytes] = []

    async def capture() -> None:
        async with KafkaConsumerTransport(kafka, topics.aggregates(fed),
                                          client_id=f"eavesdrop-{fed}", start="earliest") as c:
            async for m in c.messages():
                if m.payload is not None:
                    captured.append(m.payload)  # noqa: PERF401

    async with running(cloud, *fogs) as tiers:
        await wait_for(lambda: all(f.round.version == 0 for f in fogs), 30, "fogs on v0")
        size = fogs[0].round.model_size

        def agg(fog: str, contributors: tuple[str, ...] = ("x0",), **kw: object
                ) -> AggregateFrame:
            return AggregateFrame(fed, fog, 0, 100, contributors, 1,
                                  np.full(size, 50.0, np.float32), **kw)  # type: ignore[arg-type]

        # an insider fog's key with an invented contributor (the cloud checks provenance)
        fake_proof = EdgeProof("ghost", 0, 1, 1, b"\0" * 32, b"\0" * 64)
        forged = {
            "wire.signature": [
                encode_frame(agg("ghost")),                          # unsigned, invented fog
                encode_frame(agg("north", ("ghost",), provenance=(fake_proof,)),
                             signer=north_key),                      # forged provenance
            ],
            "wire.signer": [
                encode_frame(agg("south"), signer=north_key),        # fog A's key for fog B
                encode_frame(agg("north"), signer=signer_of(prov, "edge/north/n0", fed)),
                encode_frame(agg("north"), signer=stranger("fog/north", fed)),
            ],
        }
        # a global model with a huge version: unsigned, by a fog's key, by a stranger's
        huge = ModelFrame(fed, 1_000_000_000, np.zeros(size, np.float32))
        forged_models = [encode_frame(huge), encode_frame(huge, signer=north_key),
                         encode_frame(huge, signer=stranger("cloud", fed))]
        async with KafkaProducerTransport(kafka, client_id=f"attacker-{fed}") as producer:
            for frames in forged.values():
                for data in frames:
                    await producer.send_frame(topics.aggregates(fed), key=b"x", frame=data)
            for data in forged_models:
                await producer.send_frame(topics.models(fed), key=fed.encode(), frame=data)
        await wait_for(lambda: sum(cloud.metrics.rejected.values()) >= 5, 30,
                       "the forged aggregates to be refused")
        await wait_for(lambda: all(sum(f.metrics.rejected.values()) >= 3 for f in fogs), 30,
                       "the forged global models to be refused by every fog")
        assert all(f.round.version == 0 for f in fogs)  # not wedged on version 1e9
        watcher = asyncio.create_task(capture())
        try:
            async with running(*make_edges(edge_s)) as edge_tasks:
                await wait_for(lambda: cloud.version >= 2, 90, "v2")
                # replay north's v0 aggregate (captured from Kafka) after v1 was built from it
                genuine = Verifier(TrustStore(prov.trust_bundle, fed), fed)

                def north_v0(data: bytes) -> bool:
                    with contextlib.suppress(SignatureError):
                        sb = genuine.check(data)
                        return (sb.signer, sb.kind, sb.base) == ("fog/north", "aggregate", 0)
                    return False

                await wait_for(lambda: any(north_v0(d) for d in captured), 30,
                               "north's v0 aggregate on the wire")
                replayed = [d for d in captured if north_v0(d)]
                async with KafkaProducerTransport(kafka, client_id=f"attacker2-{fed}") as p:
                    for data in replayed:
                        await p.send_frame(topics.aggregates(fed), key=b"north", frame=data)
                await wait_for(lambda: cloud.metrics.rejected.get("wire.replay", 0) >= 1, 30,
                               "the replayed aggregate to be refused")
                await wait_for(cloud.finished.is_set, 90, "v3")
                alive(tiers)
                alive(edge_tasks)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    rejected = cloud.metrics.rejected
    assert rejected["wire.signature"] == 2
    assert rejected["wire.signer"] == 3
    assert rejected["wire.replay"] >= 1
    for f in fogs:  # unsigned and stranger's: bad signature; a fog's key: wrong role
        assert f.metrics.rejected["wire.signature"] == 2
        assert f.metrics.rejected["wire.signer"] == 1
    store = ModelStore(tmp_path / "store")
    assert store.versions() == [0, 1, 2, 3]
    for v in (1, 2, 3):
        meta = store.load(v).meta
        assert sorted(meta["fogs"]) == ["north", "south"]
        assert meta["fogs"]["north"]["contributors"] == ["n0", "n1"]
        assert meta["fogs"]["south"]["contributors"] == ["s0", "s1"]
    assert np.abs(store.load(1).weights - store.load(0).weights).max() < 10
    report = verify_store(tmp_path / "store", TrustStore(prov.trust_bundle, fed), fed)
    assert report.ok, report.first_bad
    # the audit catches one flipped byte in a checkpoint, and one edited metadata record
    weights = tmp_path / "store" / "v00000002.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    bad = verify_store(tmp_path / "store", TrustStore(prov.trust_bundle, fed), fed).first_bad
    assert bad is not None and bad.version == 2
    weights.write_bytes(bytes(data[:-5]) + bytes([data[-5] ^ 0x01]) + bytes(data[-4:]))
    assert verify_store(tmp_path / "store", TrustStore(prov.trust_bundle, fed), fed).ok
    record = tmp_path / "store" / "v00000003.json"
    record.write_text(record.read_text().replace('"n1"', '"ghost"', 1))
    bad = verify_store(tmp_path / "store", TrustStore(prov.trust_bundle, fed), fed).first_bad
    assert bad is not None and bad.version == 3


async def test_forged_fog_models_are_refused_by_edges(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    """Fog models planted on a fog's topics (by fog A's key for fog B, by an edge's key, by a
    stranger's key) are refused: retained on the model topic, by an edge that joins and by the
    fog itself when it starts (it resumes from its retained model); live on the delta stream,
    by every edge. The edges train on the fog's genuine models."""
    fed = unique_id
    topo = Topology({"north": ["n0", "n1"], "south": ["s0"]})
    write_initial(tmp_path / "init.npz")
    prov = provision_topo(tmp_path / "pki", fed, topo)
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, fed, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=3, pki=prov,
        fog_overrides={"min_updates": 1, "quorum": 1},
        cloud_overrides={"fogs": ["north"], "min_fogs": 1},
    )
    s = FogSettings.load(fog_id="x", mqtt={"url": mqtt_broker.url}).mqtt
    planted = ModelFrame(fed, 10**9, np.zeros(51, np.float32), scope="fog", fog_id="north",
                         seq=10**9)  # tiny_model has 51 parameters
    # 1. before the fog ever ran: a model planted retained, and an edge that joins
    async with MqttTransport(s, client_id=f"attacker-{fed}") as mqtt:
        await mqtt.publish(topics.model(fed, "north"),
                           encode_frame(planted, signer=signer_of(prov, "fog/south", fed)),
                           retain=True)
    (n1,) = make_edges(edge_s[1:2])
    async with running(n1) as n1_task:
        await wait_for(lambda: n1.metrics.rejected.get("wire.signer", 0) >= 1, 30,
                       "the planted retained model to be refused by a joining edge")
        # 2. the fog starts: its resume probe refuses the planted model too, and it publishes
        # its genuine model (which replaces the planted one)
        cloud = CloudService(cloud_s)
        (north,) = make_fogs(fog_s[:1])
        async with running(cloud, north) as tiers:
            await wait_for(lambda: north.round.version == 0, 30, "north on v0")
            assert north.metrics.rejected.get("wire.signer", 0) == 1
            # n1 holds the fog's genuine model: the broker has replaced the planted retained one
            # (publishes are delivered in order), so n0, joining now, never sees the planted one
            await wait_for(lambda: n1._latest is not None and n1._latest.version == 0, 30,
                           "n1 to receive the fog's genuine v0")
            (n0,) = make_edges(edge_s[:1])
            async with running(n0) as n0_task:
                await wait_for(lambda: n0.updates_sent >= 1 and n1.updates_sent >= 1, 60,
                               "both edges train on the fog's genuine model")
                # 3. live on the delta stream, with three wrong keys
                async with MqttTransport(s, client_id=f"attacker2-{fed}") as mqtt:
                    for signer in (signer_of(prov, "edge/north/n1", fed),
                                   signer_of(prov, "fog/south", fed),
                                   stranger("fog/north", fed)):
                        await mqtt.publish(topics.model_delta(fed, "north"),
                                           encode_frame(planted, signer=signer))
                await wait_for(lambda: sum(n0.metrics.rejected.values()) >= 3
                               and sum(n1.metrics.rejected.values()) >= 4, 30,
                               "the planted deltas to be refused")
                await wait_for(cloud.finished.is_set, 60, "v3 from honest updates")
                alive(tiers)
                alive(n0_task)
                alive(n1_task)
    assert n0.metrics.rejected == {"wire.signer": 2, "wire.signature": 1}
    assert n1.metrics.rejected == {"wire.signer": 3, "wire.signature": 1}
    for edge in (n0, n1):
        assert edge._latest is not None and edge._latest.version < 10**9
    assert ModelStore(tmp_path / "store").versions() == [0, 1, 2, 3]
