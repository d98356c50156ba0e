"""ServiceMetrics as Prometheus sees it: names with units, tier/id labels, one registry per
service, histograms fed by the round timeline's spans."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hierfl.metrics import BUCKETS, ServiceMetrics, registry
from hierfl.timeline import Timeline


def _samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry(metrics)).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    hits = [v for (n, ls), v in samples.items()
            if n == name and all((k, v2) in ls for k, v2 in labels.items())]
    assert len(hits) == 1, (name, labels, sorted(n for n, _ in samples))
    return hits[0]


def test_counters_bytes_and_refusals_have_units_and_labels() -> None:
    m = ServiceMetrics("fog", "north")
    m.inc("accepted", 3)
    m.inc("bytes_in", 1000)
    m.inc("bytes_up", 300)
    m.inc("bytes_down_edges", 70)
    m.inc("reconnects")
    m.inc("quarantines", 2)
    m.reject("wire.signature")
    m.reject("wire.signature")
    m.reject("validation.shape")
    s = _samples(m)
    assert _value(s, "hierfl_updates_accepted_total", tier="fog", id="north") == 3
    assert _value(s, "hierfl_updates_refused_total", reason="wire.signature") == 2
    assert _value(s, "hierfl_updates_refused_total", reason="validation.shape") == 1
    assert _value(s, "hierfl_received_bytes_total", stream="updates") == 1000
    assert _value(s, "hierfl_sent_bytes_total", stream="aggregates") == 300
    assert _value(s, "hierfl_sent_bytes_total", stream="models") == 70
    assert _value(s, "hierfl_reconnects_total") == 1
    assert _value(s, "hierfl_quarantines_total") == 2
    # counters an alert rule needs exist from the start
    assert _value(s, "hierfl_fog_rounds_total") == 0
    assert _value(_samples(ServiceMetrics("cloud", "fed")), "hierfl_quorum_missed_total") == 0


def test_gauges_read_at_scrape_time_and_a_failing_one_is_left_out() -> None:
    m = ServiceMetrics("fog", "north")
    box = {"v": 4}
    m.gauge_fn("model_version", lambda: box["v"])
    m.gauge_fn("spool_depth", lambda: 1 / 0)  # broken: the scrape still works
    m.set("privacy_epsilon", 1.25)
    m.seen("n0")
    m.seen("n1")
    m.seen("n0")
    m.watch([("mqtt", "mqtt://b:1883"), ("kafka", "k:9092")], lambda: True)
    s = _samples(m)
    assert _value(s, "hierfl_model_version") == 4
    assert not any(n == "hierfl_spool_depth" for n, _ in s)
    assert _value(s, "hierfl_epsilon_spent") == 1.25
    assert _value(s, "hierfl_edges_seen") == 2
    assert _value(s, "hierfl_broker_connected", broker="mqtt") == 1
    assert _value(s, "hierfl_broker_connected", broker="kafka", url="k:9092") == 1
    box["v"] = 5
    m.watch([("mqtt", "mqtt://b:1883")], lambda: False)
    s = _samples(m)
    assert _value(s, "hierfl_model_version") == 5
    assert _value(s, "hierfl_broker_connected", broker="mqtt") == 0


def test_progress_age_moves_only_with_this_tiers_progress_counters() -> None:
    now = [100.0]
    m = ServiceMetrics("fog", "north", clock=lambda: now[0])
    now[0] = 160.0
    m.inc("received")  # a message in is not progress
    m.reject("wire.format")
    assert _value(_samples(m), "hierfl_progress_age_seconds") == 60
    m.inc("accepted")
    now[0] = 170.0
    assert _value(_samples(m), "hierfl_progress_age_seconds") == 10


def test_spans_feed_stage_and_round_histograms_of_this_tier_only() -> None:
    m = ServiceMetrics("fog", "north")
    tl = Timeline("north", observer=m.on_span)
    tl.add("fog.model_in", 3, 10.0, 10.5)
    tl.add("fog.update_in", 3, 11.0, party="n0")  # an instant: no observation
    tl.add("fog.decode", 3, 11.0, 11.02, party="n0")
    tl.add("edge.train", 3, 1.0, 9.0, party="n0")  # the edge's span, carried: not the fog's
    tl.add("fog.aggregate", 3, 12.0, 12.3)
    tl.add("fog.forward", 3, 12.3, 12.4)
    s = _samples(m)
    assert _value(s, "hierfl_stage_duration_seconds_count", stage="decode") == 1
    assert _value(s, "hierfl_stage_duration_seconds_sum", stage="decode") == pytest.approx(0.02)
    assert _value(s, "hierfl_stage_duration_seconds_count", stage="aggregate") == 1
    assert not any(ls and ("stage", "train") in ls for _, ls in s)
    assert not any(ls and ("stage", "update_in") in ls for _, ls in s)
    # the round: the fog's first span of v3 (model in, 10.0) to the end of its forward
    assert _value(s, "hierfl_round_duration_seconds_count") == 1
    assert _value(s, "hierfl_round_duration_seconds_sum") == pytest.approx(2.4)
    assert _value(s, "hierfl_round_duration_seconds_bucket", le="2.5") == 1
    assert _value(s, "hierfl_round_duration_seconds_bucket", le="1.0") == 0
    assert _value(s, "hierfl_round_duration_seconds_bucket", le="+Inf") == 1
    assert m.snapshot()["histograms"]["round"] == 1
    assert len(BUCKETS) == len(set(BUCKETS))


def test_the_cloud_round_runs_from_one_publication_to_the_next() -> None:
    m = ServiceMetrics("cloud", "fed")
    tl = Timeline("cloud", observer=m.on_span)
    tl.add("cloud.publish", 0, 100.0, 100.1)
    tl.add("cloud.combine", 0, 104.0, 104.2)
    tl.add("cloud.publish", 1, 105.0, 105.1)
    tl.add("cloud.publish", 1, 106.0, 106.1)  # the same version again (a reconnection)
    s = _samples(m)
    assert _value(s, "hierfl_round_duration_seconds_count") == 1
    assert _value(s, "hierfl_round_duration_seconds_sum") == pytest.approx(5.0)
    assert _value(s, "hierfl_stage_duration_seconds_count", stage="publish") == 3


def test_each_service_has_its_own_registry() -> None:
    a, b = ServiceMetrics("fog", "north"), ServiceMetrics("fog", "south")
    a.inc("accepted")
    ra, rb = registry(a), registry(b)  # both register the same metric names: no collision
    ta, tb = generate_latest(ra).decode(), generate_latest(rb).decode()
    assert 'id="north"' in ta and 'id="south"' not in ta
    assert 'id="south"' in tb and 'id="north"' not in tb
    assert 'hierfl_updates_accepted_total{id="north",tier="fog"} 1.0' in ta


def test_edge_evaluation_gauges() -> None:
    m = ServiceMetrics("edge", "n0")
    m.evaluated(7, {"accuracy": 0.75, "loss": 0.5})
    s = _samples(m)
    assert _value(s, "hierfl_evaluation", metric="accuracy") == 0.75
    assert _value(s, "hierfl_evaluation", metric="loss") == 0.5
    assert _value(s, "hierfl_evaluated_version") == 7


def test_spans_from_worker_threads_and_the_loop_at_once() -> None:
    # A fog records its forward span in a worker thread (the encode's timing callback) while
    # the loop records decode spans: observation must be thread-safe across many versions.
    import threading

    m = ServiceMetrics("fog", "north")
    errors: list[BaseException] = []

    def record(offset: int) -> None:
        try:
            for v in range(3000):
                m.on_span("fog.decode", v, 1.0, 1.5)
                m.on_span("fog.forward", v + offset, 2.0, 2.5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert m.snapshot()["histograms"]["stage:decode"] == 4 * 3000
    assert m.snapshot()["histograms"]["round"] == 4 * 3000
