"""Fault behaviour over real brokers: silent edges, hostile frames, fog and cloud restarts."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zstandard

from hierfl import topics
from hierfl.cloud.service import CloudService
from hierfl.config import FogSettings
from hierfl.fog.round import FogState
from hierfl.model import ModelStore
from hierfl.transport.kafka import KafkaConsumerTransport, KafkaProducerTransport
from hierfl.transport.mqtt import MqttTransport
from hierfl.wire import ModelFrame, UpdateFrame, decode_frame, encode_frame
from tests.integration.fed import (
    Topology,
    make_edges,
    make_fogs,
    provision_topo,
    running,
    settings_for,
    spy_updates,
    wait_for,
    write_initial,
)
from tests.integration.test_federation import expected_next

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def test_silent_edge_delays_round_by_at_most_timeout(
    mqtt_broker, kafka_broker, unique_id, tmp_path, caplog
):
    topo = Topology({"north": ["n0", "n1", "n2"]})
    write_initial(tmp_path / "init.npz")
    timeout = 3.0  # room for two edges to train on a loaded 2-core machine
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=1,
        fog_overrides={"round_timeout_s": timeout, "quorum": 2},
    )
    cloud = CloudService(cloud_s)
    (fog,) = make_fogs(fog_s)
    edges = make_edges(edge_s[:2])  # n2 never answers
    caplog.set_level(logging.INFO, logger="hierfl.fog.service")
    closed_at: list[float] = []

    class _CloseTimes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "closed with 2 edges (deadline)" in record.getMessage():
                closed_at.append(time.monotonic())

    handler = _CloseTimes(logging.INFO)
    logging.getLogger("hierfl.fog.service").addHandler(handler)
    async with spy_updates(mqtt_broker.url, unique_id, ["north"]) as spy:
        async with running(cloud, fog, *edges):
            # The round that closes opened at (its deadline - timeout); on a loaded machine
            # an earlier round may have been skipped (fewer than quorum), so track the last.
            last_deadline = None

            def forwarded() -> bool:
                nonlocal last_deadline
                # (forwarded, the round's deadline is its resend timer's)
                if fog.round.deadline is not None and fog.round.state is FogState.COLLECTING:
                    last_deadline = fog.round.deadline
                return bool(fog.forwarded)

            try:
                await wait_for(forwarded, 60)
                await wait_for(cloud.finished.is_set, 30)
            finally:
                logging.getLogger("hierfl.fog.service").removeHandler(handler)
    # The silent edge delayed the round by at most its timeout: it closed at its deadline
    # (not earlier, with fewer than min_updates, and not later). Measured when the fog logged
    # the close (its monotonic clock), not when the aggregate reached Kafka.
    assert closed_at, [r.getMessage() for r in caplog.records]
    waited = closed_at[-1] - (last_deadline - timeout)
    assert timeout - 0.05 <= waited <= timeout + 1.5, waited
    (agg,) = [a for a in fog.forwarded if a.base_version == 0]  # edges may go on with v1
    assert agg.contributors == ("n0", "n1")
    store = ModelStore(tmp_path / "store")
    w0 = store.load(0).weights.astype(np.float64)
    # The updates the fog aggregated, as its signed provenance names them: on a loaded
    # machine the first round may be skipped below quorum, and the model it keeps then takes
    # the edges' late seq-1 updates, refusing their retrained copies as duplicates; the
    # newest spied seq is not necessarily what was folded.
    folded = {(p.edge_id, p.base_version, p.base_seq) for p in agg.provenance}
    assert {e for e, _, _ in folded} == {"n0", "n1"} and len(folded) == 2, folded
    ups = [next(u for u in spy.updates if (u.edge_id, u.base_version, u.base_seq) == key)
           for key in sorted(folded)]
    np.testing.assert_allclose(store.load(1).weights, expected_next(w0, ups, 1),
                               rtol=1e-5, atol=1e-6)


async def test_round_below_quorum_is_skipped_not_forwarded(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    topo = Topology({"north": ["n0", "n1", "n2"]})
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=1,
        fog_overrides={"round_timeout_s": 0.7, "quorum": 3},
    )
    cloud = CloudService(cloud_s)
    (fog,) = make_fogs(fog_s)
    edges = make_edges(edge_s[:2])
    async with running(cloud, fog, *edges):
        await wait_for(lambda: fog.metrics.counters["rounds_skipped"] >= 2, 30)
        assert not fog.forwarded
        assert fog.round.seq >= 3  # every skip reopens the round under a new seq
        # both live edges retrained on each reopened round
        await wait_for(lambda: all(e.updates_sent >= 2 for e in edges), 30)
    assert cloud.version == 0


async def test_hostile_frames_are_rejected_and_counted(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    topo = Topology({"north": ["n0", "n1", "n2"]})
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=1,
        fog_overrides={"limits": {"max_body_bytes": 8 << 20}},
        signed=False,  # the decoder's own defences; signed attacks: tests/integration/test_trust.py
    )
    cloud = CloudService(cloud_s)
    (fog,) = make_fogs(fog_s)
    edges = make_edges(edge_s)
    fed = unique_id
    async with spy_updates(mqtt_broker.url, fed, ["north"]) as spy, running(cloud, fog):
        await wait_for(lambda: fog.round.version == 0, 30)
        size = fog.round.model_size
        good = UpdateFrame(fed, "north", "evil4", 0, fog.round.seq, 10,
                           np.ones(size, np.float32))
        valid = encode_frame(good)
        wrong_shape = encode_frame(
            UpdateFrame(fed, "north", "evil3", 0, fog.round.seq, 10, np.ones(7, np.float32))
        )
        bomb_body = zstandard.ZstdCompressor(level=19).compress(b"\0" * (200 << 20))
        bomb = valid[:8] + (1000).to_bytes(4, "little") + bomb_body
        bomb_big = valid[:8] + (200 << 20).to_bytes(4, "little") + bomb_body
        hostile = {
            "evil0": os.urandom(300),              # garbage
            "evil1": valid[: len(valid) // 2],     # truncated
            "evil2": bomb,                         # zstd bomb, small declared size
            "evil5": bomb_big,                     # zstd bomb, huge declared size
            "evil3": wrong_shape,                  # wrong tensor shape
            "evil6": valid,                        # sent on another edge's topic
        }
        s = FogSettings.load(fog_id="x", mqtt={"url": mqtt_broker.url}).mqtt
        async with MqttTransport(s, client_id=f"attacker-{fed}") as mqtt:
            for edge, payload in hostile.items():
                await mqtt.publish(topics.update(fed, "north", edge), payload)
        await wait_for(lambda: sum(fog.metrics.rejected.values()) >= len(hostile), 30)
        async with running(*edges):
            await wait_for(cloud.finished.is_set, 60)
    rejected = fog.metrics.rejected
    assert rejected["wire.version"] == 1          # garbage: bad magic
    assert rejected["wire.too_large"] == 2        # both bombs, before inflating
    assert rejected["validation.shape"] == 1
    assert rejected["validation.sender"] == 1     # edge id does not match its topic
    assert sum(rejected.values()) == len(hostile)
    (agg,) = [a for a in fog.forwarded if a.base_version == 0]  # edges may go on with v1
    assert agg.contributors == ("n0", "n1", "n2")
    honest = [u for u in spy.updates if u.edge_id.startswith("n") and u.base_version == 0]
    store = ModelStore(tmp_path / "store")
    np.testing.assert_allclose(
        store.load(1).weights,
        expected_next(store.load(0).weights.astype(np.float64), honest, 1), rtol=1e-5, atol=1e-6,
    )


def _no_torch_cli(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Run ``hierfl <args>`` in a child where ``import torch`` fails (an IoT gateway)."""
    code = (
        "import sys; sys.modules['torch'] = None; "
        "from hierfl.cli import main; sys.argv = ['hierfl', *sys.argv[1:]]; main()"
    )
    with log.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-c", code, *args], env={**os.environ, **env}, cwd=ROOT,
            stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _kill(p: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if p.poll() is None:
        os.kill(p.pid, sig)
    p.wait(timeout=10)


@pytest.mark.parametrize("spool", ["spool_dir", "kit_default"])
async def test_fog_killed_mid_round_gets_updates_sent_while_down(
    mqtt_broker, kafka_broker, unique_id, tmp_path, spool
):
    """SIGKILL a torch-less fog mid-round: it loses nothing it accepted (spool) and gets
    what edges published while it was down (persistent MQTT session)."""
    topo = Topology({"north": ["n0", "n1", "n2"]})
    write_initial(tmp_path / "init.npz")
    pki = provision_topo(tmp_path / "pki", unique_id, topo)
    cloud_s, _, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=1, pki=pki,
    )
    fed = unique_id
    kit = pki.fog_kit("north")
    env = {
        "HIERFL_SECURITY__KEY_FILE": str(kit / "signing.key"),
        "HIERFL_SECURITY__TRUST_BUNDLE": str(pki.trust_bundle),
        "HIERFL_FEDERATION": fed, "HIERFL_FOG_ID": "north",
        "HIERFL_MQTT__URL": mqtt_broker.url, "HIERFL_KAFKA__BOOTSTRAP": kafka_broker.bootstrap,
        "HIERFL_MIN_UPDATES": "3", "HIERFL_ROUND_TIMEOUT_S": "60", "HIERFL_LOG_LEVEL": "DEBUG",
    }
    # a provisioned fog spools under its state_dir unless spool_dir says otherwise
    spool_path = tmp_path / "spool" if spool == "spool_dir" else kit / "state" / "spool"
    env["HIERFL_SECURITY__STATE_DIR"] = str(kit / "state")
    if spool == "spool_dir":
        env["HIERFL_SPOOL_DIR"] = str(spool_path)
    cloud = CloudService(cloud_s)
    s = FogSettings.load(fog_id="x", mqtt={"url": mqtt_broker.url}).mqtt
    models: list[ModelFrame] = []
    stats: list[dict] = []

    async def watch(mqtt: MqttTransport) -> None:
        async for m in mqtt.messages():
            if m.topic.endswith("/stats"):
                stats.append(json.loads(m.payload))
                continue
            f = decode_frame(m.payload)
            assert isinstance(f, ModelFrame)
            models.append(f)

    log = tmp_path / "fog.log"
    fog = _no_torch_cli("fog", env=env, log=log)
    try:
        async with running(cloud), spy_updates(mqtt_broker.url, fed, ["north"]) as spy:
            async with MqttTransport(s, client_id=f"watch-{fed}") as mqtt:
                await mqtt.subscribe(topics.model(fed, "north"))
                await mqtt.subscribe(topics.stats(fed, "north"))
                watcher = asyncio.create_task(watch(mqtt))
                await wait_for(lambda: bool(models), 60)   # the fog opened round (v0, seq 1)
                first, rest = make_edges(edge_s[:1]), make_edges(edge_s[1:])
                async with running(*first):
                    await wait_for(lambda: any(
                        x["counters"].get("accepted", 0) >= 1 for x in stats), 60)
                _kill(fog)                                  # crash: no clean disconnect
                # the accepted update is on disk (a batch file of one: group commit)
                assert [p.name for p in spool_path.glob("*.hf[lb]")] == ["v0-s1-b1-n1.hfb"]
                async with running(*rest):
                    await wait_for(lambda: len(spy.updates) == 3, 60)  # 2 sent while fog is down
                    assert cloud.version == 0
                    fog = _no_torch_cli("fog", env=env, log=log)
                    await wait_for(cloud.finished.is_set, 60)
                watcher.cancel()
        # Forwarded: the fog drops the v0 round's frames from its spool (checked while it still
        # runs: the cloud can finish between the fog's Kafka ack and its spool clean-up). Frames
        # of v1 may be there: n1 and n2 can already have trained on v1 (the open round's).
        await wait_for(lambda: not list(spool_path.glob("v0-*.hf[lb]")), 20,
                       "the v0 frames to leave the spool")
        assert fog.poll() is None, log.read_text()
    finally:
        _kill(fog, signal.SIGTERM)
    meta = ModelStore(tmp_path / "store").load(1).meta
    # n0 was accepted before the crash (replayed from the spool); n1, n2 arrived while down.
    assert meta["fogs"]["north"]["contributors"] == ["n0", "n1", "n2"]
    # The restarted fog resumed the same round (same seq) rather than starting a new one.
    assert {u.base_seq for u in spy.updates if u.base_version == 0} == {models[0].seq}
    assert "resumed v0" in log.read_text()


