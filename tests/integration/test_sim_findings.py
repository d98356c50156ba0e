"""Regressions, on the real brokers, for fog bugs the deterministic simulator (hierfl.simtest)
found over the in-memory brokers: each test fails if its fix is reverted (the docstrings say
what the old code did)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hierfl import topics
from hierfl.cloud.service import CloudService
from hierfl.config import FogSettings, KafkaSettings
from hierfl.edge import EdgeClient
from hierfl.model import ModelStore
from hierfl.provision import Provisioned
from hierfl.sim.brokers import MqttBroker, free_port
from hierfl.transport.kafka import KafkaConsumerTransport
from hierfl.transport.mqtt import MqttTransport
from hierfl.wire import ModelFrame, decode_frame
from tests.integration.fed import (
    Topology,
    make_fogs,
    provision_topo,
    running,
    settings_for,
    spy_updates,
    tiny_task,
    wait_for,
    write_initial,
)
from tests.integration.test_faults import _kill, _no_torch_cli
from tests.integration.test_federation import expected_next

pytestmark = pytest.mark.integration


@dataclass
class _Watch:
    """What a separate MQTT client saw on one fog's model and stats topics."""

    models: list[ModelFrame] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)

    def stats_since(self, wall: float) -> list[dict[str, Any]]:
        """Snapshots published after ``wall`` (time.time()): by a fog started after it."""
        return [x for x in self.stats if x["time"] > wall]


@contextlib.asynccontextmanager
async def _watch(mqtt_url: str, fed: str, fog: str, name: str) -> AsyncIterator[_Watch]:
    seen = _Watch()
    s = FogSettings.load(fog_id="x", mqtt={"url": mqtt_url}).mqtt
    async with MqttTransport(s, client_id=f"{name}-{fed}") as mqtt:
        await mqtt.subscribe(topics.model(fed, fog))
        await mqtt.subscribe(topics.stats(fed, fog))

        async def loop() -> None:
            async for m in mqtt.messages():
                if m.topic.endswith("/stats"):
                    seen.stats.append(json.loads(m.payload))
                    continue
                frame = decode_frame(m.payload)
                if isinstance(frame, ModelFrame):
                    seen.models.append(frame)

        task = asyncio.create_task(loop())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _fog_env(pki: Provisioned, fed: str, fog: str, mqtt_url: str, bootstrap: str,
             spool: Path, **extra: str) -> dict[str, str]:
    """The environment of a provisioned fog run as ``hierfl fog`` (a child process)."""
    kit = pki.fog_kit(fog)
    return {
        "HIERFL_SECURITY__KEY_FILE": str(kit / "signing.key"),
        "HIERFL_SECURITY__TRUST_BUNDLE": str(pki.trust_bundle),
        "HIERFL_SECURITY__STATE_DIR": str(kit / "state"),
        "HIERFL_FEDERATION": fed, "HIERFL_FOG_ID": fog,
        "HIERFL_MQTT__URL": mqtt_url, "HIERFL_KAFKA__BOOTSTRAP": bootstrap,
        "HIERFL_SPOOL_DIR": str(spool), "HIERFL_ROUND_TIMEOUT_S": "300",
        "HIERFL_RESUME_WAIT_S": "0.5",
        "COLUMNS": "250",  # rich's log lines: one line each (the checks collapse wraps anyway)
        **extra,
    }


def _logged(log: Path) -> str:
    """The child's log with whitespace collapsed (rich wraps long lines)."""
    return " ".join(log.read_text().split())


