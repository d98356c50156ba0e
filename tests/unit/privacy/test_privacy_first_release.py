"""A budget that cannot pay for one release is refused at load (else every region stops before
its first aggregate and the federation can never make a version)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hierfl.config import CloudSettings, FogSettings
from hierfl.errors import ConfigError
from hierfl.privacy.accountant import epsilon_for


def test_a_target_below_one_release_is_refused_with_the_cost() -> None:
    one = epsilon_for(noise_multiplier=1.0, sample_rate=1.0, releases=1, delta=1e-5)
    with pytest.raises(ConfigError, match="cannot pay for a single release") as err:
        FogSettings.load(fog_id="f", aggregator="fedavg",
                         privacy={"mode": "trusted_fog", "target_epsilon": one * 0.9})
    assert f"{one:.3f}" in str(err.value)
    with pytest.raises(ConfigError, match="raise noise_multiplier"):
        CloudSettings.load(privacy={"mode": "untrusted_fog", "target_epsilon": one * 0.5})


def test_a_target_that_pays_for_one_release_loads(tmp_path: Path) -> None:
    one = epsilon_for(noise_multiplier=2.0, sample_rate=1.0, releases=1, delta=1e-5)
    s = FogSettings.load(fog_id="f", aggregator="fedavg", spool_dir=tmp_path, privacy={
        "mode": "trusted_fog", "noise_multiplier": 2.0, "target_epsilon": one * 1.01})
    assert s.privacy.target_epsilon == pytest.approx(one * 1.01)
