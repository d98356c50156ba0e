"""CloudRound, the cloud's pure state machine: closing rules, quorum after the deadline,
replays refused. No broker, no clock."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hierfl.aggregation import FedAvg
from hierfl.cloud.round import CloudRound, CloudRoundConfig, Commit, NewGlobal
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


def closes(actions: list) -> NewGlobal:
    assert actions and isinstance(actions[0], NewGlobal), actions
    return actions[0]


def test_every_fog_closes_the_round_weighted_by_samples():
    c = cloud()
    assert c.on_aggregate(agg("f0", 1.0, n=1), 0.0) == []
    assert c.on_aggregate(agg("f1", 2.0, n=1), 0.0) == []
    new = closes(c.on_aggregate(agg("f2", 4.0, n=2), 0.0))
    assert not new.timed_out and (new.version, new.parent) == (1, 0)
    np.testing.assert_allclose(new.weights, np.full(D, (1 + 2 + 8) / 4))


def test_deadline_with_a_quorum_closes_with_what_arrived():
    c = cloud(min_fogs=2)
    c.on_aggregate(agg("f0", 1.0), 0.0)
    c.on_aggregate(agg("f1", 3.0), 1.0)
    assert c.deadline == 10.0 and c.on_tick(9.9) == []
    new = closes(c.on_tick(10.0))
    assert new.timed_out and set(new.fogs) == {"f0", "f1"}
    np.testing.assert_allclose(new.weights, np.full(D, 2.0))


def test_deadline_below_quorum_warns_once_then_closes_on_the_quorum_making_aggregate(caplog):
    c = cloud(min_fogs=2)
    c.on_aggregate(agg("f0", 1.0), 0.0)
    with caplog.at_level(logging.WARNING, logger="hierfl.cloud.round"):
        assert c.on_tick(10.0) == []
        # no deadline any more: a service loop does not spin (or log) until the next aggregate
        assert c.deadline is None
        assert c.on_tick(11.0) == [] and c.on_tick(500.0) == []
    assert len([r for r in caplog.records if "deadline passed" in r.message]) == 1
    new = closes(c.on_aggregate(agg("f2", 3.0), 600.0))
    assert new.timed_out and set(new.fogs) == {"f0", "f2"}
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
    assert closes(r.on_aggregate(ok, 0.0))


def test_the_round_decides_the_commits():
    """A record is committed only when nothing before it is merely held in memory: a
    refused record while nothing is held is skipped for good; one refused while an aggregate
    is held waits for the round's commit, which covers the newest aggregate it folded."""
    c = cloud(min_fogs=2)
    assert c.on_refused("r0") == [Commit("r0")]           # nothing held: skip it
    assert c.on_aggregate(agg("f0", 1.0), 0.0, "r1") == []
    assert c.on_refused("r2") == []                        # r1 is only in memory
    assert c.on_aggregate(agg("f1", 1.0), 1.0, "r3") == []
    new, commit = c.on_tick(10.0)                          # closes with f0 and f1
    assert isinstance(new, NewGlobal) and commit == Commit("r3")
    assert c.on_refused("r4") == [Commit("r4")]           # held nothing again
    # a round closed by its last fog commits that fog's record
    c.on_aggregate(agg("f0", 1.0, version=1), 20.0, "r5")
    c.on_aggregate(agg("f1", 1.0, version=1), 20.0, "r6")
    assert c.on_aggregate(agg("f2", 1.0, version=1), 20.0, "r7")[1] == Commit("r7")
