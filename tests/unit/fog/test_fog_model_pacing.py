"""What the fog tells its global models consumer (FrameConsumer.expect, kafka.fetch_wait_due_ms):
a model is due before the first one and from the moment the fog has an aggregate to forward
until the next model arrives; not while its edges train. The cloud always expects aggregates.
A federation on the in-memory brokers, three cloud rounds."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np

from hierfl.cloud.service import CloudService
from hierfl.config import CloudSettings, EdgeSettings, FogSettings
from hierfl.edge.client import EdgeClient
from hierfl.edge.result import TrainResult
from hierfl.edge.vector import VectorModel
from hierfl.fog.round import FogState
from hierfl.fog.service import FogService
from hierfl.transport.factory import MemoryTransports
from hierfl.transport.memory_kafka import MemoryKafkaBroker, MemoryKafkaConsumer
from hierfl.transport.memory_mqtt import MemoryMqttBroker


class _Task:
    def build_model(self) -> VectorModel:
        return VectorModel(np.zeros(4, np.float32))

    def train(self, model: VectorModel, epochs: int) -> TrainResult:
        model.weights += 0.01
        return TrainResult(num_samples=1, metrics={})


class _Pacing(MemoryTransports):
    """Memory transports whose consumers log every expect() with the fog's state then."""

    def __init__(self, fog: list[FogService], log: list[tuple[str, bool, object]]) -> None:
        super().__init__(MemoryMqttBroker(), MemoryKafkaBroker())
        self.fog, self.log = fog, log

    def consumer(self, settings, topic, **kw):  # the factory's signature
        c = super().consumer(settings, topic, **kw)
        name = kw["client_id"]
        real = c.expect

        def expect(due: bool) -> None:
            state = self.fog[0].round.state if self.fog and "fog" in name else None
            self.log.append((name, due, state))
            real(due)

        c.expect = expect  # type: ignore[method-assign]
        return c


async def test_the_fog_expects_a_model_only_when_one_is_due(tmp_path: Path) -> None:
    np.savez(tmp_path / "init.npz", w=np.zeros(4, np.float32))
    off = {"signing": "off"}
    log: list[tuple[str, bool, object]] = []
    fogs: list[FogService] = []
    t = _Pacing(fogs, log)
    cloud = CloudService(CloudSettings.load(
        federation="f", fogs=["a"], store_dir=tmp_path / "store",
        initial_model=tmp_path / "init.npz", security=off, kafka={"fetch_wait_due_ms": 10}),
        transports=t)
    fog = FogService(FogSettings.load(federation="f", fog_id="a", security=off,
                                      kafka={"fetch_wait_due_ms": 10}), transports=t)
    fogs.append(fog)
    edges = [EdgeClient(EdgeSettings.load(federation="f", fog_id="a", edge_id=f"e{i}",
                                          security=off), _Task(), transports=t)
             for i in range(2)]
    tasks = [asyncio.create_task(s.run()) for s in (cloud, fog, *edges)]
    try:
        async with asyncio.timeout(30):
            while cloud.version < 3:
                await asyncio.sleep(0.01)
    finally:
        for s in (cloud, fog, *edges):
            s.stop()
        await asyncio.wait(tasks, timeout=10)
    cloud_calls = [due for name, due, _ in log if "cloud" in name]
    fog_calls = [(due, state) for name, due, state in log if "fog" in name]
    assert cloud_calls == [True]
    dues = [due for due, _ in fog_calls]
    # due before the first model, then per round: not due (edges train), due (forwarding)
    assert dues[0] is True and len(dues) >= 1 + 2 * 2
    assert all(a != b for a, b in itertools.pairwise(dues))  # told only on a change
    for due, state in fog_calls[1:]:
        # "due" is said with an aggregate to send (the round still collecting or forwarded);
        # "not due" once the new model opened a round
        assert due or state is FogState.COLLECTING


def test_the_in_memory_consumer_takes_the_hint() -> None:
    c = MemoryKafkaConsumer(MemoryKafkaBroker(), "t", client_id="c")
    c.expect(True)
    c.expect(False)  # a no-op there: nothing polls
