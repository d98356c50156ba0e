"""SecAgg+ rounds end to end (in memory, every message through msgpack): the unmasked sum is
the exact fixed-point sum of those who sent, with dropouts at every stage down to the
threshold, and the round is refused, not wrong, below it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hierfl.secagg import FixedPoint, SecAggParams
from hierfl.secagg.errors import SecAggError, SecAggThresholdError
from tests.unit.secagg.secagg_harness import (
    STAGES,
    Region,
    is_exact,
    make_inputs,
    make_params,
    seeded,
)


@pytest.mark.parametrize(("n", "dim"), [(3, 50), (5, 200), (20, 4810), (100, 64)])
def test_unmasked_sum_is_the_exact_fixed_point_sum(n: int, dim: int) -> None:
    params = make_params(n, dim)
    inputs = make_inputs(params, seed=n)
    result = Region(params, seed=n).run(inputs)
    assert result.survivors == params.roster
    assert result.dropped == {}
    assert is_exact(params, result, inputs, params.roster)
    # ... and, decoded, the sum of the clipped float updates to within rounding
    clipped = sum(params.codec.clip(inputs[e]) for e in params.roster)
    assert np.max(np.abs(result.sum - clipped)) <= n * 0.5 / params.codec.scale


def test_graph_cutover_and_threshold_choice() -> None:
    # complete graph up to 32 edges, then k = 2 ceil(log2 n); t = floor(2 (k + 1) / 3) + 1
    assert (make_params(20, 4).k, make_params(20, 4).t) == (19, 14)
    assert (make_params(32, 4).k, make_params(33, 4).k) == (31, 12)
    p = make_params(100, 4)
    assert (p.k, p.t) == (14, 11)
    assert all(len(nb) == 14 for nb in p.graph.values())
    assert all(u in p.graph[v] for u in p.roster for v in p.graph[u])


def test_clipping_bounds_each_contribution() -> None:
    params = make_params(5, 100, clip_norm=0.5)
    inputs = make_inputs(params, seed=1)
    inputs["edge-002"] = np.full(100, 1e6)  # a poisoned update: clipped, not summed as sent
    result = Region(params).run(inputs)
    assert is_exact(params, result, inputs, params.roster)
    assert np.linalg.norm(result.sum) <= 5 * 0.5 + 1e-3


@pytest.mark.parametrize("stage", STAGES)
def test_n5_dropout_at_the_threshold_recovers_the_sum(stage: str) -> None:
    params = make_params(5, 300)  # t = 4: one dropout allowed
    assert params.t == 4
    inputs = make_inputs(params, seed=2)
    result = Region(params, seed=3).run(inputs, drop_after={stage: ["edge-001"]})
    # an edge that dropped after sending its masked input is still in the sum
    senders = tuple(e for e in params.roster if stage == "masked" or e != "edge-001")
    assert result.survivors == senders
    assert result.dropped == {"edge-001": stage}
    assert is_exact(params, result, inputs, senders)


@pytest.mark.parametrize("stage", STAGES)
def test_n5_dropout_below_the_threshold_refuses_the_round(stage: str) -> None:
    params = make_params(5, 300)
    region = Region(params, seed=4)
    with pytest.raises(SecAggThresholdError, match="round refused"):
        region.run(make_inputs(params), drop_after={stage: ["edge-001", "edge-003"]})
    assert region.server.stage == "aborted"


def test_n20_dropouts_spread_over_every_stage_down_to_the_threshold() -> None:
    params = make_params(20, 4810)  # t = 14: six dropouts allowed
    inputs = make_inputs(params, seed=5)
    drops = {"advertise": ["edge-000", "edge-007"], "share": ["edge-011", "edge-019"],
             "masked": ["edge-003", "edge-015"]}
    result = Region(params, seed=5).run(inputs, drop_after=drops)
    senders = [e for e in params.roster if e not in drops["advertise"] + drops["share"]]
    assert list(result.survivors) == senders
    assert is_exact(params, result, inputs, senders)


def test_n20_one_more_dropout_is_refused() -> None:
    params = make_params(20, 100)
    drops = {"advertise": ["edge-000", "edge-007"], "share": ["edge-011", "edge-019"],
             "masked": ["edge-003", "edge-015", "edge-016"]}
    with pytest.raises(SecAggThresholdError):
        Region(params, seed=6).run(make_inputs(params), drop_after=drops)


def test_absent_edges_count_as_dropouts() -> None:
    params = make_params(5, 30)
    inputs = make_inputs(params)
    result = Region(params).run(inputs, absent=["edge-004"])
    assert result.dropped == {"edge-004": "absent"}
    assert is_exact(params, result, inputs, params.roster[:4])
    with pytest.raises(SecAggThresholdError):
        Region(params).run(inputs, absent=["edge-004"], drop_after={"share": ["edge-000"]})


def test_k_regular_region_recovers_dropped_edges_masks() -> None:
    params = make_params(100, 64)
    inputs = make_inputs(params, seed=7)
    drops = {"advertise": ["edge-010"], "share": ["edge-020", "edge-050"], "masked": ["edge-090"]}
    result = Region(params, seed=7).run(inputs, drop_after=drops)
    senders = [e for e in params.roster if e not in ("edge-010", "edge-020", "edge-050")]
    assert list(result.survivors) == senders
    assert is_exact(params, result, inputs, senders)


def test_k_regular_round_is_refused_when_one_neighbourhood_falls_below_t() -> None:
    # 95 of 100 survive, far above t = 11 overall, but one edge's 14 neighbours lose 5: only
    # 10 holders of its self-mask seed remain, so its mask cannot be removed: refused.
    params = make_params(100, 16)
    victim = params.roster[0]
    gone = sorted(params.graph[victim])[:5]
    region = Region(params, seed=8)
    with pytest.raises(SecAggThresholdError, match=r"only 10 survivors hold shares of"):
        region.run(make_inputs(params), drop_after={"share": gone})
    assert region.server.stage == "aborted"
    assert len(region.server._masked) == 95


def test_explicit_degree_and_threshold_are_validated() -> None:
    codec = FixedPoint.for_region(10, 1.0)
    p = SecAggParams("fog-a", 0, tuple(f"e{i}" for i in range(10)), 8, codec, degree=4, threshold=3)
    assert (p.k, p.t) == (4, 3)
    for bad in ({"degree": 3}, {"degree": 4, "threshold": 2}, {"threshold": 11}):
        with pytest.raises(SecAggError, match=r"degree|threshold"):
            SecAggParams("fog-a", 0, tuple(f"e{i}" for i in range(10)), 8, codec, **bad)


def _chi2_p(counts: np.ndarray) -> float:
    """Upper-tail p-value of Pearson's chi-squared against uniform (Wilson-Hilferty)."""
    expected = counts.sum() / counts.size
    stat = float(((counts - expected) ** 2 / expected).sum())
    df = counts.size - 1
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def _ks_stat(words: np.ndarray) -> float:
    u = np.sort(words.astype(np.float64) / 2**32)
    i = np.arange(1, u.size + 1) / u.size
    return float(max(np.max(i - u), np.max(u - (i - 1 / u.size))))