async def test_cloud_restart_resumes_and_never_reapplies(
    mqtt_broker, kafka_broker, unique_id, tmp_path, monkeypatch
):
    topo = Topology({"north": ["n0", "n1"], "south": ["s0", "s1"]})
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=2,
    )
    # Crash window: the checkpoint is written but the consumed offsets are never committed.
    async def no_commit(self, inbound):
        return None

    with monkeypatch.context() as m:
        m.setattr(KafkaConsumerTransport, "commit", no_commit)
        cloud = CloudService(cloud_s)
        fogs = make_fogs(fog_s)
        # Each edge stops after its updates for v0 and v1: an update for v2 sent before the
        # shutdown would wait in the restarted fog's session and be aggregated in place of the
        # one the spy below sees (the edges' shuffling seeds advance every round).
        edges = make_edges([e.model_copy(update={"max_rounds": 2}) for e in edge_s])
        async with running(cloud, *fogs, *edges):
            await wait_for(cloud.finished.is_set, 60)
    store = ModelStore(tmp_path / "store")
    assert store.versions() == [0, 1, 2]
    v2 = store.load(2).weights.copy()

    # Restart: same store, one more version wanted. The replayed aggregates for v0 and v1
    # are refused as stale; v3 is built only from the new round's updates.
    cloud2 = CloudService(cloud_s.model_copy(update={"max_versions": 3}))
    assert cloud2.version == 2
    np.testing.assert_array_equal(cloud2.round.weights, v2)
    fogs = make_fogs(fog_s)
    edges = make_edges(edge_s)
    async with spy_updates(mqtt_broker.url, unique_id, list(topo.fogs)) as spy:
        async with running(cloud2, *fogs, *edges):
            await wait_for(cloud2.finished.is_set, 60)
    # 2 fogs x versions 0 and 1: refused by their signed counters (below those checkpointed
    # with v2), or, if a counter passes, as stale
    refused = cloud2.metrics.rejected
    assert refused.get("wire.replay", 0) + refused.get("validation.stale", 0) == 4
    assert refused.get("wire.replay", 0) == 4
    assert store.versions() == [0, 1, 2, 3]
    # An edge re-sends its update when its fog announces the same model again (a restarted
    # fog does): the copy is refused by the fog, so count each (edge, base seq) once.
    ups: dict[tuple[str, str, int], UpdateFrame] = {}
    for u in spy.updates:
        if u.base_version == 2:
            ups.setdefault((u.fog_id, u.edge_id, u.base_seq), u)
    v3 = store.load(3)
    np.testing.assert_allclose(
        v3.weights, expected_next(v2.astype(np.float64), list(ups.values()), 1),
        rtol=1e-5, atol=1e-6,
        err_msg=f"spied {sorted(ups)}; v3 from {json.dumps(v3.meta.get('fogs'), default=str)}")


