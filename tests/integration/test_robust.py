"""Byzantine edges over real brokers: robust fog rules contain them, FedAvg does not.

The malicious edges are :class:`hierfl.sim.attacks.MaliciousEdge`: they speak the real wire
protocol, so every attack frame below is decoded, validated and (unless a bound refuses it)
aggregated by a real FogService.
"""

from __future__ import annotations

import numpy as np
import pytest

from hierfl.aggregation import capped_weights
from hierfl.cloud.service import CloudService
from hierfl.edge import EdgeClient
from hierfl.model import ModelStore
from hierfl.sim.attacks import MaliciousEdge
from tests.integration.fed import (
    Topology,
    make_fogs,
    running,
    settings_for,
    spy_updates,
    tiny_task,
    wait_for,
    write_initial,
)
from tests.integration.test_federation import expected_next

pytestmark = pytest.mark.integration

BAD = {"nbad", "sbad"}


def two_fogs_one_liar_each() -> Topology:
    return Topology({"north": ["n0", "n1", "n2", "nbad"], "south": ["s0", "s1", "s2", "sbad"]})


def last_round(s, n: int):
    """Edge settings that exit after ``n`` updates: nothing is in flight when the test stops.

    (A cancellation that races a PUBACK is lost inside ``asyncio.wait_for`` on Python 3.11, and
    an edge that lost it would wait for the next model forever.)
    """
    return s.model_copy(update={"max_rounds": n})


def edges_for(edge_settings, attack: str, rounds: int) -> list[EdgeClient]:
    return [
        MaliciousEdge(last_round(s, rounds), tiny_task(i), attack) if s.edge_id in BAD
        else EdgeClient(last_round(s, rounds), tiny_task(i))
        for i, s in enumerate(edge_settings)
    ]


async def run_attacked_federation(
    mqtt_broker, kafka_broker, fed, tmp_path, aggregator, params, cloud_aggregator
):
    topo = two_fogs_one_liar_each()
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, fed, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=2,
        # quorum = the 4 edges of each fog: nnm_f = 1 cannot aggregate fewer than 3 updates,
        # and settings refuse a quorum a rule cannot aggregate
        fog_overrides={"aggregator": aggregator, "aggregator_params": params, "quorum": 4},
        cloud_overrides={"aggregator": cloud_aggregator},
    )
    cloud = CloudService(cloud_s)
    fogs = make_fogs(fog_s)
    async with (
        spy_updates(mqtt_broker.url, fed, list(topo.fogs)) as spy,
        running(cloud, *fogs, *edges_for(edge_s, "scale", rounds=2)),
    ):
        await wait_for(cloud.finished.is_set, 60, "two cloud rounds")
    return ModelStore(tmp_path / "store"), fogs, spy.updates


@pytest.mark.parametrize(
    ("aggregator", "params", "cloud_aggregator"),
    [
        ("median", {}, "fedavg"),
        ("trimmed_mean", {"trim_ratio": 0.25}, "median"),
        ("median", {"nnm_f": 1}, "fedavg"),
        ("fedavg", {}, "fedavg"),
    ],
)
async def test_scaled_updates_one_per_fog(
    mqtt_broker, kafka_broker, unique_id, tmp_path, aggregator, params, cloud_aggregator
):
    store, fogs, updates = await run_attacked_federation(
        mqtt_broker, kafka_broker, unique_id, tmp_path, aggregator, params, cloud_aggregator
    )

    assert store.versions() == [0, 1, 2]
    for fog in fogs:  # the attack frames are valid: accepted, then out-voted (or not)
        assert not fog.metrics.rejected
        assert all(len(a.contributors) == 4 for a in fog.forwarded)
    for v in range(2):
        w = store.load(v).weights.astype(np.float64)
        step = store.load(v + 1).weights.astype(np.float64) - w
        ups = [u for u in updates if u.base_version == v]
        honest = [u for u in ups if u.edge_id not in BAD]
        assert len(honest) == 6
        assert len(ups) == 8
        # The honest-only reference: the same hierarchy and rule (FedAvg) without the liars.
        ref = expected_next(w, honest, 1) - w
        h = np.stack([u.delta for u in honest]).astype(np.float64)
        error = np.linalg.norm(step - ref)
        if aggregator == "fedavg":
            # 1 of 4 updates at 100x the honest size (weights 31/82, 59/194): the attack wins.
            assert error > 10 * np.linalg.norm(ref), (v, error)
            continue
        if params.get("nnm_f"):
            # Nearest-neighbour mixing: the liar (100x) is none of the 3 nearest neighbours of
            # an honest update, so each honest update mixes into its fog's honest mean, and the
            # median of 4 mixed updates, 3 of them equal, is that mean exactly. The cloud then
            # weights each fog by 4 x the median claim of its contributors.
            parts, shares = [], []
            for fog in ("north", "south"):
                mine = [u for u in ups if u.fog_id == fog]
                parts.append(np.mean([u.delta for u in mine if u.edge_id not in BAD], axis=0))
                shares.append(len(mine) * float(np.median([u.num_samples for u in mine])))
            exact = np.average(np.stack(parts).astype(np.float64), axis=0, weights=shares)
            np.testing.assert_allclose(step, exact, rtol=1e-4, atol=1e-6)
        # Bound. At each fog 1 of n = 4 values per coordinate is Byzantine. The median of 4
        # (mean of the middle two) and the 25 %-trimmed mean (drops the lowest and highest)
        # then only average values lying between two honest values of that fog, and the
        # cloud's rule (FedAvg, or the median of 2 = their mean) is a convex combination of
        # the fogs' results. So every coordinate of the robust step lies within the range of
        # the honest updates' values, however large the attack. The honest FedAvg reference
        # lies in that range too, hence the norm bound.
        lo, hi = h.min(0), h.max(0)
        assert np.all(step >= lo - 1e-6), v
        assert np.all(step <= hi + 1e-6), v
        assert error <= np.linalg.norm(hi - lo) + 1e-6
        # ... and the attacker's own contribution (100x) is nowhere near it.
        bad = np.stack([u.delta for u in ups if u.edge_id in BAD]).astype(np.float64)
        assert error < 0.05 * np.linalg.norm(bad, axis=1).min()


