"""Counters every service keeps: accepted, rejected by reason, dropped, bytes, rounds.

Plain Python counters, cheap and always on; :func:`serve_prometheus` exposes them on an
HTTP port when ``prometheus-client`` is installed and a ``metrics_port`` is configured.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

__all__ = ["ServiceMetrics", "serve_prometheus"]

log = logging.getLogger(__name__)


class ServiceMetrics:
    """Thread-safe counters of one service (fog, cloud or edge).

    Args:
        service: label value, e.g. ``fog``.
        instance: id of this instance, e.g. the fog id.
    """

    def __init__(self, service: str, instance: str) -> None:
        self.service = service
        self.instance = instance
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}

    def inc(self, name: str, n: float = 1) -> None:
        """Add ``n`` to counter ``name``."""
        with self._lock:
            self.counters[name] += n  # type: ignore[assignment]

    def reject(self, reason: str) -> None:
        """Count one rejected input under its error's ``reason`` label."""
        with self._lock:
            self.rejected[reason] += 1

    def set(self, name: str, value: float) -> None:
        """Set gauge ``name``."""
        with self._lock:
            self.gauges[name] = value

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of every counter and gauge."""
        with self._lock:
            return {
                "service": self.service,
                "instance": self.instance,
                "counters": dict(self.counters),
                "rejected": dict(self.rejected),
                "gauges": dict(self.gauges),
            }


def serve_prometheus(metrics: ServiceMetrics, port: int) -> bool:
    """Expose ``metrics`` on ``127.0.0.1:port/metrics`` if prometheus-client is installed.

    Returns:
        True when the endpoint started.
    """
    try:
        from prometheus_client import start_http_server  # noqa: PLC0415
        from prometheus_client.core import (  # noqa: PLC0415
            REGISTRY,
            CounterMetricFamily,
            GaugeMetricFamily,
        )
    except ImportError:
        log.warning("metrics_port set but prometheus-client is not installed")
        return False

    class _Collector:
        def collect(self) -> Any:
            snap = metrics.snapshot()
            labels = ["service", "instance"]
            vals = [snap["service"], snap["instance"]]
            for name, v in snap["counters"].items():
                c = CounterMetricFamily(f"hierfl_{name}", name, labels=labels)
                c.add_metric(vals, v)
                yield c
            r = CounterMetricFamily("hierfl_rejected", "rejected inputs",
                                    labels=[*labels, "reason"])
            for reason, v in snap["rejected"].items():
                r.add_metric([*vals, reason], v)
            yield r
            for name, v in snap["gauges"].items():
                g = GaugeMetricFamily(f"hierfl_{name}", name, labels=labels)
                g.add_metric(vals, v)
                yield g

    REGISTRY.register(_Collector())  # type: ignore[arg-type]
    start_http_server(port, addr="127.0.0.1")
    return True
