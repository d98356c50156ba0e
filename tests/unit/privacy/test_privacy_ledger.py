"""The persisted ledger, the settings refused at load, the fog's budget stop and sampling in
its round machine, and the cloud's federation account (worst region, stop, resume)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hierfl.aggregation import FedAvg
from hierfl.config import CloudSettings, EdgeSettings, FogSettings
from hierfl.errors import ConfigError, PrivacyBudgetExhaustedError
from hierfl.fog.round import FogRound, FogRoundConfig, FogState, Forward, PrivacyStop
from hierfl.privacy.accountant import epsilon_for
from hierfl.privacy.federation import STOPPED, FederationPrivacy
from hierfl.privacy.ledger import LEDGER_FILE, LedgerCorruptError, PrivacyLedger
from hierfl.privacy.region import NotSampledError, RegionPrivacy
from hierfl.privacy.wrappers import DPAggregator
from hierfl.wire.frames import LayoutEntry, ModelFrame, UpdateFrame

D = 4


def ledger(path: Path | None, **kw: Any) -> PrivacyLedger:
    base: dict[str, Any] = {"population": "north", "noise_multiplier": 1.0, "sample_rate": 1.0,
                            "delta": 1e-5}
    return PrivacyLedger(path, **{**base, **kw})


# --- ledger ---------------------------------------------------------------------------------


def test_privacy_ledger_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / LEDGER_FILE
    a = ledger(path)
    a.spend(3)
    assert not list(path.parent.glob(".ledger-*"))  # the temporary file was renamed
    b = ledger(path)  # a restart
    assert b.releases == 3
    assert b.epsilon() == pytest.approx(epsilon_for(noise_multiplier=1.0, sample_rate=1.0,
                                                    releases=3, delta=1e-5))
    # sigma changed between restarts: the old releases stay and compose with the new ones
    c = ledger(path, noise_multiplier=2.0)
    c.spend(2)
    d = ledger(path, noise_multiplier=2.0)
    assert d.releases == 5
    assert d.epsilon() > b.epsilon()
    assert json.loads(path.read_text())["groups"][0] == {
        "noise_multiplier": 1.0, "sample_rate": 1.0, "releases": 3}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", "cannot be read"),
        ('{"version": 1, "population": "south", "groups": []}', "ledger of 'south'"),
        ('{"version": 9}', "malformed"),
        ('{"version": 1, "population": "north", "groups": [{"noise_multiplier": 1, '
         '"sample_rate": 1, "releases": -4}]}', "bad release group"),
        ("[]", "malformed"),
    ],
)
def test_privacy_corrupt_ledger_is_a_typed_error_never_a_reset(
    tmp_path: Path, content: str, words: str
) -> None:
    path = tmp_path / LEDGER_FILE
    path.write_text(content)
    with pytest.raises(LedgerCorruptError, match=words) as info:
        ledger(path)
    assert info.value.reason == "privacy.ledger"
    assert path.read_text() == content  # left for the operator


# --- settings -------------------------------------------------------------------------------


def fog(**kw: Any) -> FogSettings:
    base: dict[str, Any] = {"fog_id": "f", "aggregator": "fedavg", "spool_dir": "spool"}
    return FogSettings.load(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"privacy": {"mode": "trusted_fog", "noise_multiplier": 0}}, "sigma <= 0 adds no noise"),
        ({"privacy": {"mode": "trusted_fog", "noise_multiplier": -1}}, "must be > 0"),
        ({"privacy": {"mode": "trusted_fog", "sample_rate": 1.2}}, r"must be in \(0, 1\]"),
        ({"privacy": {"mode": "trusted_fog", "delta": 0.01, "population": 100}},
         "below 1/population"),
        ({"privacy": {"mode": "trusted_fog", "delta": 0.3}, "allowed_edges": ["a", "b", "c", "d"]},
         r"1/4 edges in this region"),
        ({"privacy": {"mode": "trusted_fog"}, "aggregator": "trimmed_mean"},
         "breaks the accounting"),
        ({"privacy": {"mode": "untrusted_fog"}, "aggregator": "median"}, "order statistic"),
        ({"privacy": {"mode": "trusted_fog"}, "aggregator": "norm_bounded"},
         "norm_bounded .with a fixed max_norm"),
        ({"privacy": {"mode": "trusted_fog"}, "spool_dir": None}, "never reset the spent budget"),
        ({"privacy": {"mode": "trusted_fog", "sample_rate": 0.5}}, "needs the region's edges"),
        ({"privacy": {"mode": "trusted_fog", "adaptive_clip": True,
                      "count_noise_multiplier": 0.1}}, "too small"),
    ],
)
def test_privacy_settings_refused_with_a_reason(kw: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        fog(**kw)


def test_privacy_off_by_default_and_allowed_rules_load() -> None:
    assert fog().privacy.mode == "off"
    assert not fog().privacy.enabled
    assert FogSettings.load(fog_id="f").privacy.mode == "off"  # default rule fine when off
    assert CloudSettings.load().privacy.mode == "off"
    assert EdgeSettings.load(fog_id="f", edge_id="e").privacy.mode == "off"
    fog(privacy={"mode": "trusted_fog"})
    fog(privacy={"mode": "trusted_fog"}, aggregator="norm_bounded",
        aggregator_params={"max_norm": 2.0})
    # the cloud's rule is free: its inputs are already private releases
    CloudSettings.load(privacy={"mode": "trusted_fog"}, aggregator="median")
    with pytest.raises(ConfigError, match="delta"):
        EdgeSettings.load(fog_id="f", edge_id="e", privacy={"mode": "record", "delta": 1.0})


# --- the fog's round: releases, budget stop, sampling ----------------------------------------


LAYOUT = (LayoutEntry("w", (D,)),)


def region(tmp_path: Path, target: float | None, *, k2: int = 1, q: float = 1.0,
           population: tuple[str, ...] = ()) -> RegionPrivacy:
    return RegionPrivacy(ledger(tmp_path / LEDGER_FILE, sample_rate=q), clip_norm=1.0,
                         target_epsilon=target, k2=k2, population=population,
                         rng=np.random.default_rng(0))


def dp_round(priv: RegionPrivacy, *, k2: int = 1, min_updates: int = 2) -> FogRound:
    cfg = FogRoundConfig(federation="fed", fog_id="north", min_updates=min_updates, k2=k2,
                         round_timeout_s=10.0)
    agg = DPAggregator(FedAvg(), clip_norm=1.0, noise_multiplier=1.0,
                       expected_updates=min_updates, rng=np.random.default_rng(1))
    return FogRound(cfg, agg, privacy=priv)


def model(v: int) -> ModelFrame:
    return ModelFrame("fed", v, np.zeros(D, np.float32), layout=LAYOUT)


def upd(edge: str, seq: int, v: int = 0) -> UpdateFrame:
    return UpdateFrame("fed", "north", edge, v, seq, 10, np.full(D, 5.0, np.float32), {})


def test_privacy_fog_stops_at_the_release_the_budget_pays_for(tmp_path: Path) -> None:
    e = [epsilon_for(noise_multiplier=1.0, sample_rate=1.0, releases=n, delta=1e-5)
         for n in range(8)]
    # k2 = 2: a cloud round costs 2 releases; the budget pays for 5 releases, so 2 cloud
    # rounds (4 releases) and not a third (it would need 6): the fog does not start it
    priv = region(tmp_path, (e[5] + e[6]) / 2, k2=2)
    r = dp_round(priv, k2=2)
    forwards = []
    for v in range(3):
        acts = r.on_global_model(model(v), 0.0)
        if r.state is FogState.BUDGET_SPENT:
            assert any(isinstance(a, PrivacyStop) for a in acts)
            break
        for _ in range(2):
            seq = r.seq
            r.on_update(upd("a", seq, v), 0.0)
            acts = r.on_update(upd("b", seq, v), 0.0)
        forwards += [a.frame for a in acts if isinstance(a, Forward)]
    assert v == 2 and r.state is FogState.BUDGET_SPENT
    assert priv.ledger.releases == 4
    assert [f.metrics["dp.releases"] for f in forwards] == [2.0, 4.0]
    assert forwards[-1].metrics["dp.epsilon"] == pytest.approx(e[4])
    assert forwards[-1].metrics["dp.clip_norm"] == 1.0
    # clipped: each update (norm 10) counts for 1; what arrives now is refused, counted
    with pytest.raises(PrivacyBudgetExhaustedError):
        r.check_update(upd("a", r.seq, 2))
    # a restart reads the ledger: still spent
    again = dp_round(region(tmp_path, (e[5] + e[6]) / 2, k2=2), k2=2)
    again.on_global_model(model(2), 0.0)
    assert again.state is FogState.BUDGET_SPENT


def test_privacy_poisson_sampling_refuses_edges_not_drawn(tmp_path: Path) -> None:
    edges = tuple(f"e{i}" for i in range(40))
    priv = region(tmp_path, None, q=0.25, population=edges)
    r = dp_round(priv, min_updates=10)
    r.on_global_model(model(0), 0.0)
    sampled = priv.sampled
    assert sampled is not None and 0 < len(sampled) < 40
    out = next(e for e in edges if e not in sampled)
    with pytest.raises(NotSampledError):
        r.check_update(upd(out, r.seq))
    # the round closes once its whole sample arrived
    seq = r.seq
    for e in sorted(sampled):
        acts = r.on_update(upd(e, seq), 0.0)
    assert any(isinstance(a, Forward) for a in acts)
    assert priv.ledger.releases == 1


# --- the cloud: the worst region, the stop, the resume ---------------------------------------


def fogs_report(releases: dict[str, int], sigma: dict[str, float]) -> dict[str, Any]:
    return {f: {"metrics": {"dp.releases": float(n), "dp.noise_multiplier": sigma[f],
                            "dp.sample_rate": 1.0, "dp.clip_norm": 1.0, "dp.k2": 1.0,
                            "loss": 0.5}}
            for f, n in releases.items()}


def test_privacy_federation_epsilon_is_the_worst_regions_and_it_stops() -> None:
    sig = {"a": 2.0, "b": 1.0}
    eb = [epsilon_for(noise_multiplier=1.0, sample_rate=1.0, releases=n, delta=1e-5)
          for n in range(6)]
    fed = FederationPrivacy(mode="trusted_fog", delta=1e-5, target_epsilon=(eb[3] + eb[4]) / 2)
    meta = fed.close_round(fogs_report({"a": 1, "b": 1}, sig))
    assert meta["epsilon"] == pytest.approx(eb[1])  # b, the less noisy region, is the worst
    assert meta["status"] == "running"
    # a round that only one region reported keeps the other's account
    fed.close_round(fogs_report({"a": 2}, sig))
    assert fed.epsilon() == pytest.approx(eb[1])
    meta = fed.close_round(fogs_report({"a": 3, "b": 3}, sig))
    assert meta["status"] == STOPPED  # b's 4th release would exceed
    assert meta["regions"]["b"]["releases"] == 3
    resumed = FederationPrivacy.restore(meta, mode="trusted_fog", delta=1e-5,
                                        target_epsilon=fed.target_epsilon)
    assert resumed.stopped and resumed.epsilon() == pytest.approx(eb[3])


def test_privacy_fixed_size_sampling_draws_exactly_m_and_is_accounted_replace_one(
    tmp_path: Path,
) -> None:
    """Fixed-size sampling (m of N without replacement) is accounted with dp-accounting's
    SampledWithoutReplacementDpEvent under the replace-one relation (RDP only): a different,
    larger epsilon than Poisson sampling at the same q, never silently the Poisson one."""
    edges = tuple(f"e{i}" for i in range(40))
    led = ledger(tmp_path / LEDGER_FILE, sample_rate=0.25, fixed_from=40)
    priv = RegionPrivacy(led, clip_norm=1.0, target_epsilon=None, population=edges,
                         rng=np.random.default_rng(2))
    r = dp_round(priv, min_updates=10)
    r.on_global_model(model(0), 0.0)
    draws = []
    for v in range(5):
        sampled = priv.sampled
        assert sampled is not None and len(sampled) == 10  # exactly round(0.25 x 40)
        draws.append(sampled)
        seq = r.seq
        for e in sorted(sampled):
            acts = r.on_update(upd(e, seq, v), 0.0)
        assert any(isinstance(a, Forward) for a in acts)
        r.on_global_model(model(v + 1), 0.0)
    assert len(set(draws)) > 1  # a fresh draw every round
    fixed = epsilon_for(noise_multiplier=1.0, sample_rate=0.25, releases=5, delta=1e-5,
                        fixed_from=40)
    poisson = epsilon_for(noise_multiplier=1.0, sample_rate=0.25, releases=5, delta=1e-5)
    assert led.epsilon() == pytest.approx(fixed)
    assert fixed > poisson
    assert json.loads((tmp_path / LEDGER_FILE).read_text())["groups"][0]["fixed_from"] == 40
    # a ledger cannot mix the two relations; PLD cannot account fixed-size samples
    with pytest.raises(ConfigError, match="cannot be composed"):
        ledger(tmp_path / LEDGER_FILE, sample_rate=0.25)
    with pytest.raises(ConfigError, match="RDP accountant only"):
        epsilon_for(noise_multiplier=1.0, sample_rate=0.25, releases=1, delta=1e-5,
                    method="pld", fixed_from=40)
    with pytest.raises(ConfigError, match="accountant = 'rdp'"):
        fog(privacy={"mode": "trusted_fog", "sampling": "fixed", "sample_rate": 0.5,
                     "accountant": "pld"}, allowed_edges=["a", "b"])
