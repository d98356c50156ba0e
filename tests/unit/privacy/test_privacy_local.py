"""The edge's side of device-level DP: clip (trusted_fog), clip + noise share + its own local
ledger and budget (untrusted_fog)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hierfl.config import EdgeSettings
from hierfl.edge.client import _edge_privacy
from hierfl.errors import PrivacyBudgetExhaustedError
from hierfl.privacy.accountant import epsilon_for
from hierfl.privacy.local import EdgePrivacy


def test_privacy_trusted_fog_edge_only_clips() -> None:
    s = EdgeSettings.load(fog_id="f", edge_id="e", privacy={"mode": "trusted_fog",
                                                            "clip_norm": 0.5})
    p = _edge_privacy(s)
    assert isinstance(p, EdgePrivacy) and p.ledger is None
    big = np.full(100, 1e4, np.float32)
    out = p.process(big)
    assert np.linalg.norm(out) == pytest.approx(0.5, rel=1e-6)
    small = np.full(100, 1e-3, np.float32)
    np.testing.assert_array_equal(p.process(small), small)  # no noise: the fog adds it
    assert p.metrics() == {}
    assert _edge_privacy(EdgeSettings.load(fog_id="f", edge_id="e")) is None  # off


def test_privacy_untrusted_fog_edge_adds_its_share_and_accounts_locally(tmp_path: Path) -> None:
    sigma, clip, n = 2.0, 1.0, 4
    s = EdgeSettings.load(fog_id="f", edge_id="e", privacy={
        "mode": "untrusted_fog", "noise_multiplier": sigma, "clip_norm": clip,
        "expected_updates": n, "ledger_dir": tmp_path,
        "target_epsilon": epsilon_for(noise_multiplier=sigma / 2, sample_rate=1.0, releases=3,
                                      delta=1e-5) * 1.0001})
    p = _edge_privacy(s)
    p.rng = np.random.default_rng(9)
    zero = np.zeros(50_000, np.float32)
    out = p.process(zero)
    # its share: sigma C / sqrt(n) per coordinate (n shares sum to sigma C)
    assert out.std() == pytest.approx(sigma * clip / np.sqrt(n), rel=0.02)
    # local DP: noise multiplier sigma / sqrt(n) per update, on disk before it leaves
    local = epsilon_for(noise_multiplier=sigma / np.sqrt(n), sample_rate=1.0, releases=1,
                        delta=1e-5)
    assert p.metrics()["dp.local_epsilon"] == pytest.approx(local)
    p.process(zero)
    p.process(zero)
    assert p.ledger.releases == 3
    with pytest.raises(PrivacyBudgetExhaustedError):
        p.check_budget()  # a fourth update would exceed: nothing is trained or sent
    with pytest.raises(PrivacyBudgetExhaustedError):
        p.process(zero)
    # a restarted edge reads its ledger: still spent
    again = _edge_privacy(s)
    assert again.ledger.releases == 3
    with pytest.raises(PrivacyBudgetExhaustedError):
        again.check_budget()
