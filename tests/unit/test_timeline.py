"""hierfl.timeline: spans per version, the round the cloud builds from them, its JSON line,
its critical path, and its OpenTelemetry trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hierfl.sim.timeline_report import timeline_section
from hierfl.timeline import (
    RoundTimeline,
    Span,
    Timeline,
    TimelineLog,
    build,
    emit_otel,
    from_wire,
    read_timelines,
)
from hierfl.wire.frames import TimingSpan


def test_timeline_is_bounded_and_take_forgets() -> None:
    clock = iter(range(100)).__next__
    tl = Timeline("fog0", keep=2, clock=lambda: float(clock()))
    for v in range(4):
        with tl.span("fog.aggregate", v):
            pass
    assert sorted(tl._spans) == [2, 3]  # the oldest versions went first
    assert [s.duration for s in tl.take(3)] == [1.0]
    assert tl.spans(3) == []
    tl.add("x", None, 1.0)  # no version yet (before the first model): nothing recorded
    assert tl.spans(0) == []


def test_wire_marks_own_spans_and_keeps_edges() -> None:
    tl = Timeline("fog0")
    tl.add("fog.aggregate", 5, 1.0, 2.0)
    tl.add("edge.train", 5, 0.1, 0.9, party="e001")
    wire = tl.wire(5, own_party="fog0", take=False, limit=100)
    assert wire == (TimingSpan("fog.aggregate", "", 1.0, 2.0),
                    TimingSpan("edge.train", "e001", 0.1, 0.9))
    spans = from_wire(wire, sender="fog0", version=5, prefix="fog0/")
    assert [(s.party, s.version) for s in spans] == [("fog0", 5), ("fog0/e001", 5)]
    assert len(tl.wire(5, own_party="fog0", limit=1)) == 1  # the newest ones within the limit


def _round(version: int = 7, t0: float = 100.0) -> RoundTimeline:
    """Two fogs; fog1's aggregate comes last, behind its edge e9's slow training."""
    s = [
        Span("cloud.publish", "cloud", version, t0, t0 + 0.05),
        Span("fog.model_in", "fog0", version, t0 + 0.06, t0 + 0.07),
        Span("fog.model_in", "fog1", version, t0 + 0.06, t0 + 0.08),
        Span("fog.publish", "fog1", version, t0 + 0.08, t0 + 0.10),
        Span("edge.receive", "fog1/e9", version, t0 + 0.11, t0 + 0.11),
        Span("edge.decode", "fog1/e9", version, t0 + 0.11, t0 + 0.12),
        Span("edge.train", "fog1/e9", version, t0 + 0.12, t0 + 0.52),
        Span("edge.train", "fog0/e1", version, t0 + 0.12, t0 + 0.20),
        Span("edge.encode", "fog1/e9", version, t0 + 0.52, t0 + 0.54),
        Span("fog.update_in", "fog1/e9", version, t0 + 0.55, t0 + 0.55),
        Span("fog.decode", "fog1/e9", version, t0 + 0.55, t0 + 0.56),
        Span("fog.admit", "fog1/e9", version, t0 + 0.56, t0 + 0.57),
        Span("fog.admit", "fog0/e1", version, t0 + 0.25, t0 + 0.26),
        Span("fog.aggregate", "fog1", version, t0 + 0.57, t0 + 0.60),
        Span("fog.forward", "fog0", version, t0 + 0.27, t0 + 0.29),
        Span("fog.forward", "fog1", version, t0 + 0.60, t0 + 0.62),
        Span("cloud.aggregate_in", "fog0", version, t0 + 0.30, t0 + 0.30),
        Span("cloud.aggregate_in", "fog1", version, t0 + 0.63, t0 + 0.63),
        Span("cloud.decode", "fog1", version, t0 + 0.63, t0 + 0.64),
        Span("cloud.combine", "cloud", version, t0 + 0.64, t0 + 0.66),
        Span("cloud.checkpoint", "cloud", version, t0 + 0.66, t0 + 0.68),
    ]
    return build(version, s, t0, t0 + 0.70)


def test_round_time_is_the_clouds_and_the_critical_path_follows_the_last_fog() -> None:
    rt = _round()
    assert rt.round_s == pytest.approx(0.70)
    path = rt.critical_path()
    stages = [(p["stage"], p["party"]) for p in path]
    # the slow edge of the fog whose aggregate came last, not the fast one of the other fog
    assert ("edge.train", "fog1/e9") in stages
    assert ("edge.train", "fog0/e1") not in stages
    assert ("fog.forward", "fog1") in stages and ("fog.forward", "fog0") not in stages
    assert stages[0] == ("cloud.publish", "cloud")
    assert path[-1]["stage"] in ("cloud.checkpoint", "cloud.combine")
    train = next(p for p in path if p["stage"] == "edge.train")
    assert train["start_s"] == pytest.approx(0.12) and train["end_s"] == pytest.approx(0.52)
    st = rt.stages()
    assert st["edge.train"]["n"] == 2 and st["edge.train"]["max_s"] == pytest.approx(0.40)
    assert next(iter(st)) == "cloud.publish"  # in the order a round runs


def test_log_trims_and_report_section(tmp_path: Path) -> None:
    log = TimelineLog(tmp_path / "timeline.jsonl", keep=3)
    for v in range(10):
        log.append(_round(v, t0=100.0 + v))
    rounds = read_timelines(tmp_path / "timeline.jsonl")
    assert 3 <= len(rounds) <= 6 and rounds[-1]["version"] == 9
    with (tmp_path / "timeline.jsonl").open("a") as f:
        f.write("not json\n")  # skipped, not fatal
    sec = timeline_section(tmp_path)
    assert sec is not None
    assert sec["median_round_s"] == pytest.approx(0.70)
    assert sec["critical_path_s"]["edge.train"] == pytest.approx(0.40)
    assert sec["stages"]["fog.aggregate"]["median_s"] == pytest.approx(0.03)
    json.dumps(sec)  # the report is JSON


def test_report_section_without_file(tmp_path: Path) -> None:
    assert timeline_section(tmp_path) is None


def test_emit_otel_one_trace_per_round() -> None:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")  # in the dev extra
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    from opentelemetry import trace

    trace.set_tracer_provider(provider)  # once per process; later calls are ignored
    rt = _round()
    emit_otel(rt, "city")
    spans = exporter.get_finished_spans()
    assert len(spans) == len(rt.spans) + 1
    root = next(s for s in spans if s.name == "hierfl.round")
    assert root.attributes["hierfl.version"] == 7
    kids = [s for s in spans if s.name != "hierfl.round"]
    assert {s.context.trace_id for s in kids} == {root.context.trace_id}
    assert all(s.parent.span_id == root.context.span_id for s in kids)
    train = next(s for s in kids if s.name == "edge.train"
                 and s.attributes["hierfl.party"] == "fog1/e9")
    assert (train.end_time - train.start_time) / 1e9 == pytest.approx(0.40, abs=1e-6)
