"""Buffered (FedBuff) aggregation: the staleness weighting, the fog's buffer across global
versions, refusals of too-stale and duplicate updates, the cloud's buffer of fog aggregates,
and the settings that enable it. Pure state machines: no broker, no clock."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from hierfl.aggregation import FedAvg
from hierfl.cloud.round import CloudRound, CloudRoundConfig, NewGlobal
from hierfl.config import CloudSettings, FogSettings
from hierfl.errors import ConfigError, DuplicateUpdateError, StaleUpdateError
from hierfl.fog.buffered import (
    BufferPolicy,
    ModelClock,
    buffer_policy,
    staleness_weight,
    staleness_weights,
)
from hierfl.fog.round import FogRound, FogRoundConfig, FogState, Forward, RoundClosed
from hierfl.wire.frames import AggregateFrame, LayoutEntry, ModelFrame, UpdateFrame

FED, FOG, D = "fed", "fog0", 4
LAYOUT = (LayoutEntry("w", (D,)),)
G0 = np.zeros(D, np.float32)


def fog(k: int = 2, *, max_staleness: int = 3, exponent: float = 0.5, k2: int = 2,
        **kw: Any) -> FogRound:
    cfg = FogRoundConfig(federation=FED, fog_id=FOG, round_timeout_s=10.0, k2=k2,
                         max_staleness=max_staleness, min_updates=1,
                         buffer=BufferPolicy("buffered", k, exponent, max_staleness), **kw)
    f = FogRound(cfg, FedAvg())
    f.on_global_model(ModelFrame(FED, 0, G0, layout=LAYOUT), 0.0)
    return f


def update(edge: str, seq: int, value: float, *, n: int = 10, version: int = 0) -> UpdateFrame:
    return UpdateFrame(FED, FOG, edge, version, seq, n, np.full(D, value, np.float32), {})


def test_weight_is_one_over_sqrt_one_plus_staleness_by_default():
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3) == pytest.approx(0.5)
    assert staleness_weight(8, exponent=1.0) == pytest.approx(1 / 9)
    assert staleness_weight(5, exponent=0.0) == 1.0
    np.testing.assert_allclose(staleness_weights(np.array([10.0, 10.0]), [0, 3]), [10.0, 5.0])
    with pytest.raises(ConfigError):
        staleness_weight(-1)
    with pytest.raises(ConfigError):
        staleness_weights(np.array([1.0]), [0, 1])


def test_policy_validation_and_sync_is_none():
    assert buffer_policy("sync", 5, 0.5, 0) is None
    assert buffer_policy("buffered", 5, 0.5, 2) == BufferPolicy("buffered", 5, 0.5, 2)
    for bad in ({"mode": "async"}, {"buffer_size": 0}, {"staleness_exponent": -1.0},
                {"max_staleness": -1}):
        with pytest.raises(ConfigError):
            BufferPolicy(**{"mode": "buffered", **bad})


def test_model_clock_counts_changed_models_across_versions():
    clock = ModelClock(keep=4)
    for seq in (1, 2, 4, 7):  # seqs 3, 5, 6 were skipped rounds (same model)
        clock.changed(seq)
    assert clock.staleness(7, 7) == 0
    assert clock.staleness(4, 7) == 1
    assert clock.staleness(3, 7) == 2  # seq 3 re-published model 2: changed at 4 and 7
    assert clock.staleness(1, 7) == 3
    clock.changed(9)  # forgets 1: an update from before the oldest kept is maximally stale
    assert clock.staleness(0, 9) == 4


def test_buffer_closes_every_k_arrivals_whatever_the_round_size():
    f = fog(k=2)
    assert f.on_update(update("a", 1, 1.0), 1.0) == []
    actions = f.on_update(update("b", 1, 3.0), 1.0)
    closed = [a for a in actions if isinstance(a, RoundClosed)]
    assert closed and closed[0].contributors == ("a", "b")
    assert f.seq == 2 and f.state is FogState.COLLECTING
    assert f._cycle is not None
    np.testing.assert_allclose(f._cycle.weights, np.full(D, 2.0))


def test_stale_update_is_weighted_down_by_its_staleness():
    f = fog(k=2, k2=10)
    f.on_update(update("a", 1, 0.0), 0.0)
    f.on_update(update("b", 1, 0.0), 0.0)  # closes: model seq 2
    f.on_update(update("a", 2, 0.0), 0.0)
    f.on_update(update("b", 2, 0.0), 0.0)  # closes: model seq 3
    w_before = f._cycle.weights.copy()  # type: ignore[union-attr]
    # slow edge c trained from seq 1 (2 models behind) with delta 3, fresh a from seq 3 with 0
    f.on_update(update("c", 1, 3.0), 0.0)
    f.on_update(update("a", 3, 0.0), 0.0)
    w = 1 / math.sqrt(3)
    expected = 3.0 * 10 * w / (10 * w + 10)
    np.testing.assert_allclose(f._cycle.weights - w_before, np.full(D, expected),  # type: ignore[union-attr]
                               rtol=1e-5)


def test_too_stale_update_is_refused_and_state_unchanged():
    f = fog(k=1, max_staleness=1, k2=10)
    for seq in (1, 2, 3):
        f.on_update(update("a", seq, 0.1), 0.0)  # three closes: seq 4 now
    assert f.seq == 4
    f.check_update(update("b", 3, 0.1))  # one model behind: accepted
    with pytest.raises(StaleUpdateError, match="buffered: 2 fog models behind"):
        f.on_update(update("b", 2, 0.1), 0.0)
    with pytest.raises(StaleUpdateError, match="has not published"):
        f.on_update(update("b", 9, 0.1), 0.0)
    assert f.seq == 4 and f.pending == ()


def test_duplicate_or_older_update_of_an_edge_is_refused():
    f = fog(k=1, k2=10)
    f.on_update(update("a", 1, 0.1), 0.0)
    with pytest.raises(DuplicateUpdateError):
        f.on_update(update("a", 1, 0.1), 0.0)
    f.on_update(update("a", 2, 0.1), 0.0)
    with pytest.raises(DuplicateUpdateError):  # older than one already folded in
        f.on_update(update("a", 1, 0.2), 0.0)


def test_update_from_an_older_global_version_is_used_and_held_while_forwarded():
    f = fog(k=1, k2=1)
    actions = f.on_update(update("a", 1, 1.0), 0.0)
    assert any(isinstance(a, Forward) for a in actions) and f.state is FogState.FORWARDED
    assert f.holds_updates  # a slow edge's update is held, not refused
    assert f.on_early(update("b", 1, 2.0), "handle")
    after = f.on_global_model(ModelFrame(FED, 1, np.ones(D, np.float32), layout=LAYOUT), 1.0)
    held = [a for a in after if not isinstance(a, type(after[0]))]
    assert len(held) == 1 and held[0].frame.edge_id == "b"
    # judged against v1: trained from v0 seq 1, one changed model behind
    acts = f.on_update(held[0].frame, 1.0)
    assert any(isinstance(a, Forward) for a in acts)
    fwd = next(a for a in acts if isinstance(a, Forward))
    assert fwd.frame.base_version == 1
    np.testing.assert_allclose(fwd.frame.delta, np.full(D, 2.0))  # one update: its own delta


def test_sync_mode_is_unchanged_older_version_refused():
    cfg = FogRoundConfig(federation=FED, fog_id=FOG, min_updates=1, max_staleness=3)
    f = FogRound(cfg, FedAvg())
    f.on_global_model(ModelFrame(FED, 1, G0, layout=LAYOUT), 0.0)
    assert not f.holds_updates
    with pytest.raises(StaleUpdateError):
        f.on_update(update("a", 1, 0.1, version=0), 0.0)


def _cloud(k: int, max_staleness: int = 1) -> CloudRound:
    cfg = CloudRoundConfig(federation=FED, fogs=frozenset({"f0", "f1", "f2", "f3"}),
                           buffer=BufferPolicy("buffered", k, 0.5, max_staleness))
    return CloudRound(cfg, FedAvg(), version=0, weights=np.zeros(3, np.float32),
                      layout=(LayoutEntry("w", (3,)),))


def _agg(fog_id: str, value: float, version: int = 0) -> AggregateFrame:
    return AggregateFrame(FED, fog_id, version, 10, (f"{fog_id}-e",), 1,
                          np.full(3, value, np.float32))


def test_cloud_buffer_combines_every_k_fog_aggregates_and_weights_stale_ones():
    c = _cloud(2)
    assert c.on_aggregate(_agg("f0", 1.0), 0.0) == []
    new = c.on_aggregate(_agg("f1", 3.0), 0.0)[0]
    assert isinstance(new, NewGlobal) and new.version == 1
    np.testing.assert_allclose(new.weights, np.full(3, 2.0))
    late = _agg("f2", 4.0, version=0)  # the slow fog, one version behind
    assert c.on_aggregate(late, 0.0) == []
    new2 = c.on_aggregate(_agg("f0", 0.0, version=1), 0.0)[0]
    w = 1 / math.sqrt(2)
    np.testing.assert_allclose(new2.weights, np.full(3, 2.0 + 4.0 * w / (w + 1)), rtol=1e-5)
    with pytest.raises(DuplicateUpdateError):  # re-sent after it was applied
        c.on_aggregate(late, 0.0)
    with pytest.raises(StaleUpdateError):  # two versions behind, bound 1
        c.on_aggregate(_agg("f3", 1.0, version=0), 0.0)


def test_settings_enable_buffering_and_refuse_what_cannot_work():
    s = FogSettings.load(fog_id="fog0", aggregation="buffered", buffer_size=3, max_staleness=2)
    assert s.aggregation == "buffered" and s.buffer_size == 3
    assert FogSettings.load(fog_id="fog0").aggregation == "sync"  # the default
    with pytest.raises(ConfigError, match="could never fill"):
        FogSettings.load(fog_id="fog0", aggregation="buffered", buffer_size=3,
                         allowed_edges=["a", "b"])
    with pytest.raises(ConfigError, match="aggregation"):
        FogSettings.load(fog_id="fog0", aggregation="async")
    cs = CloudSettings.load(fogs=["f0", "f1"], aggregation="buffered", buffer_size=1,
                            max_staleness=2)
    assert cs.max_staleness == 2
    with pytest.raises(ConfigError, match="could never fill"):
        CloudSettings.load(fogs=["f0"], aggregation="buffered", buffer_size=2)


def test_buffer_survives_a_newer_global_model_and_an_edge_newer_update_replaces_its_own():
    f = fog(k=3, k2=1, max_staleness=3)
    f.on_update(update("a", 1, 5.0), 0.0)
    f.on_update(update("b", 1, 1.0), 0.0)
    # the cloud moved on without this fog (a buffered cloud): the buffer is carried over
    f.on_global_model(ModelFrame(FED, 1, np.ones(D, np.float32), layout=LAYOUT), 1.0)
    assert sorted(f.pending) == ["a", "b"] and f._updates["a"].staleness == 1
    f.on_update(update("a", 2, 2.0, version=1), 1.0)  # a's newer update replaces its older one
    assert sorted(f.pending) == ["a", "b"]
    actions = f.on_update(update("c", 2, 2.0, version=1), 1.0)
    fwd = next(a for a in actions if isinstance(a, Forward))
    assert fwd.frame.contributors == ("a", "b", "c")
    w = 1 / math.sqrt(2)  # b is one model behind; a and c are fresh
    np.testing.assert_allclose(fwd.frame.delta, np.full(D, (2 * 10 + w * 10 + 2 * 10) /
                                                       (10 + w * 10 + 10)), rtol=1e-5)


def test_a_carried_update_too_stale_for_the_new_model_is_dropped():
    f = fog(k=3, k2=1, max_staleness=0)
    f.on_update(update("a", 1, 5.0), 0.0)
    f.on_global_model(ModelFrame(FED, 1, np.ones(D, np.float32), layout=LAYOUT), 1.0)
    assert f.pending == ()