async def test_fog_killed_after_forwarding_resumes_as_forwarded(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    """SIGKILL a fog after it closed its cloud round and forwarded the aggregate, before the
    next global model: restarted, it is *forwarded* (it sends the very same aggregate bytes
    again from its spool) and refuses updates for the finished round.

    Old behaviour: nothing of the forwarded aggregate was kept; the restarted fog resumed from
    its retained model into state ``collecting`` at the same seq, accepted updates for the
    finished round (n2's here) and would have sent a second, different aggregate for v0, which
    the cloud refuses as a duplicate (those updates lost). South is configured but never runs,
    so the cloud (min_fogs = 2) stays on v0 and no newer global model ends the window.
    """
    fed = unique_id
    topo = Topology({"north": ["n0", "n1", "n2"], "south": ["s0"]})
    write_initial(tmp_path / "init.npz")
    pki = provision_topo(tmp_path / "pki", fed, topo)
    cloud_s, _, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, fed, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=1, pki=pki, cloud_overrides={"round_timeout_s": 300},
    )
    spool = tmp_path / "spool"
    env = _fog_env(pki, fed, "north", mqtt_broker.url, kafka_broker.bootstrap, spool,
                   HIERFL_MIN_UPDATES="2")
    log = tmp_path / "fog.log"
    cloud = CloudService(cloud_s)
    n0, n1, n2 = (EdgeClient(s, tiny_task(i)) for i, s in enumerate(edge_s[:3]))
    aggs: list[bytes] = []

    async def capture() -> None:
        async with KafkaConsumerTransport(KafkaSettings(bootstrap=kafka_broker.bootstrap),
                                          topics.aggregates(fed), client_id=f"agg-{fed}",
                                          start="earliest") as c:
            async for m in c.messages():
                if m.payload is not None:
                    aggs.append(m.payload)  # noqa: PERF401

    fog = _no_torch_cli("fog", env=env, log=log)
    capturer: asyncio.Task[None] | None = None
    try:
        async with running(cloud), _watch(mqtt_broker.url, fed, "north", "watch") as seen:
            async with running(n0, n1):
                await wait_for(lambda: any(
                    x["state"] == "forwarded" and x["counters"].get("aggregates_forwarded")
                    for x in seen.stats), 60, "north to forward its v0 aggregate")
            capturer = asyncio.create_task(capture())
            await wait_for(lambda: len(aggs) >= 1, 60, "the aggregate on Kafka")
            await wait_for(lambda: cloud.round.reported == ("north",), 60,
                           "the cloud to hold north's aggregate")
            _kill(fog)                      # closed and forwarded; no v1 yet (south is missing)
            stored = spool / "forwarded-v0.agg"
            assert stored.exists(), sorted(p.name for p in spool.iterdir())
            assert stored.read_bytes() == aggs[0]   # written before it was sent

            restarted = time.time()
            fog = _no_torch_cli("fog", env=env, log=log)
            await wait_for(lambda: bool(seen.stats_since(restarted)), 60,
                           "the restarted fog's first stats")
            first = seen.stats_since(restarted)[0]
            assert (first["version"], first["state"]) == (0, "forwarded"), first
            # the same bytes again, not a new aggregate of a re-collected round
            await wait_for(lambda: len(aggs) >= 2, 60, "the aggregate sent again")
            # n2 trains on the (re-published) model of the finished round: refused
            async with running(n2):
                await wait_for(lambda: n2.updates_sent >= 1, 60, "n2's update")
                await wait_for(lambda: "rejected input from edge n2: validation.stale"
                               in _logged(log), 60, "n2's update to be refused as stale")
            assert stored.exists()          # kept while forwarded
            assert fog.poll() is None, log.read_text()
            assert all(x["counters"].get("accepted", 0) == 0
                       for x in seen.stats_since(restarted)), seen.stats_since(restarted)
            assert all(x["state"] == "forwarded" for x in seen.stats_since(restarted))
            assert cloud.version == 0
            assert cloud.round.reported == ("north",)
    finally:
        if capturer is not None:
            capturer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await capturer
        _kill(fog, signal.SIGTERM)
    assert set(aggs) == {stored.read_bytes()}, "a different aggregate for v0 reached Kafka"
    text = _logged(log)
    assert "the aggregate for v0 was closed before the restart; sending it again" in text
    assert text.count("fog round 1 of v0 closed") == 1, text


