"""The consistency check of SecAgg+ over a real MQTT broker (Bonawitz et al. 2017, round 3): a
fog that shows different edges different survivor sets, to collect both seeds of one edge, gets
no share from the edges that cannot see t matching signatures; a forged signature is refused;
every refusal is typed and counted. Honest rounds and dropouts at the new stage are in
tests/integration/test_secagg_mqtt.py."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hierfl.secagg.driver import FogSecAggDriver, StageDeadlines
from hierfl.secagg.envelope import seal, sign_consistency
from hierfl.secagg.errors import SecAggThresholdError
from hierfl.secagg.messages import (
    ConsistencyCheck,
    ConsistencySignature,
    UnmaskRequest,
    consistency_message,
)
from hierfl.secagg.server import FogSecAgg
from hierfl.wire.signing import Signer
from tests.integration.secagg_net import FOG, edge_ids, region

pytestmark = pytest.mark.integration

ROUND_TIMEOUT = 60  # generous: the suite shares 2 cores
VICTIM = "e04"


def _bodies(reg: Any, kind: str) -> list[dict[str, Any]]:
    out = [msgpack.unpackb(msgpack.unpackb(p)["body"]) for _, p in reg.captured["fog"]]
    return [b for b in out if b["kind"] == kind]


class _EquivocatingFog(FogSecAgg):
    """Tells the edges in ``LIARS_TO`` that the victim dropped (U3' = U3 - {victim}) and the
    others that it sent (U3), so the first would reveal the victim's secret-key share and the
    second its self-mask share; relays to each edge only the signatures on the set it showed
    that edge (the ones that verify)."""

    LIARS_TO: tuple[str, ...] = ()

    def __init__(self, params: Any, **kw: Any) -> None:
        super().__init__(params, consistency=True)  # keeps what it is sent, checks nothing

    def close_masked_check(self) -> dict[str, ConsistencyCheck]:
        checks = super().close_masked_check()
        lie = tuple(v for v in checks[VICTIM].survivors if v != VICTIM)
        for u in self.LIARS_TO:
            checks[u] = ConsistencyCheck(self.params.region, self.params.round, u, lie)
        return checks

    def _on_signature(self, m: ConsistencySignature) -> None:
        self._signatures[m.sender] = m.signature

    def close_check(self) -> dict[str, UnmaskRequest]:
        requests = super().close_check()
        lie = tuple(v for v in sorted(self._masked) if v != VICTIM)
        for u, r in requests.items():
            near = self.params.graph[u] | {u}
            if u in self.LIARS_TO:  # "the victim dropped: its secret-key share, please"
                sigs = {w: s for w, s in self._signatures.items()
                        if w in near and w in self.LIARS_TO}
                requests[u] = UnmaskRequest(r.region, r.round, u, lie, lie, (VICTIM,), sigs)
            else:
                sigs = {w: s for w, s in self._signatures.items()
                        if w in near and w not in self.LIARS_TO}
                requests[u] = UnmaskRequest(r.region, r.round, u, r.survivors, r.self_mask_of,
                                            r.secret_key_of, sigs)
        self._requests = dict(requests)
        return requests


class _LieToOne(_EquivocatingFog):
    LIARS_TO = ("e00",)


class _LieToTwo(_EquivocatingFog):
    LIARS_TO = ("e00", "e01")


@pytest.mark.parametrize("fog_sm", [_LieToOne, _LieToTwo])
async def test_an_equivocating_fog_gets_no_share_without_t_matching_signatures(
    mqtt_broker, unique_id, tmp_path, fog_sm
):
    ids = edge_ids(5)  # complete graph, k = 4, t = 4
    driver = type("Driver", (FogSecAggDriver,), {"round_class": fog_sm})
    async with region(mqtt_broker.url, unique_id, tmp_path / "pki", 5, 32, fog_class=driver,
                      deadlines=StageDeadlines(10, 10, 10, 3), tap_fog=True) as reg:
        run = reg.fog.run_round(1, ids, 32)
        liars_to = fog_sm.LIARS_TO  # each shown U3' with fewer than t signatures on it
        if len(liars_to) == 1:
            # e01..e04 see t = 4 signatures on U3 and reveal self-mask shares only: the fog
            # gets the honest sum of all five and nothing more
            result = await asyncio.wait_for(run, ROUND_TIMEOUT)
            codec = reg.fog.begin(1, ids, 32).params().codec
            want = sum(codec.encode(reg.updates[e]) for e in ids)
            np.testing.assert_array_equal(result.total, want.astype(np.uint32))
            assert result.dropped == {"e00": "check"}
        else:  # 2 and 3 matching signatures, both below t: nobody reveals, round refused
            with pytest.raises(SecAggThresholdError):
                await asyncio.wait_for(run, ROUND_TIMEOUT)
            assert reg.fog.refused["secagg.threshold"] == 1
        for u in liars_to:
            assert reg.edges[u].rejected["secagg.consistency"] == 1, reg.edges[u].rejected
            assert reg.edges[u].completed == []
        honest_side = [e for e in ids if e not in liars_to]
        revealed = {b["sender"] for b in _bodies(reg, "reveal")}
        assert not revealed & set(liars_to)
        if len(liars_to) == 2:  # 3 < t signatures on U3 as well: they refuse too
            assert revealed == set()
            assert all(reg.edges[e].rejected["secagg.consistency"] == 1 for e in honest_side)
        else:
            assert revealed == set(honest_side)
        # above all: no secret-key share of the victim (whose self mask is revealed) left
        assert all(VICTIM not in b["secret_key_shares"] for b in _bodies(reg, "reveal"))


class _ForgingFog(FogSecAgg):
    """Relays to e00 a signature of e01 made with a key outside the trust bundle."""

    OUTSIDER = Ed25519PrivateKey.generate()
    FED = ""

    def close_check(self) -> dict[str, UnmaskRequest]:
        requests = super().close_check()
        r = requests["e00"]
        fake = Signer(f"edge/{FOG}/e01", self.OUTSIDER, self.FED)
        msg = consistency_message(self.params.region, self.params.round, r.survivors)
        forged = sign_consistency(fake, FOG, self.params.round, msg)
        requests["e00"] = UnmaskRequest(r.region, r.round, "e00", r.survivors, r.self_mask_of,
                                        r.secret_key_of, {**r.signatures, "e01": forged})
        self._requests["e00"] = requests["e00"]
        return requests


async def test_a_forged_consistency_signature_is_refused(mqtt_broker, unique_id, tmp_path):
    ids = edge_ids(5)
    sm = type("Forging", (_ForgingFog,), {"FED": unique_id})
    driver = type("Driver", (FogSecAggDriver,), {"round_class": sm})
    async with region(mqtt_broker.url, unique_id, tmp_path / "pki", 5, 32, fog_class=driver,
                      deadlines=StageDeadlines(10, 10, 10, 3), tap_fog=True) as reg:
        result = await asyncio.wait_for(reg.fog.run_round(1, ids, 32), ROUND_TIMEOUT)
        # e00 revealed nothing; the four others (t = 4) completed the honest sum
        assert reg.edges["e00"].rejected["secagg.consistency"] == 1
        assert reg.edges["e00"].completed == []
        assert {b["sender"] for b in _bodies(reg, "reveal")} == set(ids[1:])
        assert result.dropped == {"e00": "check"}
        codec = reg.fog.begin(1, ids, 32).params().codec
        want = sum(codec.encode(reg.updates[e]) for e in ids)
        np.testing.assert_array_equal(result.total, want.astype(np.uint32))
        assert all(reg.edges[e].completed == [1] for e in ids[1:])


async def test_an_edge_forging_its_consistency_signature_is_counted_by_the_fog(
    mqtt_broker, unique_id, tmp_path
):
    """An edge whose consistency signature does not verify is refused by the honest fog
    (``secagg.auth``) and treated as having dropped after its masked input."""
    ids = edge_ids(5)

    class _BadSigner(FogSecAggDriver):
        e02_signer: Signer
        def handle(self, topic: str, payload: bytes) -> None:
            env = msgpack.unpackb(payload)
            body = msgpack.unpackb(env["body"])
            if body["kind"] == "consistency" and body["sender"] == "e02":
                body["signature"] = bytes(72)  # e02's envelope re-signed below: a bad inner
                payload = seal(self.e02_signer, FOG, body)
            super().handle(topic, payload)

    async with region(mqtt_broker.url, unique_id, tmp_path / "pki", 5, 32,
                      fog_class=_BadSigner, deadlines=StageDeadlines(10, 10, 10, 3)) as reg:
        reg.fog.e02_signer = reg.edges["e02"].signer
        result = await asyncio.wait_for(reg.fog.run_round(1, ids, 32), ROUND_TIMEOUT)
        assert reg.fog.rejected["secagg.auth"] == 1
        assert result.dropped == {"e02": "masked"}
        codec = reg.fog.begin(1, ids, 32).params().codec
        want = sum(codec.encode(reg.updates[e]) for e in ids)
        np.testing.assert_array_equal(result.total, want.astype(np.uint32))
