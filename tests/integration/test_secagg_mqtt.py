"""SecAgg+ wired over a real MQTT broker, every message in a signed envelope: the unmasked sum
is the exact fixed-point sum; dropouts at every stage, at and just below the threshold; what the
fog receives from one edge looks uniform; a dishonest fog's requests and key substitutions are
refused by the honest edges; hostile uplink messages are counted and never end the round."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy import stats

from hierfl import topics
from hierfl.secagg.driver import FogSecAggDriver, StageDeadlines
from hierfl.secagg.envelope import seal
from hierfl.secagg.errors import SecAggThresholdError
from hierfl.secagg.messages import UnmaskRequest
from hierfl.secagg.server import FogSecAgg
from hierfl.wire.signing import Signer
from tests.integration.secagg_net import FOG, edge_ids, region

pytestmark = pytest.mark.integration

ROUND_TIMEOUT = 60  # generous: the suite shares 2 cores


def plain_sum(reg: Any, survivors: list[str], codec: Any) -> np.ndarray:
    total = np.zeros(len(next(iter(reg.updates.values()))), dtype=np.uint32)
    for e in survivors:
        total += codec.encode(reg.updates[e])
    return total


@pytest.mark.parametrize("n", [3, 5, 20])
async def test_unmasked_sum_equals_the_plain_sum_exactly(mqtt_broker, unique_id, tmp_path, n):
    async with region(mqtt_broker.url, unique_id, tmp_path / "pki", n, 300) as reg:
        result = await asyncio.wait_for(reg.fog.run_round(1, edge_ids(n), 300), ROUND_TIMEOUT)
        codec = reg.fog.begin(1, edge_ids(n), 300).params().codec
        assert result.survivors == tuple(edge_ids(n))
        assert result.dropped == {}
        want = plain_sum(reg, edge_ids(n), codec)
        np.testing.assert_array_equal(result.total, want)
        np.testing.assert_array_equal(result.sum, codec.decode_sum(want))
        floats = sum(reg.updates.values())
        assert np.max(np.abs(result.sum - floats)) <= n / (2 * codec.scale)
        assert reg.fog.rejected == {}
        assert all(d.completed == [1] and not d.rejected for d in reg.edges.values())


# n = 5: complete graph, k = 4, t = 4: one edge may drop, two may not.
@pytest.mark.parametrize("stage", ["advertise", "shares", "masked", "consistency"])
@pytest.mark.parametrize("drops", [1, 2])
async def test_dropouts_at_each_stage_at_and_below_the_threshold(
    mqtt_broker, unique_id, tmp_path, stage, drops
):
    ids = edge_ids(5)
    gone = ids[1:1 + drops]
    async with region(mqtt_broker.url, unique_id, tmp_path / "pki", 5, 64,
                      stop_after=dict.fromkeys(gone, stage),
                      deadlines=StageDeadlines(3, 3, 3, 3)) as reg:
        run = reg.fog.run_round(1, ids, 64)
        if drops == 2 and stage != "masked":
            with pytest.raises(SecAggThresholdError):
                await asyncio.wait_for(run, ROUND_TIMEOUT)
            assert reg.fog.refused["secagg.threshold"] == 1
            assert reg.fog.completed == 0
            return
        if drops == 2:  # both inputs are in the sum, but only 3 of 5 sign or answer: refused
            with pytest.raises(SecAggThresholdError):
                await asyncio.wait_for(run, ROUND_TIMEOUT)
            assert reg.fog.refused["secagg.threshold"] == 1
            return
        result = await asyncio.wait_for(run, ROUND_TIMEOUT)
        codec = reg.fog.begin(1, ids, 64).params().codec
        # an edge that sent its masked input and then vanished is still in the sum
        # an edge that sent its masked input and then vanished (before or after signing the
        # survivor set) is still in the sum
        late = stage in ("masked", "consistency")
        survivors = ids if late else [e for e in ids if e not in gone]
        assert list(result.survivors) == survivors
        assert result.dropped == {gone[0]: {"advertise": "advertise", "shares": "share",
                                            "masked": "masked", "consistency": "check"}[stage]}
        np.testing.assert_array_equal(result.total, plain_sum(reg, survivors, codec))


async def test_what_the_fog_receives_from_one_edge_looks_uniform(
    mqtt_broker, unique_id, tmp_path
):
    dim = 40_000
    ids = edge_ids(3)
    constant = {e: np.full(dim, 0.004) for e in ids}  # norm 0.8 < clip 1: not clipped
    async with region(mqtt_broker.url, unique_id, tmp_path / "pki", 3, dim, updates=constant,
                      tap_fog=True, seed=7) as reg:
        result = await asyncio.wait_for(reg.fog.run_round(1, ids, dim), ROUND_TIMEOUT)
    codec = reg.fog.begin(1, ids, dim).params().codec
    np.testing.assert_array_equal(result.total, plain_sum(reg, ids, codec))
    masked = []
    for topic, payload in reg.captured["fog"]:
        body = msgpack.unpackb(msgpack.unpackb(payload)["body"])
        if topic == topics.secagg_up(unique_id, FOG, "e00") and body["kind"] == "masked":
            masked.append(np.frombuffer(body["masked"], dtype="<u4"))
    (words,) = masked  # exactly what crossed the broker from e00
    plain = codec.encode(constant["e00"])
    for w, expect_uniform in ((words, True), (plain, False)):
        top = np.bincount((w >> 24).astype(np.int64), minlength=256)
        low = np.bincount((w & 0xFF).astype(np.int64), minlength=256)
        p_top, p_low = stats.chisquare(top).pvalue, stats.chisquare(low).pvalue
        p_ks = stats.kstest(w / 2.0**32, "uniform").pvalue
        if expect_uniform:
            assert min(p_top, p_low, p_ks) > 0.001, (p_top, p_low, p_ks)
        else:
            assert max(p_top, p_low, p_ks) < 0.001


class _BothSharesFog(FogSecAgg):
    """A dishonest fog: tells every edge that e01 both sent and dropped, asking for the
    self-mask share and the secret-key share of e01 (which would unmask its input)."""

    def close_check(self) -> dict[str, UnmaskRequest]:
        requests = super().close_check()
        out = {}
        for u, r in requests.items():
            keys = r.secret_key_of if u == "e01" else (*r.secret_key_of, "e01")
            out[u] = UnmaskRequest(r.region, r.round, u, r.survivors, r.self_mask_of, keys,
                                   r.signatures)
        self._requests = out
        return out


class _BothSharesDriver(FogSecAggDriver):
    round_class = _BothSharesFog


async def test_a_malicious_fog_asking_for_both_seeds_of_one_edge_is_refused(
    mqtt_broker, unique_id, tmp_path
):
    ids = edge_ids(5)
    async with region(mqtt_broker.url, unique_id, tmp_path / "pki", 5, 32,
                      fog_class=_BothSharesDriver, deadlines=StageDeadlines(10, 10, 10, 2),
                      tap_fog=True) as reg:
        with pytest.raises(SecAggThresholdError):
            await asyncio.wait_for(reg.fog.run_round(1, ids, 32), ROUND_TIMEOUT)
        honest = [e for e in ids if e != "e01"]
        for e in honest:
            assert reg.edges[e].rejected["secagg.privacy"] == 1, reg.edges[e].rejected
            assert reg.edges[e].completed == []
        # e01's own request was well-formed: it answers; nobody revealed a key share of e01
        assert reg.edges["e01"].completed == [1]
        reveals = [msgpack.unpackb(msgpack.unpackb(p)["body"]) for t, p in reg.captured["fog"]]
        reveals = [b for b in reveals if b["kind"] == "reveal"]
        assert [b["sender"] for b in reveals] == ["e01"]
        assert all("e01" not in b["secret_key_shares"] for b in reveals)


class _KeySwapDriver(FogSecAggDriver):
    """A man in the middle: relays to e00 an advertisement of e01 whose keys it replaced."""

    async def _send(self, messages: Any) -> None:
        if "e00" in messages and messages["e00"]["kind"] == "adverts":
            adverts = list(messages["e00"]["adverts"])
            for i, raw in enumerate(adverts):
                env = msgpack.unpackb(raw)
                body = msgpack.unpackb(env["body"])
                if body["sender"] == "e01":
                    body["c_pk"] = bytes(32 * [7])
                    env["body"] = msgpack.packb(body, use_bin_type=True)
                    adverts[i] = msgpack.packb(env, use_bin_type=True)
            messages = {**messages, "e00": {**messages["e00"], "adverts": adverts}}
        await super()._send(messages)


async def test_a_substituted_key_advertisement_is_refused_by_signature(
    mqtt_broker, unique_id, tmp_path
):
    ids = edge_ids(3)  # n = 3, t = 3: e00's refusal leaves the round below the threshold
    async with region(mqtt_broker.url, unique_id, tmp_path / "pki", 3, 16,
                      fog_class=_KeySwapDriver, deadlines=StageDeadlines(10, 2, 2, 2)) as reg:
        with pytest.raises(SecAggThresholdError):
            await asyncio.wait_for(reg.fog.run_round(1, ids, 16), ROUND_TIMEOUT)
        assert reg.edges["e00"].rejected["wire.signature"] == 1
        assert reg.fog.refused["secagg.threshold"] == 1


async def test_hostile_uplink_messages_are_counted_and_the_round_completes(
    mqtt_broker, unique_id, tmp_path
):
    ids = edge_ids(3)
    async with region(mqtt_broker.url, unique_id, tmp_path / "pki", 3, 16) as reg:
        fed = unique_id
        outsider = Signer(f"edge/{FOG}/e00", Ed25519PrivateKey.generate(), fed)
        forged = seal(outsider, FOG, {"kind": "advertise", "region": FOG, "round": 1,
                                      "sender": "e00", "c_pk": b"\1" * 32, "s_pk": b"\2" * 32})
        up = topics.secagg_up
        publish = reg.fog.publish  # the fog's own client can publish anywhere in the test
        await publish(up(fed, FOG, "e00"), b"\xc1 not msgpack")
        await publish(up(fed, FOG, "e00"), forged)  # a key not in the trust bundle
        await publish(up(fed, FOG, "e02"), forged)  # e00's message on e02's topic
        await publish(up(fed, FOG, "e00"), msgpack.packb({"f": "x"}))
        result = await asyncio.wait_for(reg.fog.run_round(1, ids, 16), ROUND_TIMEOUT)
        assert result.survivors == tuple(ids)
        codec = reg.fog.begin(1, ids, 16).params().codec
        np.testing.assert_array_equal(result.total, plain_sum(reg, ids, codec))
        assert reg.fog.rejected["secagg.message"] == 1  # not msgpack
        assert reg.fog.rejected["wire.signature"] == 2  # bad signature, not an envelope
        assert reg.fog.rejected["wire.signer"] == 1  # on another edge's topic
