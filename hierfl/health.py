"""A service's monitoring endpoints: ``/metrics``, ``/healthz`` and ``/readyz`` on one port.

``metrics_port`` turns them on (``monitoring.bind`` picks the address, 127.0.0.1 unless set):

==============  ===============================================================================
``/metrics``    the service's metrics (:mod:`hierfl.metrics`) in Prometheus' text format
``/healthz``    200 ``ok`` while the process's event loop runs (it is the loop that answers)
``/readyz``     200 when connected to every broker and not stalled, else 503; the JSON body
                says why (``connected``, ``progress_age_s``, ``stall_after_s``, ``reasons``)
==============  ===============================================================================

A fog or a cloud is *stalled* when it has not moved forward (an update or aggregate accepted,
an aggregate forwarded, a model received or made) for ``monitoring.stall_rounds`` times its
``round_timeout_s``; an edge only when ``monitoring.stall_after_s`` is set.

The server runs on the service's own asyncio loop, not in a thread: a loop that is blocked or
dead cannot answer ``/healthz``, so a probe's timeout is exactly the liveness check, without a
heartbeat to keep; readiness reads the loop's own state (the ``ready`` event) without locks.
A scrape costs the loop well under a millisecond for the few hundred series a service has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hierfl.errors import ConfigError
from hierfl.metrics import ServiceMetrics, registry

__all__ = ["MonitorServer", "monitoring", "stall_after"]

log = logging.getLogger(__name__)

_MAX_HEAD = 8192  # bytes of request line and headers read; more is refused
_READ_TIMEOUT_S = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def stall_after(settings: Any) -> float | None:
    """Seconds without progress after which the service is stalled (None: never)."""
    mon = settings.monitoring
    if mon.stall_after_s is not None:
        return float(mon.stall_after_s)
    timeout = getattr(settings, "round_timeout_s", None)
    return None if timeout is None else float(mon.stall_rounds * timeout)


def _redact(url: str) -> str:
    """``url`` without a password (broker URLs may carry credentials)."""
    parts = urlsplit(url)
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=host))


def brokers(settings: Any) -> list[tuple[str, str]]:
    """The brokers a service's settings name, as ``(section, url)``."""
    out = []
    if hasattr(settings, "mqtt"):
        out.append(("mqtt", _redact(settings.mqtt.url)))
    if hasattr(settings, "kafka"):
        out.append(("kafka", settings.kafka.bootstrap))
    return out


class MonitorServer:
    """The HTTP endpoints of one service, on its event loop.

    Args:
        metrics: the service's metrics.
        ready: set while the service is connected to every broker.
        host: address to bind.
        port: TCP port (0: any free port, see :attr:`port` once started).
        stall_after_s: seconds without progress that make the service not ready (None:
            never).
    """

    def __init__(self, metrics: ServiceMetrics, ready: asyncio.Event, *, host: str, port: int,
                 stall_after_s: float | None) -> None:
        self.metrics = metrics
        self.ready = ready
        self.host = host
        self.port = port
        self.stall_after_s = stall_after_s
        self._server: asyncio.Server | None = None
        try:
            self._registry: Any = registry(metrics)
        except ImportError:
            self._registry = None
            log.warning("%s %s: prometheus-client is not installed: /metrics answers 503 "
                        "(pip install prometheus-client); /healthz and /readyz work",
                        metrics.service, metrics.instance)

    async def start(self) -> None:
        """Listen.

        Raises:
            OSError: the address cannot be bound (in use, not local).
        """
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("%s %s: /metrics, /healthz and /readyz on http://%s:%d", self.metrics.service,
                 self.metrics.instance, self.host, self.port)

    async def close(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            close_clients = getattr(self._server, "close_clients", None)  # Python 3.13+
            if close_clients is not None:
                close_clients()
            await self._server.wait_closed()
            self._server = None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the service is ready, and why (the ``/readyz`` body)."""
        connected = self.ready.is_set()
        age = max(0.0, self.metrics.clock() - self.metrics.last_progress)
        reasons = []
        if not connected:
            names = ", ".join(f"{s} {u}" for s, u in self.metrics.brokers) or "its brokers"
            reasons.append(f"not connected to {names}")
        stalled = self.stall_after_s is not None and age > self.stall_after_s
        if stalled:
            reasons.append(f"stalled: no progress for {age:.0f} s (more than "
                           f"{self.stall_after_s:.0f} s)")
        return not reasons, {
            "ready": not reasons, "tier": self.metrics.service, "id": self.metrics.instance,
            "connected": connected, "stalled": stalled, "progress_age_s": round(age, 3),
            "stall_after_s": self.stall_after_s, "reasons": reasons,
        }

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """``(status, content type, body)`` for a request."""
        path = path.split("?", 1)[0]
        if path not in ("/metrics", "/healthz", "/readyz"):
            return 404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz, /readyz\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"GET or HEAD\n"
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/readyz":
            ok, body = self.readiness()
            return (200 if ok else 503), "application/json", json.dumps(body).encode() + b"\n"
        if self._registry is None:
            return 503, "text/plain; charset=utf-8", b"prometheus-client is not installed\n"
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # noqa: PLC0415

        return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body, method = await self._answer(reader)
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or said nothing: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, str]:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return 431, "text/plain; charset=utf-8", b"request head too large\n", "GET"
        if len(head) > _MAX_HEAD:
            return 431, "text/plain; charset=utf-8", b"request head too large\n", "GET"
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, "text/plain; charset=utf-8", b"bad request line\n", "GET"
        method, path = parts[0], parts[1]
        return (*self.respond(method, path), method)


@contextlib.asynccontextmanager
async def monitoring(service: Any) -> AsyncIterator[MonitorServer | None]:
    """Serve ``service``'s endpoints while the block runs, if its ``metrics_port`` is set.

    Also tells its metrics which brokers it uses (``hierfl_broker_connected``).

    Raises:
        ConfigError: the port cannot be bound (the service does not start without the
            endpoints it was told to serve).
    """
    s = service.settings
    service.metrics.watch(brokers(s), service.ready.is_set)
    service.metrics.stall_after_s = stall_after(s)
    if s.metrics_port is None:
        yield None
        return
    server = MonitorServer(service.metrics, service.ready, host=s.monitoring.bind,
                           port=s.metrics_port, stall_after_s=stall_after(s))
    try:
        await server.start()
    except OSError as exc:
        raise ConfigError(
            f"{s.tier} cannot serve its metrics on {s.monitoring.bind}:{s.metrics_port}: {exc} "
            "(metrics_port, monitoring.bind)") from exc
    try:
        yield server
    finally:
        await server.close()