async def test_fog_resumes_from_its_spooled_model_when_the_broker_lost_it(
    kafka_broker, unique_id, tmp_path
):
    """The fog writes each fog model to its spool (``fog-model.hfm``) before publishing it:
    killed at (v0, seq 2) and restarted against an MQTT broker that restarted without
    persistence (the retained model is gone), it resumes at v0 seq 2 with the same weights.

    Old behaviour: the fog resumed only from the retained model; with none it started a fresh
    cycle of v0 at seq 1 from the global weights, dropping its first fog round (k2 = 2).
    """
    fed = unique_id
    topo = Topology({"north": ["n0", "n1"]})
    write_initial(tmp_path / "init.npz")
    pki = provision_topo(tmp_path / "pki", fed, topo)
    port = free_port()
    broker = MqttBroker(port=port, startup_timeout_s=60).start()
    fog = None
    try:
        cloud_s, _, edge_s = settings_for(
            broker.url, kafka_broker.bootstrap, fed, topo, tmp_path / "store",
            tmp_path / "init.npz", versions=1, pki=pki,
            cloud_overrides={"round_timeout_s": 300},
        )
        spool = tmp_path / "spool"
        env = _fog_env(pki, fed, "north", broker.url, kafka_broker.bootstrap, spool,
                       HIERFL_MIN_UPDATES="2", HIERFL_K2="2")
        log = tmp_path / "fog.log"
        cloud = CloudService(cloud_s)
        # one update each: the first fog round closes, the second never does
        edges = [EdgeClient(s.model_copy(update={"max_rounds": 1}), tiny_task(i))
                 for i, s in enumerate(edge_s)]
        fog = _no_torch_cli("fog", env=env, log=log)
        async with running(cloud):
            async with _watch(broker.url, fed, "north", "watch1") as before:
                async with running(*edges):
                    await wait_for(lambda: any(m.seq == 2 for m in before.models), 60,
                                   "the fog model of (v0, seq 2)")
            (seq2,) = [m for m in before.models if m.seq == 2]
            assert (seq2.version, seq2.fog_round) == (0, 1)
            _kill(fog)
            assert (spool / "fog-model.hfm").exists()
            broker.stop()                   # in memory only: the retained model is lost
            broker = MqttBroker(port=port, startup_timeout_s=60).start()
            async with _watch(broker.url, fed, "north", "watch2") as after:
                await asyncio.sleep(0.3)
                assert not after.models     # nothing retained survived the restart
                fog = _no_torch_cli("fog", env=env, log=log)
                await wait_for(lambda: bool(after.models), 60, "the restarted fog's model")
                model = after.models[0]
                assert (model.version, model.seq, model.fog_round) == (0, 2, 1), (
                    model.version, model.seq, model.fog_round)
                np.testing.assert_array_equal(model.weights, seq2.weights)
                await wait_for(lambda: bool(after.stats), 60, "the restarted fog's stats")
                assert (after.stats[-1]["version"], after.stats[-1]["seq"],
                        after.stats[-1]["state"]) == (0, 2, "collecting")
                assert fog.poll() is None, log.read_text()
            assert cloud.version == 0
        assert "resumed v0 seq 2" in _logged(log)
    finally:
        if fog is not None:
            _kill(fog, signal.SIGTERM)
        broker.stop()


class _SlowTask:
    """An edge task whose training takes ``delay_s`` longer (a slow device)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def build_model(self) -> Any:
        return self.inner.build_model()

    def train(self, model: Any, epochs: int) -> Any:
        time.sleep(self.delay_s)  # runs in a worker thread (hierfl.offload)
        return self.inner.train(model, epochs)


async def test_slow_edge_is_not_made_stale_by_skipped_rounds(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    """The edge trains 3 s, the fog's round deadline is 1 s (quorum 1, max_staleness 0): the
    fog skips rounds while the edge trains, each skip re-publishing the same weights under a
    new seq. The edge's one update, trained from an earlier seq of that same model, is
    accepted by a later round and closes it, and the cloud makes v1 from it.

    Old behaviour: staleness counted seqs, so an update from seq q arriving while the fog
    collected seq >= q + 1 was refused as stale (``validation.stale``); an edge slower than
    the deadline was refused forever (here: its one update is refused and v1 never comes).
    """
    fed = unique_id
    topo = Topology({"north": ["n0"]})
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, fed, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=1,
        fog_overrides={"round_timeout_s": 1.0, "min_updates": 1, "quorum": 1,
                       "max_staleness": 0},
    )
    cloud = CloudService(cloud_s)
    (fog,) = make_fogs(fog_s)
    edge = EdgeClient(edge_s[0].model_copy(update={"max_rounds": 1}),
                      _SlowTask(tiny_task(0), 3.0))
    async with (spy_updates(mqtt_broker.url, fed, ["north"]) as spy,
                _watch(mqtt_broker.url, fed, "north", "watch") as seen):
        async with running(cloud, fog, edge):
            await wait_for(cloud.finished.is_set, 60, "v1 from the slow edge's update")
    (update,) = spy.updates
    assert update.base_version == 0
    # With k2 = 1 the round that took the update was the last of v0 to publish a fog model:
    # a later seq than the update's (the fog skipped rounds while the edge trained).
    closed_at = max(m.seq for m in seen.models if m.version == 0)
    assert closed_at > update.base_seq, (closed_at, update.base_seq)
    assert fog.metrics.counters["rounds_skipped"] >= closed_at - update.base_seq
    assert not fog.metrics.rejected.get("validation.stale"), fog.metrics.rejected
    (agg,) = [a for a in fog.forwarded if a.base_version == 0]
    assert agg.contributors == ("n0",)
    store = ModelStore(tmp_path / "store")
    assert store.versions() == [0, 1]
    assert store.load(1).meta["fogs"]["north"]["contributors"] == ["n0"]
    np.testing.assert_allclose(
        store.load(1).weights,
        expected_next(store.load(0).weights.astype(np.float64), [update], 1),
        rtol=1e-5, atol=1e-6,
    )
