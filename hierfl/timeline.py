"""Round timelines: where each round's time goes, measured by the tiers themselves.

Every tier records **spans** (a stage of a round: ``train``, ``aggregate``, ``publish``...)
on its own wall clock, stamped with the global version the round builds on, and sends them
up with what it sends anyway: an edge's spans ride in its update, a fog's (and its edges')
in its aggregate, both in the frame's meta section (wire format version 3, outside the
compressed body, so frame sizes do not depend on clock readings). The cloud, which closes
the round, joins them with its own into one :class:`RoundTimeline` per version: round time
from its own clock (publish of ``v`` to publish of ``v + 1``), a per-stage breakdown, and the
critical path. It appends each one as a JSON line to ``<store_dir>/timeline.jsonl`` (bounded
like the store: the last ``max_versions`` rounds) and, when the ``opentelemetry`` API is
installed (``pip install hierfl[otel]``) and ``telemetry.otel`` is on, emits the round as one
trace through it: an exporter, if any, is the operator's choice (``opentelemetry-sdk`` and its
OTLP exporter, set up by the program that embeds the cloud or by ``opentelemetry-instrument``).

Span names (party in brackets) and what they cover:

==================  =============================================================================
``edge.receive``    [edge] model message in (zero length: the instant it arrived)
``edge.decode``     [edge] verify + decode the model (or apply the model delta)
``edge.wait``       [edge] decoded, waiting for the trainer (only when it was busy)
``edge.train``      [edge] local training (k1 epochs)
``edge.encode``     [edge] delta, codec, sign
``fog.model_in``    [fog]  global model in from Kafka until decoded
``fog.publish``     [fog]  fan-out: encode (full + delta), spool, publish to the edges
``fog.update_in``   [fog]  one per edge: its update arrived (zero length), party = the edge
``fog.decode``      [fog]  one per edge: verify + decode its update, party = the edge
``fog.admit``       [fog]  one per edge: checks, spool write (fsync), into the round
``fog.aggregate``   [fog]  the robust rule over the round's updates
``fog.forward``     [fog]  encode + sign + spool + send the aggregate to Kafka
``cloud.aggregate_in``  [cloud] one per fog: its aggregate was read (zero length)
``cloud.decode``    [cloud] one per fog: verify + decode its aggregate
``cloud.combine``   [cloud] combine the fogs' aggregates into the new model
``cloud.checkpoint``    [cloud] model store write (fsync) and lineage
``cloud.publish``   [cloud] encode + sign + send the new global model
==================  =============================================================================

Clocks: spans of different machines are compared on their own clocks; on one host (``hierfl
sim``) they share one. Durations never depend on clock offsets; the critical path and the wire
times between tiers (``edge -> fog``: an update's ``fog.update_in`` minus its ``edge.encode`` end)
are only as good as the hosts' clock sync (NTP: milliseconds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hierfl.wire.frames import MAX_UPDATE_TIMING, TimingSpan

__all__ = ["STAGES", "RoundTimeline", "Span", "Timeline", "otel_available"]

log = logging.getLogger(__name__)

#: the stages of a round, in the order they run (the report's breakdown follows it)
STAGES = (
    "cloud.publish", "fog.model_in", "fog.publish", "edge.receive", "edge.decode", "edge.wait",
    "edge.train", "edge.encode", "fog.update_in", "fog.decode", "fog.admit", "fog.aggregate",
    "fog.forward", "cloud.aggregate_in", "cloud.decode", "cloud.combine", "cloud.checkpoint",
)


@dataclass(frozen=True, slots=True)
class Span:
    """One stage of round ``version`` run by ``party`` (``cloud``, a fog id, ``fog/edge``)."""

    name: str
    party: str
    version: int
    start: float
    end: float

    @property
    def duration(self) -> float:
        """Seconds the stage took."""
        return self.end - self.start

    def as_list(self) -> list[Any]:
        """``[name, party, start, end]`` (the JSON line's form; the version is the line's)."""
        return [self.name, self.party, round(self.start, 6), round(self.end, 6)]


class Timeline:
    """A tier's spans of its recent rounds, keyed by global version (bounded).

    Args:
        party: who records (``cloud``, the fog id, ``fog/edge``).
        keep: how many versions to keep (older ones are dropped first).
        clock: wall clock (seconds since the epoch).
        observer: called with ``(name, version, start, end)`` for every span added (the
            service's metrics: :meth:`hierfl.metrics.ServiceMetrics.on_span`).
    """

    def __init__(self, party: str, *, keep: int = 8, clock: Any = time.time,
                 observer: Callable[[str, int, float, float], None] | None = None) -> None:
        self.party = party
        self.keep = keep
        self.clock = clock
        self.observer = observer
        self._spans: dict[int, list[Span]] = {}

    def add(self, name: str, version: int | None, start: float, end: float | None = None,
            *, party: str | None = None) -> None:
        """Record a span (``end`` None: an instant)."""
        if version is None:
            return
        spans = self._spans.setdefault(version, [])
        if len(spans) >= 50_000:  # bounded even against a flood of one round
            return
        span = Span(name, party or self.party, version, start,
                    start if end is None else max(start, end))
        spans.append(span)
        if self.observer is not None:
            try:
                self.observer(name, version, span.start, span.end)
            except Exception as exc:  # noqa: BLE001 - metrics must never stop a round
                log.warning("timeline %s: span observer failed on %s: %s", self.party, name, exc)
        while len(self._spans) > self.keep:
            del self._spans[min(self._spans)]

    @contextlib.contextmanager
    def span(self, name: str, version: int | None, *, party: str | None = None) -> Iterator[None]:
        """Record the ``with`` block as a span of ``version``."""
        start = self.clock()
        try:
            yield
        finally:
            self.add(name, version, start, self.clock(), party=party)

    def spans(self, version: int) -> list[Span]:
        """The spans recorded for ``version`` (oldest first)."""
        return list(self._spans.get(version, ()))

    def take(self, version: int) -> list[Span]:
        """The spans of ``version``, forgotten here."""
        return self._spans.pop(version, [])

    def wire(self, version: int, *, own_party: str, limit: int = MAX_UPDATE_TIMING,
             take: bool = True) -> tuple[TimingSpan, ...]:
        """The spans of ``version`` as frame timing: the sender's own with party ``""``."""
        spans = self.take(version) if take else self.spans(version)
        return tuple(TimingSpan(s.name, "" if s.party == own_party else s.party, s.start, s.end)
                     for s in spans[-limit:])


def from_wire(timing: tuple[TimingSpan, ...], *, sender: str, version: int,
              prefix: str = "") -> list[Span]:
    """Frame timing -> spans: party ``""`` is ``sender``; others get ``prefix`` (a fog's
    edges, ``fog0/``)."""
    return [Span(t.name, sender if not t.party else f"{prefix}{t.party}", version, t.start,
                 t.end) for t in timing]


@dataclass
class RoundTimeline:
    """Round ``version`` -> ``version + 1`` as the cloud saw it (:func:`build`)."""

    version: int
    round_s: float | None
    spans: list[Span] = field(default_factory=list)

    def stages(self) -> dict[str, dict[str, float]]:
        """Per stage: how many spans, their median and max duration, summed seconds."""
        out: dict[str, dict[str, float]] = {}
        by: dict[str, list[float]] = {}
        for s in self.spans:
            by.setdefault(s.name, []).append(s.duration)
        for name in sorted(by, key=lambda n: STAGES.index(n) if n in STAGES else len(STAGES)):
            d = sorted(by[name])
            out[name] = {"n": len(d), "median_s": d[len(d) // 2], "max_s": d[-1],
                         "sum_s": sum(d)}
        return out

    def critical_path(self) -> list[dict[str, Any]]:
        """The chain of stages that decided when the round ended, latest-finishing first
        traced back: cloud combine <- the last fog's aggregate <- that fog's last update <-
        that edge's training <- its model's arrival. Each step: stage, party, start and end
        relative to the round's start (the cloud's publish of ``version``)."""
        if not self.spans:
            return []
        t0 = _round_start(self.spans)

        def last(name: str, party: str | None = None, before: float | None = None, *,
                 prefix: str | None = None) -> Span | None:
            c = [s for s in self.spans if s.name == name and (party is None or s.party == party)
                 and (prefix is None or s.party.startswith(prefix))
                 and (before is None or s.end <= before + 1e-6)]
            return max(c, key=lambda s: s.end) if c else None

        path: list[Span] = []
        end = last("cloud.combine")
        if end is None:
            return []
        path.append(end)
        ck = last("cloud.checkpoint")
        if ck is not None:
            path.insert(0, ck)
        agg_in = last("cloud.aggregate_in", before=end.start)
        fog = None
        if agg_in is not None:
            dec = last("cloud.decode", before=end.start)
            path += [x for x in (dec, agg_in) if x is not None]
            # the fog whose aggregate came last: its forward span ends just before
            fwd = last("fog.forward", before=agg_in.end)
            if fwd is not None:
                fog = fwd.party
                path.append(fwd)
                path += [x for x in (last("fog.aggregate", fog, fwd.start),) if x is not None]
                upd = last("fog.admit", None, fwd.start, prefix=f"{fog}/")
                if upd is not None:
                    path.append(upd)
                    edge = upd.party
                    for n in ("fog.decode", "fog.update_in", "edge.encode", "edge.train",
                              "edge.wait", "edge.decode", "edge.receive"):
                        s = last(n, edge)
                        if s is not None:
                            path.append(s)
                pub = last("fog.publish", fog)
                if pub is not None:
                    path.append(pub)
                mi = last("fog.model_in", fog)
                if mi is not None:
                    path.append(mi)
        pub0 = [s for s in self.spans if s.name == "cloud.publish"]
        if pub0:
            path.append(min(pub0, key=lambda s: s.start))
        path.sort(key=lambda s: (s.start, s.end))
        return [{"stage": s.name, "party": s.party, "start_s": round(s.start - t0, 6),
                 "end_s": round(s.end - t0, 6)} for s in path]

    def as_dict(self) -> dict[str, Any]:
        """The JSON line: version, round_s, stages, critical_path, spans."""
        return {"version": self.version, "round_s": self.round_s, "stages": self.stages(),
                "critical_path": self.critical_path(),
                "spans": [s.as_list() for s in self.spans]}


def _round_start(spans: list[Span]) -> float:
    pub = [s.start for s in spans if s.name == "cloud.publish"]
    return min(pub) if pub else min(s.start for s in spans)


def build(version: int, spans: list[Span], published_at: float | None,
          now_published_at: float | None) -> RoundTimeline:
    """The round from global ``version`` to ``version + 1``: ``published_at`` is when the cloud
    finished publishing ``version``, ``now_published_at`` when it finished ``version + 1``."""
    round_s = (now_published_at - published_at
               if published_at is not None and now_published_at is not None else None)
    return RoundTimeline(version, round_s, sorted(spans, key=lambda s: (s.start, s.end)))


class TimelineLog:
    """Append-only ``timeline.jsonl``, trimmed to the last ``keep`` rounds now and then."""

    def __init__(self, path: Path, keep: int) -> None:
        self.path = path
        self.keep = max(1, keep)
        self._lines = 0

    def append(self, rt: RoundTimeline) -> None:
        """Write one round (best effort: telemetry never stops the cloud)."""
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(rt.as_dict()) + "\n")
            self._lines += 1
            if self._lines > 2 * self.keep:
                lines = self.path.read_text().splitlines()[-self.keep:]
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text("\n".join(lines) + "\n")
                tmp.replace(self.path)
                self._lines = len(lines)
        except OSError as exc:
            log.warning("cannot write the round timeline to %s: %s", self.path, exc)


def read_timelines(path: Path) -> list[dict[str, Any]]:
    """The rounds in a ``timeline.jsonl`` (unreadable lines skipped)."""
    out = []
    try:
        text = path.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and "version" in rec:
                out.append(rec)
    return out


def otel_available() -> bool:
    """Whether the OpenTelemetry API is importable."""
    try:
        import opentelemetry.trace  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def emit_otel(rt: RoundTimeline, federation: str) -> None:
    """Emit the round as one trace through the OpenTelemetry API: a root span
    ``hierfl.round`` (the cloud's round) with one child span per stage, with their measured
    start and end times; attributes ``hierfl.version``, ``hierfl.party``. A no-op tracer
    (no SDK configured) makes this free."""
    from opentelemetry import trace  # noqa: PLC0415

    tracer = trace.get_tracer("hierfl")
    if not rt.spans:
        return
    t0 = _round_start(rt.spans)
    t1 = max(s.end for s in rt.spans)
    root = tracer.start_span("hierfl.round", start_time=int(t0 * 1e9), attributes={
        "hierfl.federation": federation, "hierfl.version": rt.version,
        "hierfl.round_s": rt.round_s if rt.round_s is not None else -1.0})
    ctx = trace.set_span_in_context(root)
    for s in rt.spans:
        child = tracer.start_span(s.name, context=ctx, start_time=int(s.start * 1e9),
                                  attributes={"hierfl.party": s.party,
                                              "hierfl.version": s.version})
        child.end(end_time=int(s.end * 1e9))
    root.end(end_time=int(t1 * 1e9))
