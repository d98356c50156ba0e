"""Helpers for integration tests: a tiny torch task and in-process tiers on real brokers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hierfl import topics
from hierfl.config import CloudSettings, EdgeSettings, FogSettings
from hierfl.edge import EdgeClient, SupervisedTask
from hierfl.fog.service import FogService
from hierfl.model.torch_adapter import model_layout, model_to_vector
from hierfl.provision import ProjectSpec, Provisioned, provision
from hierfl.transport.mqtt import MqttTransport
from hierfl.wire import UpdateFrame, decode_frame


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


def tiny_task(index: int, n: int | None = None, model: Any = tiny_model) -> SupervisedTask:
    """A non-IID classification task: each edge holds a different number of samples."""
    rng = np.random.default_rng(100 + index)
    n = n or 10 + 7 * index
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * (index % 3) > 0).astype(np.int64) + (x[:, 2] > 1)
    return SupervisedTask(model, torch.from_numpy(x), torch.from_numpy(y), lr=0.1,
                          batch_size=8, seed=index)


def write_initial(path: Path, model: Callable[[], torch.nn.Module] = tiny_model) -> np.ndarray:
    m = model()
    vec = model_to_vector(m)
    layout = model_layout(m)
    named = {}
    pos = 0
    for e in layout:
        named[e.name] = vec[pos : pos + e.size].reshape(e.shape)
        pos += e.size
    np.savez(path, **named)
    return vec


@dataclass
class Topology:
    """fog id -> list of edge ids."""

    fogs: dict[str, list[str]]

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(f, e) for f, es in self.fogs.items() for e in es]


def six_edges() -> Topology:
    return Topology({"north": ["n0", "n1", "n2"], "south": ["s0", "s1", "s2"]})


@dataclass
class Spy:
    """A separate MQTT subscriber recording every update frame edges published."""

    updates: list[UpdateFrame] = field(default_factory=list)
    raw_count: int = 0


@contextlib.asynccontextmanager
async def spy_updates(mqtt_url: str, fed: str, fogs: list[str]) -> AsyncIterator[Spy]:
    spy = Spy()
    s = FogSettings.load(fog_id="spy", federation=fed, mqtt={"url": mqtt_url}).mqtt
    async with MqttTransport(s, client_id=f"spy-{fed}") as mqtt:
        for fog in fogs:
            await mqtt.subscribe(topics.update_filter(fed, fog))

        async def loop() -> None:
            async for m in mqtt.messages():
                spy.raw_count += 1
                with contextlib.suppress(Exception):
                    f = decode_frame(m.payload)
                    if isinstance(f, UpdateFrame):
                        spy.updates.append(f)

        task = asyncio.create_task(loop())
        try:
            yield spy
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def provision_topo(folder: Path, fed: str, topo: Topology) -> Provisioned:
    """Signing keys and trust files (no TLS) for every party of ``topo``, made by
    ``hierfl provision``'s API."""
    spec = ProjectSpec(federation=fed, fogs={f: tuple(es) for f, es in topo.fogs.items()})
    return provision(spec, folder, tls=False)


def security_for(prov: Provisioned | None, party: str) -> dict[str, Any]:
    """The ``security`` settings of ``party`` from its kit (signatures off without one)."""
    if prov is None:
        return {"signing": "off"}
    kit = prov.kit(party)
    sec: dict[str, Any] = {"signing": "required", "key_file": kit / "signing.key",
                           "trust_bundle": prov.trust_bundle,
                           "revocation_list": prov.revocation_list}
    if party.startswith("fog/"):
        sec["state_dir"] = kit / "state"
    return sec


def settings_for(
    mqtt_url: str,
    bootstrap: str,
    fed: str,
    topo: Topology,
    store: Path,
    initial: Path,
    *,
    versions: int,
    k2: int = 1,
    fog_overrides: dict[str, Any] | None = None,
    cloud_overrides: dict[str, Any] | None = None,
    signed: bool = True,
    pki: Provisioned | None = None,
) -> tuple[CloudSettings, list[FogSettings], list[EdgeSettings]]:
    """Settings of a whole federation; signed by default, with keys provisioned next to the
    store (``pki``, or a new ``pki-<fed>`` folder)."""
    if signed and pki is None:
        pki = provision_topo(store.parent / f"pki-{fed}", fed, topo)
    prov = pki if signed else None
    common: dict[str, Any] = {"federation": fed}
    cloud = CloudSettings.load(**{
        **common, "security": security_for(prov, "cloud"),
        "kafka": {"bootstrap": bootstrap}, "fogs": list(topo.fogs),
        "min_fogs": len(topo.fogs), "store_dir": store, "initial_model": initial,
        "max_versions": versions, "round_timeout_s": 30, **(cloud_overrides or {}),
    })
    fogs = [
        FogSettings.load(**{
            **common, "fog_id": f, "mqtt": {"url": mqtt_url}, "kafka": {"bootstrap": bootstrap},
            "security": security_for(prov, f"fog/{f}"),
            "min_updates": len(es), "round_timeout_s": 30, "k2": k2, "resume_wait_s": 0.3,
            # FedAvg, so tests can check the aggregate against numpy; the fog's default rule
            # (clipped_trimmed_mean) has tests of its own
            "aggregator": "fedavg",
            **(fog_overrides or {}),
        })
        for f, es in topo.fogs.items()
    ]
    edges = [
        EdgeSettings.load(**common, fog_id=f, edge_id=e, mqtt={"url": mqtt_url},
                          security=security_for(prov, f"edge/{f}/{e}"))
        for f, e in topo.edges
    ]
    return cloud, fogs, edges


@contextlib.asynccontextmanager
async def running(*services: Any) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(s.run()) for s in services]
    try:
        yield tasks
    finally:
        for s in services:
            s.stop()
        _, pending = await asyncio.wait(tasks, timeout=10)
        for t in pending:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def wait_for(cond: Any, timeout: float, what: str = "condition") -> None:
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def make_edges(edge_settings: list[EdgeSettings]) -> list[EdgeClient]:
    return [EdgeClient(s, tiny_task(i)) for i, s in enumerate(edge_settings)]


def make_fogs(fog_settings: list[FogSettings]) -> list[FogService]:
    return [FogService(s) for s in fog_settings]


def first_per_edge(updates: list[Any], version: int) -> list[Any]:
    """Each edge's first update against ``version``'s newest fog model, by edge id, in the
    spy's order, which is the fog's (MQTT keeps each publisher's order for every subscriber).
    The fog folds the first copy an edge sends for a model and refuses a second; after a
    restart an edge may answer a fog model twice (the resumed fog publishes it again) or an
    older one first (refused)."""
    newest = max(u.base_seq for u in updates if u.base_version == version)
    out: dict[str, Any] = {}
    for u in updates:
        if u.base_version == version and u.base_seq == newest:
            out.setdefault(u.edge_id, u)
    return [out[e] for e in sorted(out)]