async def test_an_aggregate_lost_on_the_way_is_sent_again(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    """At-least-once fog -> cloud: the first aggregate never reaches Kafka (as when a broker
    drops a chunk); after resend_after_s the fog sends it again and the round completes,
    exactly once."""
    topo = Topology({"north": ["n0", "n1"], "south": ["s0", "s1"]})
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=1, fog_overrides={"resend_after_s": 1.0},
    )
    cloud = CloudService(cloud_s)
    # south waits for the same global model; a longer timer keeps its count simple to check
    north, south = make_fogs([fog_s[0], fog_s[1].model_copy(update={"resend_after_s": 120.0})])
    lost: list[bytes] = []
    real_send = KafkaProducerTransport.send_frame

    async def lossy(self, topic, *, key, frame):
        if key == b"north" and not lost:
            lost.append(frame)  # "sent", never arrives
            return 1
        return await real_send(self, topic, key=key, frame=frame)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(KafkaProducerTransport, "send_frame", lossy)
        async with running(cloud, north, south, *make_edges(edge_s)):
            await wait_for(cloud.finished.is_set, 60)
    assert lost
    # Once after resend_after_s; on a loaded machine the new global model can take longer
    # than another 1 s to reach north, and then it sends once more: the cloud refuses that
    # copy (it holds or has applied north's aggregate) rather than applying it twice.
    resent = north.metrics.counters["aggregates_resent"]
    assert resent >= 1
    assert south.metrics.counters.get("aggregates_resent", 0) == 0
    store = ModelStore(tmp_path / "store")
    assert store.versions() == [0, 1]
    meta = store.load(1).meta
    assert set(meta["fogs"]) == {"north", "south"}
    refused = cloud.metrics.rejected
    assert refused.get("validation.duplicate", 0) + refused.get("validation.stale", 0) <= resent - 1


