"""A SecAgg+ region on a real MQTT broker: one fog driver and n lightweight edge drivers,
each with its own MQTT session and provisioned signing key (no torch: edges return a fixed
update), for tests/integration/test_secagg_*.py and benchmarks/secagg.py."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hierfl.config import MqttSettings
from hierfl.provision import ProjectSpec, provision
from hierfl.secagg.driver import EdgeSecAggDriver, FogSecAggDriver, StageDeadlines
from hierfl.security.trust import TrustStore, load_signing_key
from hierfl.transport.mqtt import MqttTransport
from hierfl.wire.signing import Signer

FOG = "north"


@dataclass
class Region:
    fog: FogSecAggDriver
    edges: dict[str, EdgeSecAggDriver]
    updates: dict[str, npt.NDArray[np.float64]]
    captured: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)


async def _pump(mqtt: MqttTransport, handle: Callable[[str, bytes], Any],
                tap: list[tuple[str, bytes]] | None = None) -> None:
    async for m in mqtt.messages():
        if tap is not None:
            tap.append((m.topic, m.payload))
        r = handle(m.topic, m.payload)
        if inspect.isawaitable(r):
            await r


def edge_ids(n: int) -> list[str]:
    return [f"e{i:02d}" for i in range(n)]


@contextlib.asynccontextmanager
async def region(
    url: str, fed: str, folder: Path, n: int, dim: int, *,
    stop_after: dict[str, str] | None = None, deadlines: StageDeadlines | None = None,
    clip_norm: float = 1.0, seed: int = 0, fog_class: type[FogSecAggDriver] = FogSecAggDriver,
    updates: dict[str, npt.NDArray[np.float64]] | None = None,
    tap_fog: bool = False, degree: int | None = None,
) -> AsyncIterator[Region]:
    """Provision a region of ``n`` edges, connect its fog and edges, and yield the drivers."""
    ids = edge_ids(n)
    prov = provision(ProjectSpec(federation=fed, fogs={FOG: tuple(ids)}), folder, tls=False)
    trust = TrustStore(prov.trust_bundle, fed)

    def signer(party: str) -> Signer:
        return Signer(party, load_signing_key(prov.kit(party) / "signing.key"), fed)

    rng = np.random.default_rng(seed)
    if updates is None:
        updates = {e: rng.normal(scale=0.3 / np.sqrt(dim), size=dim) for e in ids}
    settings = MqttSettings(url=url)
    async with contextlib.AsyncExitStack() as stack:
        fog_mqtt = await stack.enter_async_context(
            MqttTransport(settings, client_id=f"{fed}-fog"))

        async def fog_publish(topic: str, payload: bytes) -> None:
            await fog_mqtt.publish(topic, payload)

        fog = fog_class(federation=fed, fog=FOG, signer=signer(f"fog/{FOG}"), trust=trust,
                        publish=fog_publish, clip_norm=clip_norm, degree=degree,
                        deadlines=deadlines or StageDeadlines(10, 10, 10, 10))
        reg = Region(fog, {}, updates)
        for f in fog.filters():
            await fog_mqtt.subscribe(f)
        tasks = []
        tap: list[tuple[str, bytes]] | None = None
        if tap_fog:
            tap = reg.captured.setdefault("fog", [])
        tasks.append(asyncio.create_task(_pump(fog_mqtt, fog.handle, tap)))
        for i, e in enumerate(ids):
            mqtt = await stack.enter_async_context(
                MqttTransport(settings, client_id=f"{fed}-{e}"))

            def make_publish(m: MqttTransport) -> Callable[[str, bytes], Any]:
                async def publish(topic: str, payload: bytes) -> None:
                    await m.publish(topic, payload)
                return publish

            drv = EdgeSecAggDriver(
                federation=fed, fog=FOG, edge=e, signer=signer(f"edge/{FOG}/{e}"), trust=trust,
                publish=make_publish(mqtt), update=lambda b, e=e: updates[e],
                clip_norm=clip_norm, stop_after=(stop_after or {}).get(e),
                random_bytes=random.Random(seed * 1000 + i).randbytes,
            )
            for f in drv.filters():
                await mqtt.subscribe(f)
            reg.edges[e] = drv
            tasks.append(asyncio.create_task(_pump(mqtt, drv.handle)))
        try:
            yield reg
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