def test_a_masked_input_is_indistinguishable_from_uniform() -> None:
    params = make_params(5, 40_000)
    region = Region(params, seed=11)
    # a maximally structured input: every coordinate the same value
    inputs = {e: np.full(params.dim, 0.004) for e in params.roster}
    region.run(inputs)
    masked = np.frombuffer(region.masked["edge-002"], dtype="<u4")
    encoded = params.codec.encode(inputs["edge-002"])
    top = np.bincount(masked >> 24, minlength=256)
    low = np.bincount(masked & 0xFF, minlength=256)
    assert _chi2_p(top) > 1e-3
    assert _chi2_p(low) > 1e-3
    assert _ks_stat(masked) < 1.95 / math.sqrt(masked.size)  # KS at alpha = 0.001
    # the same tests do tell the unmasked encoding from uniform
    assert _chi2_p(np.bincount(encoded >> 24, minlength=256)) < 1e-12
    assert _ks_stat(encoded) > 1.95 / math.sqrt(encoded.size)


def test_rounds_are_reproducible_with_seeded_randomness_and_differ_without() -> None:
    params = make_params(3, 20)
    inputs = make_inputs(params)
    a, b = Region(params, seed=1), Region(params, seed=1)
    a.run(inputs)
    b.run(inputs)
    assert a.masked["edge-000"] == b.masked["edge-000"]
    c = Region(params, seed=2)
    c.run(inputs)
    assert a.masked["edge-000"] != c.masked["edge-000"]
    assert seeded(1)(8) == seeded(1)(8)
