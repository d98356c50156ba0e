"""Distributed DP in the fog's accounting path (hierfl/secagg/ddp.py with FogRound): a secure
round's sum closes the fog round, the release is accounted by the edges whose noised input
survived (a dropout: less noise, more epsilon), the budget stops the region; the settings
rules; an edge refuses a round announcing another codec than its own settings give."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hierfl.aggregation import FedAvg
from hierfl.config import EdgeSettings, FogSettings
from hierfl.errors import ConfigError
from hierfl.fog.round import FogRound, FogRoundConfig, FogState, Forward, PrivacyStop
from hierfl.privacy.distributed import DISTRIBUTED_LEDGER_FILE, DistributedLedger
from hierfl.privacy.federation import STOPPED, FederationPrivacy
from hierfl.secagg.ddp import DistributedRegion, distributed_region, edge_noise_for, round_params
from hierfl.secagg.driver import BeginRound
from hierfl.secagg.service import SecureSum
from hierfl.wire.frames import LayoutEntry, ModelFrame

D = 4
LAYOUT = (LayoutEntry("w", (D,)),)
PRIVACY = {"mode": "untrusted_fog", "noise_multiplier": 1.0, "clip_norm": 0.5, "delta": 1e-5}
SECURE = {"mode": "secure"}


def _fog_settings(folder: Path, **privacy: Any) -> FogSettings:
    return FogSettings.load(federation="fed", fog_id="north", aggregator="fedavg",
                            round_timeout_s=100, security={"signing": "required"},
                            secagg=SECURE, privacy={**PRIVACY, **privacy}, spool_dir=folder,
                            allowed_edges=["a", "b", "c"])


def _release(folder: Path, survivors: tuple[str, ...], **privacy: Any) -> tuple[
        DistributedRegion, FogRound, list[Any]]:
    """One fog round of a fresh region closed by a secure sum of ``survivors``."""
    s = _fog_settings(folder, **privacy)
    region = distributed_region(s)
    fog = FogRound(FogRoundConfig(federation="fed", fog_id="north", secure=True),
                   FedAvg(), privacy=region)
    fog.on_global_model(ModelFrame("fed", 0, np.zeros(D, np.float32), layout=LAYOUT), 0.0)
    params = round_params(s.privacy, roster_size=3, dim=D)
    result = SecureSum(0, fog.seq, survivors, np.full(D, 0.1 * len(survivors)),
                       dp_params=params)
    return region, fog, fog.on_secure_sum(result, 1.0)


def test_privacy_distributed_fog_dropout_lowers_noise_and_raises_epsilon(
    tmp_path: Path,
) -> None:
    _, _, full = _release(tmp_path / "full", ("a", "b", "c"))
    _, _, dropped = _release(tmp_path / "dropped", ("a", "c"))  # b's share never arrived
    m3 = next(a for a in full if isinstance(a, Forward)).frame.metrics
    m2 = next(a for a in dropped if isinstance(a, Forward)).frame.metrics
    assert (m3["dp.surviving_edges"], m2["dp.surviving_edges"]) == (3.0, 2.0)
    assert m3["dp.expected_edges"] == m2["dp.expected_edges"] == 3.0
    # sqrt(2/3) of the noise, more epsilon
    assert m2["dp.effective_noise_multiplier"] == pytest.approx(
        m3["dp.effective_noise_multiplier"] * np.sqrt(2 / 3), rel=1e-12)
    assert m2["dp.epsilon"] > m3["dp.epsilon"] > 0
    # exactly what the distributed ledger accounts for one release of 2 / 3 shares
    params = round_params(_fog_settings(tmp_path).privacy, roster_size=3, dim=D)
    for k, m in ((3, m3), (2, m2)):
        want = DistributedLedger(None, population="north", params=params, delta=1e-5)
        assert m["dp.epsilon"] == pytest.approx(want.spend(k), rel=1e-12)
    # persisted before the release left, with its survivors
    data = json.loads((tmp_path / "dropped" / DISTRIBUTED_LEDGER_FILE).read_text())
    assert data["last_surviving"] == 2 and data["groups"][0]["shares"] == 2


def test_privacy_distributed_fog_dropout_past_the_budget_is_not_released(
    tmp_path: Path,
) -> None:
    params = round_params(_fog_settings(tmp_path).privacy, roster_size=3, dim=D)
    probe = DistributedLedger(None, population="north", params=params, delta=1e-5)
    target = (probe.epsilon(3) + probe.epsilon(2)) / 2  # pays for 3 shares, not for 2
    _, _, ok = _release(tmp_path / "ok", ("a", "b", "c"), target_epsilon=target)
    assert any(isinstance(a, Forward) for a in ok)
    region, fog, refused = _release(tmp_path / "no", ("a", "c"), target_epsilon=target)
    assert not any(isinstance(a, Forward) for a in refused)
    assert [type(a) for a in refused] == [PrivacyStop]
    assert fog.state is FogState.BUDGET_SPENT and region.exhausted
    assert region.ledger.releases == 0
    assert not (tmp_path / "no" / DISTRIBUTED_LEDGER_FILE).exists()  # nothing spent


def test_privacy_distributed_fog_reports_the_next_cloud_round(tmp_path: Path) -> None:
    region, _, actions = _release(tmp_path, ("a", "b", "c"))
    m = next(a for a in actions if isinstance(a, Forward)).frame.metrics
    # the cloud's budget stop reads the region's own account of its next round (k2 = 1)
    assert m["dp.next_epsilon"] == pytest.approx(region.ledger.epsilon(3, releases=1))
    assert m["dp.next_epsilon"] > m["dp.epsilon"]


def test_privacy_distributed_fog_settings_rules(tmp_path: Path) -> None:
    s = _fog_settings(tmp_path)
    assert s.secagg.weighted is False  # left at its default: forced off
    assert s.secagg.clip_norm == PRIVACY["clip_norm"]  # the bound the noise is sized for
    for secagg, words in (({"weighted": True}, "weighted = false"),
                          ({"clip_norm": 2.0}, "must equal privacy.clip_norm"),
                          ({"scale": 1024.0}, "leave secagg.scale unset")):
        with pytest.raises(ConfigError, match=words):
            EdgeSettings.load(federation="fed", fog_id="north", edge_id="a",
                              security={"signing": "required"},
                              secagg={**SECURE, **secagg}, privacy=PRIVACY)
    with pytest.raises(ConfigError, match="sample_rate must be 1"):
        _fog_settings(tmp_path, sample_rate=0.5)


def test_privacy_distributed_fog_edge_refuses_another_codec() -> None:
    edge = EdgeSettings.load(federation="fed", fog_id="north", edge_id="a",
                             security={"signing": "required"}, secagg=SECURE,
                             privacy=PRIVACY)
    params = round_params(edge.privacy, roster_size=3, dim=D)
    roster = ("a", "b", "c")
    hook = edge_noise_for(edge.privacy)(
        BeginRound("north", 7, roster, D, 0.5, params.scale, 2, 3))
    out = hook(np.zeros(D, np.int64))  # the edge's Skellam share on a zero update
    assert out.shape == (D,) and out.any()
    # a fog announcing half the scale would shrink the noise in float units: refused
    with pytest.raises(ConfigError, match="calibrated"):
        edge_noise_for(edge.privacy)(
            BeginRound("north", 8, roster, D, 0.5, params.scale / 2, 2, 3))


def test_privacy_distributed_fog_cloud_takes_the_regions_own_account(tmp_path: Path) -> None:
    region, _, actions = _release(tmp_path, ("a", "c"))  # one release of 2 shares
    m = next(a for a in actions if isinstance(a, Forward)).frame.metrics
    # a target between the region's epsilon now and after its next cloud round
    target = (m["dp.epsilon"] + m["dp.next_epsilon"]) / 2
    fed = FederationPrivacy(mode="untrusted_fog", delta=1e-5, target_epsilon=target)
    meta = fed.close_round({"north": {"metrics": m}})
    # the worst region's epsilon is the Skellam ledger's, not a Gaussian formula's
    assert meta["epsilon"] == pytest.approx(region.ledger.epsilon(), rel=1e-12)
    assert meta["status"] == STOPPED  # the next round would exceed: this version is final
    loose = FederationPrivacy(mode="untrusted_fog", delta=1e-5,
                              target_epsilon=m["dp.next_epsilon"] * 1.01)
    assert loose.close_round({"north": {"metrics": m}})["status"] == "running"


def test_privacy_distributed_fog_restarted_on_a_spent_ledger_opens_no_round(
    tmp_path: Path,
) -> None:
    params = round_params(_fog_settings(tmp_path).privacy, roster_size=3, dim=D)
    probe = DistributedLedger(None, population="north", params=params, delta=1e-5)
    target = (probe.epsilon(3) + probe.epsilon(3, releases=2)) / 2  # pays for one release
    _, _, first = _release(tmp_path, ("a", "b", "c"), target_epsilon=target)
    assert any(isinstance(a, Forward) for a in first)
    # a restart reads the ledger back: the first global model is checked against it before
    # any secure round opens (the dimension comes with the model)
    region = distributed_region(_fog_settings(tmp_path, target_epsilon=target))
    assert region.ledger.releases == 1
    fog = FogRound(FogRoundConfig(federation="fed", fog_id="north", secure=True),
                   FedAvg(), privacy=region)
    actions = fog.on_global_model(
        ModelFrame("fed", 1, np.zeros(D, np.float32), layout=LAYOUT), 0.0)
    assert [type(a) for a in actions] == [PrivacyStop]
    assert fog.state is FogState.BUDGET_SPENT and region.ledger.releases == 1
