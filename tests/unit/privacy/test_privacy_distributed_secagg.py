"""Distributed DP through a real SecAgg+ round (in memory, every message through msgpack): each
edge adds its Skellam share through secure aggregation's ``integer_noise`` hook before masking;
the fog's unmasked sum carries exactly the survivors' shares, and the ledger accounts them."""

from __future__ import annotations

import numpy as np
import pytest

from hierfl.errors import ConfigError, NormBoundError
from hierfl.privacy.distributed import DistributedDP, DistributedLedger
from hierfl.secagg import EdgeSecAgg, FixedPoint, FogSecAgg, SecAggParams
from tests.unit.secagg.secagg_harness import seeded, wire

N, DIM = 5, 20_000


def _region(rounding: str = "nearest") -> tuple[DistributedDP, SecAggParams]:
    dp = DistributedDP.for_region(expected_edges=N, clip_norm=1.0, noise_multiplier=1.5,
                                  dim=DIM, rounding=rounding)
    codec = FixedPoint(clip_norm=1.0, scale=dp.scale, max_summands=N)
    dp.check_codec(codec)
    roster = tuple(f"edge-{i}" for i in range(N))
    return dp, SecAggParams(region="fog-a", round=3, roster=roster, dim=DIM, codec=codec)


def test_privacy_distributed_secagg_round_sum_carries_the_survivors_noise() -> None:
    dp, params = _region()
    rng = np.random.default_rng(11)
    inputs = {e: rng.normal(scale=0.01, size=DIM) for e in params.roster}
    clients = {e: EdgeSecAgg(params, e, random_bytes=seeded(i))
               for i, e in enumerate(params.roster)}
    server = FogSecAgg(params)
    for e in params.roster:
        server.receive(wire(clients[e].advertise()), sender=e)
    rosters = server.close_advertise()
    for e in params.roster:
        server.receive(wire(clients[e].on_roster(wire(rosters[e]))), sender=e)
    forwarded = server.close_share()
    dropped = "edge-4"  # drops before sending its masked input: its share is not in the sum
    hook = dp.secagg_hook()
    for e in params.roster:
        if e == dropped:
            continue
        out = clients[e].on_shares(wire(forwarded[e]), inputs[e], integer_noise=hook)
        server.receive(wire(out), sender=e)
    requests = server.close_masked()
    for e in requests:
        server.receive(wire(clients[e].on_unmask(wire(requests[e]))), sender=e)
    result = server.finish()
    survivors = len(result.survivors)
    assert survivors == N - 1 and dropped not in result.survivors
    # what the fog holds, minus the plain fixed-point sum, is the survivors' noise alone
    plain = sum(params.codec.quantize(inputs[e]) for e in result.survivors)
    noise = dp.decode_integers(result.total) - plain
    assert float(np.var(noise)) == pytest.approx(2 * dp.mu_per_edge * survivors, rel=0.05)
    assert float(np.std(dp.decode_sum(result.total) - plain / dp.scale)) == pytest.approx(
        dp.noise_std(survivors), rel=0.05)
    # the fog accounts the release with the shares that are really in it
    ledger = DistributedLedger(None, population="fog-a", params=dp, delta=1e-5)
    eps = ledger.spend(survivors)
    assert eps > DistributedLedger(None, population="fog-a", params=dp, delta=1e-5).epsilon(N)
    assert ledger.metrics()["dp.surviving_edges"] == float(survivors)


def test_privacy_distributed_secagg_hook_refuses_what_the_noise_does_not_cover() -> None:
    dp, params = _region(rounding="nearest")
    hook = dp.secagg_hook()
    x = np.full(DIM, 1.0 / np.sqrt(DIM))  # norm exactly C
    noised = hook(params.codec.quantize(x))
    assert noised.dtype == np.int64 and noised.shape == (DIM,)
    # quantised at twice the scale: twice the sensitivity the noise was calibrated to
    wrong = FixedPoint(clip_norm=1.0, scale=dp.scale * 2, max_summands=N)
    with pytest.raises(ConfigError, match="scale"):
        dp.check_codec(wrong)
    # every coordinate at its bound C s: each in range, the vector far longer than Delta_2 (an
    # update that was not clipped to C before quantising): refused, never noised and sent
    long = np.full(DIM, int(dp.clip_norm * dp.scale), dtype=np.int64)
    with pytest.raises(NormBoundError, match="Delta_2"):
        hook(long)
    with pytest.raises(ConfigError, match="beyond"):
        hook(long * 2)
    # the conditional-rounding accounting does not cover nearest rounding's slack
    strict = DistributedDP(clip_norm=1.0, scale=4.0, noise_multiplier=1.0, expected_edges=N,
                           dim=64)
    loose = DistributedDP(clip_norm=1.0, scale=4.0, noise_multiplier=1.0, expected_edges=N,
                          dim=64, rounding="nearest")
    assert loose.l2_sensitivity == pytest.approx(4.0 + 4.0)
    assert strict.l2_sensitivity < loose.l2_sensitivity
    with pytest.raises(ConfigError, match="rounding"):
        DistributedDP(clip_norm=1.0, scale=4.0, noise_multiplier=1.0, expected_edges=N, dim=64,
                      rounding="up")
    with pytest.raises(ConfigError, match="sums at most"):
        dp.check_codec(FixedPoint(clip_norm=1.0, scale=dp.scale, max_summands=N - 1))
