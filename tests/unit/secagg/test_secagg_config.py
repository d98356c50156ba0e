"""The [secagg] settings: a secure fog refuses a rule it cannot run on masked inputs, and
secure mode needs signatures (the key advertisements are signed)."""

from __future__ import annotations

import pytest

from hierfl.config import EdgeSettings, FogSettings
from hierfl.errors import ConfigError


@pytest.mark.parametrize("rule", ["median", "krum", "trimmed_mean", "clipped_trimmed_mean",
                                  "geometric_median", "norm_bounded"])
def test_a_secure_fog_refuses_a_rule_it_cannot_run_on_masked_inputs(rule: str) -> None:
    with pytest.raises(ConfigError, match=rf"cannot use aggregator '{rule}'.*masked sum"):
        FogSettings.load(fog_id="g", aggregator=rule, secagg={"mode": "secure"},
                         min_updates=9, quorum=9)


def test_a_secure_fog_runs_fedavg_and_a_robust_fog_keeps_its_rule() -> None:
    s = FogSettings.load(fog_id="g", aggregator="fedavg", round_timeout_s=120,
                         secagg={"mode": "secure", "clip_norm": 2.0})
    assert (s.secagg.mode, s.secagg.clip_norm) == ("secure", 2.0)
    assert FogSettings.load(fog_id="g", aggregator="median").secagg.mode == "robust"


def test_secure_mode_needs_signatures_at_fog_and_edge() -> None:
    with pytest.raises(ConfigError, match="signing"):
        FogSettings.load(fog_id="g", aggregator="fedavg", secagg={"mode": "secure"},
                         security={"signing": "off"})
    with pytest.raises(ConfigError, match="signing"):
        EdgeSettings.load(fog_id="g", edge_id="e", secagg={"mode": "secure"},
                          security={"signing": "off"})


def test_scale_must_be_a_power_of_two() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        FogSettings.load(fog_id="g", aggregator="fedavg", secagg={"scale": 1000.0})


def test_a_secure_round_must_fit_in_the_fog_round() -> None:
    with pytest.raises(ConfigError, match="round_timeout_s"):
        FogSettings.load(fog_id="g", aggregator="fedavg", round_timeout_s=30,
                         secagg={"mode": "secure"})
    s = FogSettings.load(fog_id="g", aggregator="fedavg", round_timeout_s=30,
                         secagg={"mode": "secure", "advertise_s": 5, "share_s": 5,
                                 "masked_s": 10, "unmask_s": 5})
    assert s.secagg.masked_s == 10
