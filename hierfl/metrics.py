"""What every service measures: counters, gauges and histograms, exposed to Prometheus.

:class:`ServiceMetrics` is plain Python, cheap and always on (no dependency: the edge may run
without ``prometheus-client``). Services count with :meth:`~ServiceMetrics.inc` and
:meth:`~ServiceMetrics.reject`, set gauges with :meth:`~ServiceMetrics.set` (or register a
callable read at scrape time with :meth:`~ServiceMetrics.gauge_fn`), and time stages with
:meth:`~ServiceMetrics.observe`; a :class:`~hierfl.timeline.Timeline` given
:meth:`~ServiceMetrics.on_span` feeds the stage and round histograms from the spans the
service records anyway.

:func:`registry` turns one service's metrics into its own ``prometheus_client``
``CollectorRegistry`` (never the global one: several services in one process, as in
``hierfl sim`` and the tests, do not collide). Names carry the ``hierfl_`` prefix and their
unit (``_total``, ``_bytes_total``, ``_seconds``); every series has the labels ``tier``
(``cloud``, ``fog``, ``edge``) and ``id`` (the federation, the fog id, the edge id). The
endpoints that serve them are in :mod:`hierfl.health`; docs/deployment.md lists every metric.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["BUCKETS", "ServiceMetrics", "registry"]

log = logging.getLogger(__name__)

#: histogram bucket bounds, seconds (a millisecond decode up to a ten-minute round)
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
           120.0, 300.0, 600.0)

# Counters that mean the service moved forward (readiness: a service without any for too
# long is stalled, hierfl.health).
_PROGRESS = {
    "fog": frozenset({"accepted", "aggregates_forwarded", "models_received"}),
    "cloud": frozenset({"accepted", "versions"}),
    "edge": frozenset({"updates_sent", "models_from_full", "models_from_delta"}),
}

# Byte counters, per tier: name -> (direction, stream). Everything else is hierfl_<name>_total.
_BYTES = {
    "fog": {"bytes_in": ("received", "updates"), "bytes_down": ("received", "models"),
            "bytes_up": ("sent", "aggregates"), "bytes_down_edges": ("sent", "models"),
            "bytes_down_stream": ("sent", "model_stream")},
    "cloud": {"bytes_in": ("received", "aggregates"), "bytes_down": ("sent", "models")},
    "edge": {"bytes_down": ("received", "models"), "bytes_up": ("sent", "updates")},
}

# Counters exported from the start (at 0), so that alert rules find them before they move.
_ALWAYS = {"cloud": ("quorum_missed", "versions"), "fog": ("fog_rounds", "rounds_skipped"),
           "edge": ("updates_sent",)}

# Gauges whose exported name differs from the service's key.
_GAUGE_NAMES = {"privacy_epsilon": "epsilon_spent"}


class _Histogram:
    """Cumulative bucket counts, their sum and count (Prometheus' histogram)."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last: +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(BUCKETS, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*BUCKETS, math.inf), self.buckets, strict=True):
            total += n
            out.append(("+Inf" if bound == math.inf else repr(bound), float(total)))
        return out


class ServiceMetrics:
    """Thread-safe counters, gauges and histograms of one service (fog, cloud or edge).

    Args:
        service: the tier, e.g. ``fog`` (the ``tier`` label).
        instance: id of this instance, e.g. the fog id (the ``id`` label).
        clock: monotonic clock, seconds (progress times).
    """

    def __init__(self, service: str, instance: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.instance = instance
        self.clock = clock
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter(dict.fromkeys(_ALWAYS.get(service, ()), 0))
        self.rejected: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}
        self.gauge_fns: dict[str, Callable[[], float | None]] = {}
        #: (histogram name, stage or "") -> observations
        self.histograms: dict[tuple[str, str], _Histogram] = {}
        #: brokers as (section, url): connected while ``connected()`` says so
        self.brokers: list[tuple[str, str]] = []
        self.connected: Callable[[], bool] = lambda: False
        #: seconds without progress that make the service stalled (hierfl.health), or None
        self.stall_after_s: float | None = None
        self.started = clock()
        #: when the service last moved forward (monotonic), see ``_PROGRESS``
        self.last_progress = self.started
        self.edges_seen: set[str] = set()
        #: the newest results of an edge's evaluate hook (hierfl.edge.hooks)
        self.evaluation: dict[str, float] = {}
        self._round_start: dict[int, float] = {}
        self._published: tuple[int, float] | None = None

    # --- what services call ---------------------------------------------------------------

    def inc(self, name: str, n: float = 1) -> None:
        """Add ``n`` to counter ``name``."""
        with self._lock:
            self.counters[name] += n  # type: ignore[assignment]
            if name in _PROGRESS.get(self.service, ()):
                self.last_progress = self.clock()

    def reject(self, reason: str) -> None:
        """Count one refused input under its error's ``reason`` label."""
        with self._lock:
            self.rejected[reason] += 1

    def set(self, name: str, value: float) -> None:
        """Set gauge ``name``."""
        with self._lock:
            self.gauges[name] = value

    def gauge_fn(self, name: str, fn: Callable[[], float | None]) -> None:
        """Gauge ``name`` is ``fn()``, read at every scrape (None: not exported)."""
        self.gauge_fns[name] = fn

    def seen(self, edge: str) -> None:
        """An update of ``edge`` was accepted (the ``edges_seen`` gauge)."""
        with self._lock:
            if len(self.edges_seen) < 100_000:
                self.edges_seen.add(edge)

    def watch(self, brokers: list[tuple[str, str]], connected: Callable[[], bool]) -> None:
        """The service's brokers (``("mqtt", url)``...) and whether its links are all up."""
        self.brokers = list(brokers)
        self.connected = connected

    def evaluated(self, version: int, results: dict[str, float]) -> None:
        """An edge's ``evaluate`` hook scored global ``version``: the ``evaluation`` gauges."""
        with self._lock:
            self.evaluation = dict(results)
            self.gauges["evaluated_version"] = version

    def observe(self, name: str, seconds: float, stage: str = "") -> None:
        """One observation of histogram ``name`` (``round`` or ``stage`` with its ``stage``)."""
        with self._lock:
            self._observe(name, seconds, stage)

    def _observe(self, name: str, seconds: float, stage: str = "") -> None:
        """:meth:`observe`, the lock held."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        h = self.histograms.get((name, stage))
        if h is None:
            h = self.histograms[(name, stage)] = _Histogram()
        h.observe(seconds)

    def on_span(self, name: str, version: int, start: float, end: float) -> None:
        """A span this service recorded (:class:`~hierfl.timeline.Timeline`'s observer).

        Spans of this tier (``fog.decode`` at a fog) become ``stage`` observations; instants
        (zero-length spans: a message arrived) are not. A round's duration is observed when
        its last stage ends: at a fog its first span to ``fog.forward``, at an edge
        ``edge.receive`` to ``edge.encode``, at the cloud one ``cloud.publish`` to the next.
        Thread-safe: spans are also recorded in worker threads (an encode's timing).
        """
        tier, _, stage = name.partition(".")
        if tier != self.service:
            return  # another tier's span carried here (an edge's, in its update)
        with self._lock:
            if end > start:
                self._observe("stage", end - start, stage)
            if tier == "cloud":
                if stage == "publish":
                    prev = self._published
                    if prev is not None and version > prev[0]:
                        self._observe("round", start - prev[1])
                    if prev is None or version > prev[0]:
                        self._published = (version, start)
                return
            first = self._round_start.setdefault(version, start)
            self._round_start[version] = min(first, start)
            while len(self._round_start) > 8:
                del self._round_start[min(self._round_start)]
            if (tier, stage) in (("fog", "forward"), ("edge", "encode")):
                self._observe("round", end - self._round_start.pop(version, start))

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of every counter and gauge, and each histogram's count."""
        with self._lock:
            return {
                "service": self.service,
                "instance": self.instance,
                "counters": dict(self.counters),
                "rejected": dict(self.rejected),
                "gauges": dict(self.gauges),
                "evaluation": dict(self.evaluation),
                "histograms": {f"{n}:{s}" if s else n: h.count
                               for (n, s), h in self.histograms.items()},
            }

    # --- exposition -----------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """The metric families of this service (prometheus-client's collector protocol).

        Raises:
            ImportError: prometheus-client is not installed.
        """
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        lv = [self.service, self.instance]
        labels = ["tier", "id"]
        fns = dict(self.gauge_fns)
        with self._lock:
            counters = dict(self.counters)
            rejected = dict(self.rejected)
            gauges = dict(self.gauges)
            hists = {k: (h.cumulative(), h.sum) for k, h in self.histograms.items()}
            edges = len(self.edges_seen)
            evaluation = dict(self.evaluation)
            progress_age = self.clock() - self.last_progress
        for name, fn in fns.items():
            try:
                value = fn()
            except Exception as exc:  # noqa: BLE001 - a gauge must not break the scrape
                log.debug("metrics: gauge %s: %s", name, exc)
                continue
            if value is not None:
                gauges[name] = float(value)

        accepted = CounterMetricFamily(
            "hierfl_updates_accepted", "Inputs accepted into a round (fog: edge updates, "
            "cloud: fog aggregates)", labels=labels)
        accepted.add_metric(lv, counters.pop("accepted", 0))
        yield accepted
        refused = CounterMetricFamily(
            "hierfl_updates_refused", "Inputs refused, by the reason of their error "
            "(hierfl/errors.py)", labels=[*labels, "reason"])
        for reason, n in sorted(rejected.items()):
            refused.add_metric([*lv, reason], n)
        yield refused
        moved = {"received": CounterMetricFamily(
                     "hierfl_received_bytes", "Bytes received, by stream",
                     labels=[*labels, "stream"]),
                 "sent": CounterMetricFamily(
                     "hierfl_sent_bytes", "Bytes sent, by stream", labels=[*labels, "stream"])}
        for name, (direction, stream) in _BYTES.get(self.service, {}).items():
            moved[direction].add_metric([*lv, stream], counters.pop(name, 0))
        yield from moved.values()
        reconnects = CounterMetricFamily(
            "hierfl_reconnects", "Reconnections to the brokers after a failure", labels=labels)
        reconnects.add_metric(lv, counters.pop("reconnects", 0))
        yield reconnects
        for name, n in sorted(counters.items()):
            if name.startswith("bytes_"):
                c = CounterMetricFamily(f"hierfl_{name[6:]}_bytes", name.replace("_", " "),
                                        labels=labels)
            else:
                c = CounterMetricFamily(f"hierfl_{name}", name.replace("_", " "), labels=labels)
            c.add_metric(lv, n)
            yield c

        up = GaugeMetricFamily("hierfl_broker_connected",
                               "1 while connected to this broker, else 0",
                               labels=[*labels, "broker", "url"])
        is_up = 1.0 if self.connected() else 0.0
        for section, url in self.brokers:
            up.add_metric([*lv, section, url], is_up)
        yield up
        age = GaugeMetricFamily("hierfl_progress_age_seconds",
                                "Seconds since the service last moved forward", labels=labels)
        age.add_metric(lv, max(0.0, progress_age))
        yield age
        if self.stall_after_s is not None:
            limit = GaugeMetricFamily("hierfl_stall_after_seconds", "Progress age beyond which "
                                      "the service is stalled (/readyz 503)", labels=labels)
            limit.add_metric(lv, self.stall_after_s)
            yield limit
        if self.service == "fog":
            seen = GaugeMetricFamily("hierfl_edges_seen", "Edges whose updates were accepted "
                                     "since the fog started", labels=labels)
            seen.add_metric(lv, edges)
            yield seen
        if evaluation:
            ev = GaugeMetricFamily("hierfl_evaluation", "The edge's evaluate hook on the "
                                   "newest model it received", labels=[*labels, "metric"])
            for name, value in sorted(evaluation.items()):
                ev.add_metric([*lv, name], value)
            yield ev
        for name, value in sorted(gauges.items()):
            g = GaugeMetricFamily(f"hierfl_{_GAUGE_NAMES.get(name, name)}",
                                  name.replace("_", " "), labels=labels)
            g.add_metric(lv, value)
            yield g

        helps = {"round": ("hierfl_round_duration_seconds", "Duration of a round"),
                 "stage": ("hierfl_stage_duration_seconds", "Duration of a round's stage")}
        for hname, (metric, text) in helps.items():
            family = HistogramMetricFamily(metric, text,
                                           labels=[*labels, "stage"] if hname == "stage"
                                           else labels)
            for (hn, stage), (buckets, total) in sorted(hists.items()):
                if hn == hname:
                    family.add_metric([*lv, stage] if hname == "stage" else lv, buckets, total)
            yield family

    def describe(self) -> list[Any]:
        """Nothing up front: the families depend on what was counted (no auto-describe)."""
        return []


def registry(metrics: ServiceMetrics) -> Any:
    """A ``prometheus_client.CollectorRegistry`` holding only ``metrics`` (not the global
    registry: services in one process stay apart).

    Raises:
        ImportError: prometheus-client is not installed.
    """
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    reg = CollectorRegistry(auto_describe=False)
    reg.register(metrics)  # type: ignore[arg-type]
    return reg
