"""The three tiers are one shape (hierfl.service.Service): what the CLI and the simulator run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from hierfl.cloud.service import CloudService
from hierfl.config import CloudSettings, EdgeSettings, FogSettings
from hierfl.edge.client import EdgeClient
from hierfl.edge.result import TrainResult
from hierfl.edge.vector import VectorModel
from hierfl.fog.service import FogService
from hierfl.service import Service
from hierfl.transport.factory import BrokerTransports, MemoryTransports
from hierfl.transport.memory_kafka import MemoryKafkaBroker
from hierfl.transport.memory_mqtt import MemoryMqttBroker


class _Task:
    def build_model(self) -> VectorModel:
        return VectorModel(np.zeros(4, np.float32))

    def train(self, model: VectorModel, epochs: int) -> TrainResult:
        return TrainResult(num_samples=1, metrics={})


def services(tmp_path: Path, transports: MemoryTransports | None = None) -> list[Service]:
    np.savez(tmp_path / "init.npz", w=np.zeros(4, np.float32))
    off = {"signing": "off"}  # an unprovisioned local run (signatures are the default)
    cloud = CloudService(CloudSettings.load(
        federation="f", fogs=["a"], store_dir=tmp_path / "store",
        initial_model=tmp_path / "init.npz", security=off), transports=transports)
    fog = FogService(FogSettings.load(federation="f", fog_id="a", security=off),
                     transports=transports)
    edge = EdgeClient(EdgeSettings.load(federation="f", fog_id="a", edge_id="e", security=off),
                      _Task(), transports=transports)
    return [cloud, fog, edge]


async def test_every_tier_is_a_service_with_real_brokers_by_default(tmp_path):
    for s in services(tmp_path):
        assert isinstance(s, Service)
        assert isinstance(s.transports, BrokerTransports)
        assert isinstance(s.ready, asyncio.Event) and not s.ready.is_set()


async def test_a_stopped_service_returns_from_run_on_memory_brokers(tmp_path):
    t = MemoryTransports(MemoryMqttBroker(), MemoryKafkaBroker())
    for s in services(tmp_path, t):
        assert isinstance(s, Service) and s.transports is t
        task = asyncio.create_task(s.run())
        await asyncio.wait_for(s.ready.wait(), 10)
        s.stop()
        await asyncio.wait_for(task, 10)
