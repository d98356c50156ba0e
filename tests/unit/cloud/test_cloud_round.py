"""CloudRound, the cloud's pure state machine: closing rules, quorum after the deadline,
replays refused. No broker, no clock."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hierfl.aggregation import FedAvg
from hierfl.cloud.round import CloudRound, CloudRoundConfig
from hierfl.errors import DuplicateUpdateError, StaleUpdateError, UnknownSenderError
from hierfl.wire.frames import AggregateFrame, LayoutEntry

FED, D = "fed", 3
W0 = np.zeros(D, np.float32)


def cloud(**kw) -> CloudRound:
    cfg = CloudRoundConfig(federation=FED, fogs=frozenset({"f0", "f1", "f2"}),
                           round_timeout_s=10.0, **kw)
    return CloudRound(cfg, FedAvg(), version=0, weights=W0, layout=(LayoutEntry("w", (D,)),))


def agg(fog: str, value: float, n: int = 10, version: int = 0) -> AggregateFrame:
    return AggregateFrame(FED, fog, version, n, (f"{fog}-e",), 1, np.full(D, value, np.float32))


def test_every_fog_closes_the_round_weighted_by_samples():
    c = cloud()
    assert c.on_aggregate(agg("f0", 1.0, n=1), 0.0) is None
    assert c.on_aggregate(agg("f1", 2.0, n=1), 0.0) is None
    new = c.on_aggregate(agg("f2", 4.0, n=2), 0.0)
    assert new is not None and not new.timed_out and (new.version, new.parent) == (1, 0)
    np.testing.assert_allclose(new.weights, np.full(D, (1 + 2 + 8) / 4))


def test_deadline_with_a_quorum_closes_with_what_arrived():
    c = cloud(min_fogs=2)
    c.on_aggregate(agg("f0", 1.0), 0.0)
    c.on_aggregate(agg("f1", 3.0), 1.0)
    assert c.deadline == 10.0 and c.on_tick(9.9) is None
    new = c.on_tick(10.0)
    assert new is not None and new.timed_out and set(new.fogs) == {"f0", "f1"}
    np.testing.assert_allclose(new.weights, np.full(D, 2.0))


def test_deadline_below_quorum_warns_once_then_closes_on_the_quorum_making_aggregate(caplog):
    c = cloud(min_fogs=2)
    c.on_aggregate(agg("f0", 1.0), 0.0)
    with caplog.at_level(logging.WARNING, logger="hierfl.cloud.round"):
        assert c.on_tick(10.0) is None
        # no deadline any more: a service loop does not spin (or log) until the next aggregate
        assert c.deadline is None
        assert c.on_tick(11.0) is None and c.on_tick(500.0) is None
    assert len([r for r in caplog.records if "deadline passed" in r.message]) == 1
    new = c.on_aggregate(agg("f2", 3.0), 600.0)
    assert new is not None and new.timed_out and set(new.fogs) == {"f0", "f2"}
    # the next round has a fresh deadline from its first aggregate
    c.on_aggregate(agg("f1", 1.0, version=1), 700.0)
    assert c.deadline == 710.0


def test_replays_duplicates_and_strangers_are_refused():
    c = cloud()
    c.on_aggregate(agg("f0", 1.0), 0.0)
    with pytest.raises(DuplicateUpdateError):
        c.on_aggregate(agg("f0", 1.0), 0.0)
    with pytest.raises(UnknownSenderError):
        c.on_aggregate(agg("f9", 1.0), 0.0)
    c.on_aggregate(agg("f1", 1.0), 0.0)
    c.on_aggregate(agg("f2", 1.0), 0.0)
    with pytest.raises(StaleUpdateError):  # an aggregate against v0 after v1 exists
        c.on_aggregate(agg("f0", 1.0), 0.0)


def test_a_fog_claiming_more_samples_than_its_edges_can_hold_is_refused() -> None:
    from hierfl.errors import SampleCountError
    from hierfl.wire.frames import AggregateFrame

    cfg = CloudRoundConfig(federation="f", fogs=frozenset({"a"}), max_samples_per_edge=100)
    r = CloudRound(cfg, lambda d, w: d[0], version=0, weights=np.zeros(3, np.float32),
                   layout=())
    big = AggregateFrame("f", "a", 0, 201, ("e0", "e1"), 1, np.ones(3, np.float32))
    with pytest.raises(SampleCountError):
        r.on_aggregate(big, 0.0)
    ok = AggregateFrame("f", "a", 0, 200, ("e0", "e1"), 1, np.ones(3, np.float32))
    assert r.on_aggregate(ok, 0.0) is not None