# --- the weighting attack: one liar claims 10**6 samples ------------------------------------


async def run_weighting(mqtt_broker, kafka_broker, fed, tmp_path, fog_overrides):
    topo = Topology({"north": ["n0", "n1", "n2", "nbad"]})
    write_initial(tmp_path / "init.npz")
    cloud_s, (fog_s,), edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, fed, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=1, fog_overrides=fog_overrides,
        # the fog forwards the lie's count in its total: the cloud's per-edge cap (100,000 by
        # default) would refuse the aggregate; these tests are about the fog's rules
        cloud_overrides={"max_samples_per_edge": None},
    )
    cloud = CloudService(cloud_s)
    (fog,) = make_fogs([fog_s])
    honest = [EdgeClient(last_round(s, 1), tiny_task(i)) for i, s in enumerate(edge_s[:3])]
    liar = MaliciousEdge(last_round(edge_s[3], 1), tiny_task(3), "weighting")

    def judged() -> int:
        return fog.metrics.counters["accepted"] + sum(fog.metrics.rejected.values())

    async with spy_updates(mqtt_broker.url, fed, ["north"]) as spy, running(cloud, fog, liar):
        # The liar goes first, alone, so its update meets an open round (never a closed one):
        # what happens to it is decided by validation and the rule, not by timing.
        await wait_for(lambda: judged() >= 1, 30, "the liar's update judged")
        async with running(*honest):
            await wait_for(cloud.finished.is_set, 60, "one cloud round")
    v0 = [u for u in spy.updates if u.base_version == 0]
    (lie,) = [u for u in v0 if u.edge_id == "nbad"]
    assert lie.num_samples == 10**6
    good = sorted((u for u in v0 if u.edge_id != "nbad"), key=lambda u: u.edge_id)
    assert len(good) == 3
    (agg,) = fog.forwarded
    return fog, agg, ModelStore(tmp_path / "store"), good, lie


async def test_weighting_attack_is_refused_by_max_samples(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    fog, agg, store, good, _ = await run_weighting(
        mqtt_broker, kafka_broker, unique_id, tmp_path,
        {"max_samples": 10_000, "min_updates": 3},
    )

    assert fog.metrics.rejected == {"validation.samples": 1}
    assert agg.contributors == ("n0", "n1", "n2")
    w0 = store.load(0).weights.astype(np.float64)
    np.testing.assert_allclose(store.load(1).weights, expected_next(w0, good, 1),
                               rtol=1e-5, atol=1e-6)


async def test_weighting_attack_is_capped_by_fedavg_max_weight_fraction(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    _, agg, store, good, lie = await run_weighting(
        mqtt_broker, kafka_broker, unique_id, tmp_path,
        # max_samples raised to admit the lie (the default, 100,000, refuses it)
        {"aggregator": "fedavg", "aggregator_params": {"max_weight_fraction": 0.25},
         "max_samples": 10**6},
    )

    assert "nbad" in agg.contributors  # accepted: 10**6 is within this max_samples
    ups = sorted([*good, lie], key=lambda u: u.edge_id)  # the fog's (sorted) order
    claims = np.array([u.num_samples for u in ups], np.float64)
    shares = capped_weights(claims, max_weight_fraction=0.25)
    assert shares[[u.edge_id for u in ups].index("nbad")] == pytest.approx(0.25)  # not 0.9999
    expected = shares @ np.stack([u.delta for u in ups]).astype(np.float64)
    np.testing.assert_allclose(agg.delta, expected, rtol=1e-5, atol=1e-6)
    w0 = store.load(0).weights
    np.testing.assert_allclose(store.load(1).weights - w0, expected, rtol=1e-4, atol=1e-5)


async def test_weighting_attack_is_ignored_by_the_median(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    _, agg, _, good, lie = await run_weighting(
        mqtt_broker, kafka_broker, unique_id, tmp_path,
        {"aggregator": "median", "max_samples": 10**6},
    )

    assert "nbad" in agg.contributors
    h = np.stack([u.delta for u in good])
    # median of 4 with one liar: between two honest values, whatever the claimed count
    assert np.all(agg.delta >= h.min(0) - 1e-6)
    assert np.all(agg.delta <= h.max(0) + 1e-6)
    assert np.linalg.norm(agg.delta) < 0.5 * np.linalg.norm(lie.delta)  # the 10x delta lost