async def test_fog_killed_without_a_spool_gets_accepted_updates_again(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    """No spool, no state_dir: what the killed fog had accepted is gone from it, and the edges
    re-send their updates when the restarted fog announces the same model again."""
    topo = Topology({"north": ["n0", "n1", "n2"]})
    write_initial(tmp_path / "init.npz")
    pki = provision_topo(tmp_path / "pki", unique_id, topo)
    cloud_s, _, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=1, pki=pki,
    )
    kit = pki.fog_kit("north")
    env = {
        "HIERFL_SECURITY__KEY_FILE": str(kit / "signing.key"),
        "HIERFL_SECURITY__TRUST_BUNDLE": str(pki.trust_bundle),
        "HIERFL_FEDERATION": unique_id, "HIERFL_FOG_ID": "north",
        "HIERFL_MQTT__URL": mqtt_broker.url, "HIERFL_KAFKA__BOOTSTRAP": kafka_broker.bootstrap,
        "HIERFL_MIN_UPDATES": "3", "HIERFL_ROUND_TIMEOUT_S": "300",
    }
    cloud = CloudService(cloud_s)
    s = FogSettings.load(fog_id="x", mqtt={"url": mqtt_broker.url}).mqtt
    stats: list[dict] = []

    async def watch(mqtt: MqttTransport) -> None:
        async for m in mqtt.messages():
            stats.append(json.loads(m.payload))  # noqa: PERF401

    log = tmp_path / "fog.log"
    fog = _no_torch_cli("fog", env=env, log=log)
    try:
        async with running(cloud), MqttTransport(s, client_id=f"watch-{unique_id}") as mqtt:
            await mqtt.subscribe(topics.stats(unique_id, "north"))
            watcher = asyncio.create_task(watch(mqtt))
            two, late = make_edges(edge_s[:2]), make_edges(edge_s[2:])
            async with running(*two):
                await wait_for(lambda: any(x["counters"].get("accepted", 0) >= 2 for x in stats),
                               60, "n0 and n1 accepted")
                _kill(fog)                        # both accepted updates die with it
                fog = _no_torch_cli("fog", env=env, log=log)
                await wait_for(lambda: all(e.metrics.counters.get("updates_resent", 0) >= 1
                                           for e in two), 60, "n0 and n1 to re-send")
                async with running(*late):
                    await wait_for(cloud.finished.is_set, 60, "v1 with all three edges")
            watcher.cancel()
        assert fog.poll() is None, log.read_text()
    finally:
        _kill(fog, signal.SIGTERM)
    meta = ModelStore(tmp_path / "store").load(1).meta
    assert meta["fogs"]["north"]["contributors"] == ["n0", "n1", "n2"]
    assert "resumed v0" in log.read_text()
