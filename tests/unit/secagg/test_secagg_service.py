"""The edge's side of the services' hook: what it offers to a secure round (FedAvg's weight
inside the masked vector, clipped), refusals counted, a robust fog noticed, a missing update
dropping the edge out of the round."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hierfl.config import EdgeSettings
from hierfl.secagg.driver import BeginRound
from hierfl.secagg.errors import SecAggError
from hierfl.secagg.service import EdgeSecureLink, codec_clip, round_id, weighted_vector
from hierfl.security.trust import TrustStore
from hierfl.wire.signing import Signer


def link(**secagg: object) -> EdgeSecureLink:
    settings = EdgeSettings.load(federation="f", fog_id="g", edge_id="e0",
                                 secagg={"mode": "secure", "masked_s": 0.2, **secagg})
    key = Ed25519PrivateKey.generate()
    security = SimpleNamespace(signer=Signer("edge/g/e0", key, "f"),
                               trust=TrustStore.from_parties({"edge/g/e0": key.public_key()},
                                                             "f"))
    return EdgeSecureLink(settings, security)


def begin(version: int, seq: int, dim: int) -> BeginRound:
    return BeginRound("g", round_id(version, seq), ("e0", "e1", "e2"), dim, 1.0, 1.0, 2, 2)


async def test_offers_the_weighted_clipped_update_for_its_round() -> None:
    lk = link(clip_norm=1.0, max_weight=100)
    delta = np.array([3.0, 4.0], dtype=np.float32)  # norm 5: clipped to 1
    lk.offer(2, 5, delta, num_samples=250)  # weight capped at 100
    got = await lk._update(begin(2, 5, 3))
    np.testing.assert_allclose(got, [60.0, 80.0, 100.0])
    np.testing.assert_array_equal(got, weighted_vector(delta, 250, lk.settings.secagg))
    assert codec_clip(lk.settings.secagg) == pytest.approx(100 * np.hypot(1.0, 1.0))


async def test_unweighted_offers_the_update_as_is() -> None:
    lk = link(weighted=False)
    lk.offer(0, 1, np.array([0.5, -0.5], dtype=np.float32), num_samples=7)
    np.testing.assert_array_equal(await lk._update(begin(0, 1, 2)), [0.5, -0.5])


async def test_no_update_for_the_round_drops_the_edge_out() -> None:
    lk = link()
    lk.offer(0, 1, np.zeros(2, dtype=np.float32))
    with pytest.raises(SecAggError, match="drops out"):
        await lk._update(begin(0, 2, 3))


def test_a_non_finite_update_is_refused_and_counted(caplog) -> None:
    lk = link()
    lk.offer(0, 1, np.array([np.nan, 1.0], dtype=np.float32))
    assert lk._deltas == {} and lk.driver.rejected["secagg"] == 1


def test_an_edge_whose_fog_never_runs_a_secure_round_says_so_once(caplog) -> None:
    lk = link()
    with caplog.at_level(logging.WARNING, logger="hierfl.secagg.service"):
        for seq in range(1, 6):
            lk.offer(0, seq, np.zeros(2, dtype=np.float32))
    assert sum("check that the fog is secure" in r.message for r in caplog.records) == 1
