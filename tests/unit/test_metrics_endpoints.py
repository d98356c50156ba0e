"""The monitoring endpoints (hierfl/health.py) without brokers: status codes, the /readyz
body, the bind address, a port in use, an edge without prometheus-client, the edge hooks."""

from __future__ import annotations

import asyncio
import json
import socket
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hierfl import health
from hierfl.config import EdgeSettings, FogSettings
from hierfl.edge.hooks import ModelHooks
from hierfl.errors import ConfigError
from hierfl.health import MonitorServer, monitoring, stall_after
from hierfl.metrics import ServiceMetrics


async def _get(host: str, port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_status_codes_follow_connection_and_progress() -> None:
    now = [0.0]
    m = ServiceMetrics("fog", "north", clock=lambda: now[0])
    m.watch([("mqtt", "mqtt://b:1883")], lambda: ready.is_set())
    ready = asyncio.Event()
    server = MonitorServer(m, ready, host="127.0.0.1", port=0, stall_after_s=90.0)
    await server.start()
    try:
        port = server.port
        assert await _get("127.0.0.1", port, "/healthz") == (200, b"ok\n")
        status, body = await _get("127.0.0.1", port, "/readyz")
        doc = json.loads(body)
        assert status == 503 and doc["ready"] is False and doc["connected"] is False
        assert doc["reasons"] == ["not connected to mqtt mqtt://b:1883"]
        ready.set()
        status, body = await _get("127.0.0.1", port, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        now[0] = 91.0  # no progress for longer than the stall limit
        status, body = await _get("127.0.0.1", port, "/readyz")
        doc = json.loads(body)
        assert status == 503 and doc["stalled"] is True and doc["connected"] is True
        assert doc["reasons"][0].startswith("stalled: no progress for 91 s")
        m.inc("aggregates_forwarded")  # progress
        assert (await _get("127.0.0.1", port, "/readyz"))[0] == 200
        status, body = await _get("127.0.0.1", port, "/metrics")
        assert status == 200
        assert b'hierfl_broker_connected{broker="mqtt",id="north",tier="fog"' in body
        assert b"hierfl_aggregates_forwarded_total" in body
        assert (await _get("127.0.0.1", port, "/healthz?x=1"))[0] == 200
        assert (await _get("127.0.0.1", port, "/nope"))[0] == 404
        assert (await _get("127.0.0.1", port, "/metrics", "POST"))[0] == 405
        status, body = await _get("127.0.0.1", port, "/readyz", "HEAD")
        assert status == 200 and body == b""
        # junk instead of a request line: 400, and the server goes on
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"garbage\r\n\r\n")
        assert (await asyncio.wait_for(r.read(), 10)).startswith(b"HTTP/1.1 400")
        w.close()
        assert (await _get("127.0.0.1", port, "/healthz"))[0] == 200
    finally:
        await server.close()


def _service(settings: Any, tier: str) -> Any:
    return SimpleNamespace(settings=settings, metrics=ServiceMetrics(tier, "x"),
                           ready=asyncio.Event())


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def test_the_bind_address_is_honoured() -> None:
    port = _free_port("127.0.0.2")
    s = FogSettings.load(fog_id="north", metrics_port=port, monitoring={"bind": "127.0.0.2"})
    async with monitoring(_service(s, "fog")) as server:
        assert server is not None
        assert (await _get("127.0.0.2", port, "/healthz"))[0] == 200
        with pytest.raises(ConnectionRefusedError):  # nothing listens on 127.0.0.1:port
            await _get("127.0.0.1", port, "/healthz")
    with pytest.raises(ConnectionRefusedError):  # closed with the block
        await _get("127.0.0.2", port, "/healthz")


async def test_default_bind_is_loopback_and_no_port_serves_nothing() -> None:
    assert FogSettings.load(fog_id="f").monitoring.bind == "127.0.0.1"
    async with monitoring(_service(FogSettings.load(fog_id="f"), "fog")) as server:
        assert server is None


async def test_a_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = EdgeSettings.load(fog_id="f", edge_id="e", metrics_port=port)
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            async with monitoring(_service(s, "edge")):
                pass


def test_stall_limits() -> None:
    assert stall_after(FogSettings.load(fog_id="f", round_timeout_s=20)) == 60
    assert stall_after(FogSettings.load(fog_id="f", round_timeout_s=20,
                                        monitoring={"stall_rounds": 2})) == 40
    assert stall_after(FogSettings.load(fog_id="f", monitoring={"stall_after_s": 7})) == 7
    assert stall_after(EdgeSettings.load(fog_id="f", edge_id="e")) is None
    assert stall_after(EdgeSettings.load(fog_id="f", edge_id="e",
                                         monitoring={"stall_after_s": 5})) == 5
    with pytest.raises(ConfigError, match="bind"):
        FogSettings.load(fog_id="f", monitoring={"bind": ""})


def test_broker_urls_lose_their_credentials() -> None:
    s = FogSettings.load(fog_id="f", mqtt={"url": "mqtt://user:secret@broker:1883"})
    assert health.brokers(s)[0] == ("mqtt", "mqtt://broker:1883")


async def test_without_prometheus_client_metrics_answers_503(monkeypatch) -> None:
    def missing(_m: Any) -> Any:
        raise ImportError("no prometheus_client")

    monkeypatch.setattr(health, "registry", missing)
    ready = asyncio.Event()
    ready.set()
    server = MonitorServer(ServiceMetrics("edge", "e"), ready, host="127.0.0.1", port=0,
                           stall_after_s=None)
    await server.start()
    try:
        assert (await _get("127.0.0.1", server.port, "/metrics"))[0] == 503
        assert (await _get("127.0.0.1", server.port, "/readyz"))[0] == 200
    finally:
        await server.close()


async def test_hooks_are_called_and_their_failures_counted() -> None:
    m = ServiceMetrics("edge", "e")
    seen: list[tuple[int, int]] = []

    async def on_model(version: int, weights: Any) -> None:
        seen.append((version, weights.size))

    hooks = ModelHooks("edge e", m, on_model=on_model, evaluate=lambda model: {"acc": 0.5})
    await hooks.model_arrived(3, np.zeros(5, np.float32))
    assert seen == [(3, 5)]
    assert hooks.run_evaluate(3, object()) == {"acc": 0.5}
    assert m.evaluation == {"acc": 0.5} and m.gauges["evaluated_version"] == 3

    def broken(_v: int, _w: Any) -> None:
        raise RuntimeError("boom")

    bad = ModelHooks("edge e", m, on_model=broken, evaluate=lambda model: {"acc": float("nan")})
    await bad.model_arrived(4, np.zeros(1, np.float32))  # does not raise
    assert bad.run_evaluate(4, object()) is None
    bad.evaluate = lambda model: {"bad name!": 1.0}
    assert bad.run_evaluate(4, object()) is None
    bad.evaluate = lambda model: [0.5]
    assert bad.run_evaluate(4, object()) is None
    assert m.counters["hook_errors"] == 4
    assert m.evaluation == {"acc": 0.5}  # a failed evaluation leaves the last good one
    assert ModelHooks("edge e", m).run_evaluate(1, object()) is None
