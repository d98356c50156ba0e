"""Record-level DP's end of a region: the fog closes a round at once when nothing more can come,
forwards at once (whatever k2) when no edge will send again, then opens no more rounds; the
cloud stops the federation when every region is spent; the reported sample count."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hierfl.aggregation import FedAvg
from hierfl.config import PrivacySettings
from hierfl.errors import PrivacyBudgetExhaustedError
from hierfl.fog.round import (
    FogRound,
    FogRoundConfig,
    FogState,
    Forward,
    PrivacyStop,
    PublishModel,
    RoundClosed,
)
from hierfl.privacy.accountant import Accountant
from hierfl.privacy.federation import STOPPED, FederationPrivacy
from hierfl.privacy.record import (
    LAST_UPDATE_METRIC,
    REGION_SPENT_METRIC,
    is_last_update,
    region_spent,
    reported_samples,
    round_can_close,
)
from hierfl.wire.frames import LayoutEntry, ModelFrame, UpdateFrame

FED, FOG, D = "fed", "fog0", 4
LAYOUT = (LayoutEntry("w", (D,)),)
REGION = frozenset({"a", "b", "c"})


def _fog(k2: int = 3, min_updates: int = 3) -> FogRound:
    cfg = FogRoundConfig(federation=FED, fog_id=FOG, k2=k2, min_updates=min_updates,
                         quorum=1, round_timeout_s=100.0, allowed_edges=REGION)
    fog = FogRound(cfg, FedAvg())
    fog.on_global_model(ModelFrame(FED, 0, np.zeros(D, np.float32), layout=LAYOUT), 0.0)
    return fog


def _update(edge: str, seq: int, *, last: bool = False, version: int = 0) -> UpdateFrame:
    metrics = {"dp.epsilon": 1.5, **({LAST_UPDATE_METRIC: 1.0} if last else {})}
    return UpdateFrame(FED, FOG, edge, version, seq, 10, np.full(D, 0.1, np.float32), metrics)


def _of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def test_privacy_record_helpers() -> None:
    assert round_can_close(REGION, {"c"}, {"a", "b"})
    assert not round_can_close(REGION, {"c"}, {"a"})
    assert not round_can_close(frozenset(), {"a"}, {"b"})  # an unknown region never closes
    last, not_last = {LAST_UPDATE_METRIC: 1.0}, {LAST_UPDATE_METRIC: 0.0}
    assert region_spent(REGION, {"c"}, {"a": last, "b": last})
    assert not region_spent(REGION, {"c"}, {"a": last, "b": not_last})
    assert not region_spent(frozenset(), {"a"}, {})
    # the edge's own test: can its accountant pay for another round of `epochs`?
    acc = Accountant(noise_multiplier=1.0, sample_rate=0.5, delta=1e-5, releases=4)
    target = (acc.epsilon(4) + acc.epsilon(6)) / 2  # 4 steps fit, 6 do not
    task = SimpleNamespace(accountant=acc, target_epsilon=target, steps_per_epoch=2)
    assert is_last_update(task, 1)
    acc.releases = 2
    assert not is_last_update(task, 1)
    assert not is_last_update(object(), 1)  # not a DP-SGD task


def test_privacy_record_reported_samples_setting() -> None:
    off = PrivacySettings()
    assert reported_samples(off, 640) == 640
    assert reported_samples(PrivacySettings(mode="record", target_epsilon=3.0), 640) == 640
    fixed = PrivacySettings(mode="record", target_epsilon=3.0, report_samples=1)
    assert reported_samples(fixed, 640) == 1
    # off: the setting does nothing (not a byte changes)
    assert reported_samples(PrivacySettings(report_samples=5), 640) == 640
    with pytest.raises(ValueError, match="report_samples"):
        PrivacySettings(mode="record", target_epsilon=3.0, report_samples=0)


def test_privacy_record_fog_closes_at_once_and_forwards_despite_k2() -> None:
    fog = _fog(k2=3, min_updates=3)
    fog.on_update(_update("a", fog.seq, last=True), 1.0)
    fog.on_update(_update("b", fog.seq, last=True), 1.0)
    assert fog.state is FogState.COLLECTING  # min_updates 3: it would wait for its deadline
    # c says it is spent: nothing more can come, and nobody will send again
    actions = fog.on_edges_spent(frozenset({"c"}), REGION, 2.0)
    closed = _of(actions, RoundClosed)
    assert len(closed) == 1 and not closed[0].timed_out
    fwd = _of(actions, Forward)
    assert len(fwd) == 1  # forwarded after 1 of k2 = 3 fog rounds
    assert fwd[0].frame.fog_rounds == 1
    assert fwd[0].frame.metrics[REGION_SPENT_METRIC] == 1.0
    assert fog.state is FogState.FORWARDED and fog.region_spent
    # the next global model: every edge is spent, so no round opens to idle until a deadline
    actions = fog.on_global_model(ModelFrame(FED, 1, np.zeros(D, np.float32), layout=LAYOUT),
                                  3.0)
    stops = _of(actions, PrivacyStop)
    assert len(stops) == 1 and stops[0].record
    assert fog.state is FogState.BUDGET_SPENT and fog.deadline is None
    with pytest.raises(PrivacyBudgetExhaustedError):
        fog.check_update(_update("a", fog.seq, version=1))


def test_privacy_record_fog_keeps_going_while_an_edge_can_still_send() -> None:
    fog = _fog(k2=2, min_updates=3)
    fog.on_update(_update("a", fog.seq, last=True), 1.0)
    fog.on_update(_update("b", fog.seq), 1.0)  # b has budget left
    actions = fog.on_edges_spent(frozenset({"c"}), REGION, 2.0)
    assert len(_of(actions, RoundClosed)) == 1  # closed at once: nothing more can come
    assert not _of(actions, Forward)  # but b will send again: the k2 cycle goes on
    assert len(_of(actions, PublishModel)) == 1
    assert fog.state is FogState.COLLECTING and not fog.region_spent
    # a is spent too now; b sends its last: region spent, forward at the 2nd fog round
    fog.on_edges_spent(frozenset({"a", "c"}), REGION, 3.0)
    actions = fog.on_update(_update("b", fog.seq, last=True), 4.0)
    actions += fog.on_edges_spent(frozenset({"a", "c"}), REGION, 4.0)
    fwd = _of(actions, Forward)
    assert len(fwd) == 1 and fwd[0].frame.metrics.get(REGION_SPENT_METRIC) == 1.0
    # nothing changes for a region that is not spent: no status, no close
    other = _fog(k2=1, min_updates=3)
    other.on_update(_update("a", other.seq), 1.0)
    assert other.on_edges_spent(frozenset({"c"}), REGION, 2.0) == []
    assert other.state is FogState.COLLECTING


def test_privacy_record_fog_with_folded_rounds_forwards_them_when_all_spent() -> None:
    fog = _fog(k2=3, min_updates=1)
    fog.on_update(_update("a", fog.seq), 1.0)  # closes fog round 1 (min_updates 1)
    assert fog.state is FogState.COLLECTING
    # everyone spent before sending again: forward what fog round 1 made
    actions = fog.on_edges_spent(REGION, REGION, 2.0)
    fwd = _of(actions, Forward)
    assert len(fwd) == 1 and fwd[0].frame.fog_rounds == 1
    assert fwd[0].frame.metrics[REGION_SPENT_METRIC] == 1.0
    np.testing.assert_allclose(fwd[0].frame.delta, 0.1)


def test_privacy_record_cloud_stops_when_every_region_is_spent() -> None:
    fed = FederationPrivacy(mode="record", delta=1e-5, target_epsilon=3.0)
    spent = {"metrics": {"dp.epsilon": 2.9, REGION_SPENT_METRIC: 1.0}}
    going = {"metrics": {"dp.epsilon": 2.1}}
    fed.close_round({"north": spent, "south": going})
    assert not fed.stopped
    fed.close_round({"south": {"metrics": {"dp.epsilon": 2.95, REGION_SPENT_METRIC: 1.0}}})
    assert fed.stopped and fed.status == STOPPED
    meta = fed.meta()
    assert meta["status"] == STOPPED
    assert meta["regions"]["north"]["region_spent"] == 1.0
    assert fed.epsilon() == pytest.approx(2.95)
    # a restarted cloud resumes both the status and the regions' flags
    again = FederationPrivacy.restore(meta, mode="record", delta=1e-5, target_epsilon=3.0)
    assert again.stopped and again.regions["south"]["region_spent"] == 1.0
    # device-level modes never stop on this flag
    dev = FederationPrivacy(mode="trusted_fog", delta=1e-5, target_epsilon=None)
    dev.close_round({"north": spent})
    assert not dev.stopped
