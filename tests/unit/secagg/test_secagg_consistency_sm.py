"""The consistency check (Bonawitz et al. 2017, round 3) in the SecAgg+ state machines: the fog
sends U3, each edge signs it with its identity key, and an edge reveals shares only when the
unmasking request names the U3 it signed and carries at least t valid signatures on that same
set from its neighbourhood. Every message crosses msgpack (as the transport carries it)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hierfl.secagg import EdgeSecAgg, FogSecAgg, SecAggParams, SecAggResult
from hierfl.secagg.errors import (
    SecAggAuthError,
    SecAggConsistencyError,
    SecAggDuplicateError,
    SecAggError,
    SecAggMessageError,
    SecAggPrivacyError,
    SecAggStageError,
    SecAggThresholdError,
)
from hierfl.secagg.messages import (
    MAX_SIGNATURE_BYTES,
    ConsistencyCheck,
    ConsistencySignature,
    UnmaskRequest,
    consistency_message,
    parse,
)
from tests.unit.secagg.secagg_harness import (
    is_exact,
    make_inputs,
    make_params,
    run_to_masked,
    seeded,
    wire,
)


class Keys:
    """Identity keys of a roster: what the trust bundle gives a wired edge."""

    def __init__(self, roster: Collection[str]) -> None:
        self.private = {e: Ed25519PrivateKey.generate() for e in roster}
        self.checked = 0

    def signer(self, e: str) -> Any:
        return lambda message: self.private[e].sign(message)

    def verify(self, e: str, message: bytes, signature: bytes) -> bool:
        self.checked += 1
        key = self.private.get(e)
        if key is None:
            return False
        try:
            key.public_key().verify(signature, message)
        except InvalidSignature:
            return False
        return True


class CheckedRegion:
    """An in-memory round with the consistency check, stopped before the unmasking answers so a
    test can tamper with what the fog sends."""

    def __init__(self, params: SecAggParams, seed: int = 0) -> None:
        self.params = params
        self.keys = Keys(params.roster)
        self.clients = {
            e: EdgeSecAgg(params, e, random_bytes=seeded(seed * 1000 + i),
                          sign=self.keys.signer(e), verify=self.keys.verify)
            for i, e in enumerate(params.roster)
        }
        self.server = FogSecAgg(params, consistency=True, verify=self.keys.verify)
        self.inputs = make_inputs(params, seed)

    def to_check(self, drop_after: Mapping[str, Collection[str]] | None = None
                 ) -> dict[str, ConsistencyCheck]:
        self.alive = run_to_masked(self.server, self.clients, self.inputs, drop_after,
                                   self.params.roster)
        return self.server.close_masked_check()

    def sign(self, checks: Mapping[str, ConsistencyCheck], who: Collection[str]) -> None:
        for e in who:
            self.server.receive(wire(self.clients[e].on_check(wire(checks[e]))), sender=e)

    def finish(self, requests: Mapping[str, UnmaskRequest], who: Collection[str]
               ) -> SecAggResult:
        for e in who:
            self.server.receive(wire(self.clients[e].on_unmask(wire(requests[e]))), sender=e)
        return self.server.finish()


@pytest.mark.parametrize("n", [5, 40])
def test_honest_round_with_the_check_gives_the_exact_sum(n: int) -> None:
    params = make_params(n, 48)
    reg = CheckedRegion(params, seed=n)
    checks = reg.to_check()
    assert set(checks) == set(params.roster)
    assert all(c.survivors == params.roster for c in checks.values())
    reg.sign(checks, params.roster)
    requests = reg.server.close_check()
    for u, r in requests.items():  # each edge gets t of its neighbourhood's, its own first
        assert len(r.signatures) == params.t
        assert next(iter(r.signatures)) == u
        assert set(r.signatures) <= params.graph[u] | {u}
    before = reg.keys.checked
    result = reg.finish(requests, params.roster)
    assert result.survivors == params.roster
    assert result.dropped == {}
    assert is_exact(params, result, reg.inputs, params.roster)
    # each edge verified t - 1 signatures (its own it compares byte for byte), no more
    assert reg.keys.checked - before == n * (params.t - 1)


def test_dropouts_between_masked_input_and_check_and_after_signing_keep_the_sum() -> None:
    params = make_params(5, 32)  # complete graph, t = 4
    reg = CheckedRegion(params, seed=3)
    e = params.roster
    checks = reg.to_check({"share": [e[4]]})  # e4 sends no masked input
    assert set(checks) == set(e[:4])
    reg.sign(checks, e[:4])
    requests = reg.server.close_check()
    result = reg.finish(requests, e[:4])
    assert result.dropped == {e[4]: "share"}
    assert is_exact(params, result, reg.inputs, e[:4])

    # n = 7, t = 5: one edge vanishes after its masked input (before signing), another after
    # signing; both inputs are in the sum and 5 answer: at the threshold
    params = make_params(7, 32)
    reg = CheckedRegion(params, seed=4)
    e = params.roster
    checks = reg.to_check()
    reg.sign(checks, [u for u in e if u != e[1]])
    requests = reg.server.close_check()
    assert e[1] not in requests
    assert all(r.survivors == e for r in requests.values())  # e1's input is still summed
    result = reg.finish(requests, [u for u in e if u not in (e[1], e[2])])
    assert result.dropped == {e[1]: "masked", e[2]: "check"}
    assert is_exact(params, result, reg.inputs, e)


def test_below_the_threshold_at_the_check_the_round_is_refused() -> None:
    params = make_params(5, 16)  # t = 4
    reg = CheckedRegion(params, seed=5)
    checks = reg.to_check()
    reg.sign(checks, params.roster[:3])  # two vanish before signing: 3 < t
    with pytest.raises(SecAggThresholdError):
        reg.server.close_check()
    assert reg.server.stage == "aborted"


def _signed_round(n: int = 5, seed: int = 6) -> tuple[CheckedRegion, dict[str, UnmaskRequest]]:
    reg = CheckedRegion(make_params(n, 16), seed=seed)
    checks = reg.to_check()
    reg.sign(checks, reg.params.roster)
    return reg, reg.server.close_check()


def _with(r: UnmaskRequest, **kw: Any) -> UnmaskRequest:
    fields = {"survivors": r.survivors, "self_mask_of": r.self_mask_of,
              "secret_key_of": r.secret_key_of, "signatures": r.signatures} | kw
    return UnmaskRequest(r.region, r.round, r.recipient, fields["survivors"],
                         fields["self_mask_of"], fields["secret_key_of"], fields["signatures"])


def test_an_edge_shown_another_survivor_set_refuses_without_t_matching_signatures() -> None:
    # the equivocating fog: e00 is told that e04 dropped (U3'), the others that it sent (U3);
    # e00 would reveal e04's secret-key share, the others its self-mask share: both seeds
    params = make_params(5, 16)
    reg = CheckedRegion(params, seed=7)
    e = params.roster
    checks = reg.to_check()
    lie = ConsistencyCheck(params.region, params.round, e[0], e[:4])
    sig_lie = reg.clients[e[0]].on_check(wire(lie))
    reg.sign(checks, e[1:])
    honest = reg.server.close_check()
    # to e00, U3' with only the signature that matches it (its own): 1 < t
    req = UnmaskRequest(params.region, params.round, e[0], e[:4], e[:4], (e[4],),
                        {e[0]: sig_lie.signature})
    with pytest.raises(SecAggConsistencyError, match="1 valid signatures"):
        reg.clients[e[0]].on_unmask(wire(req))
    assert reg.clients[e[0]].stage == "aborted"
    with pytest.raises(SecAggStageError):  # and it never answers this round again
        reg.clients[e[0]].on_unmask(wire(req))
    # relaying the others' signatures (on U3) does not help: they do not verify on U3'
    reg2 = CheckedRegion(params, seed=8)
    checks2 = reg2.to_check()
    reg2.clients[e[0]].on_check(wire(ConsistencyCheck(params.region, params.round, e[0],
                                                      e[:4])))
    reg2.sign(checks2, e[1:])
    relayed = reg2.server.close_check()[e[1]].signatures  # e01..e04's, on U3
    req2 = UnmaskRequest(params.region, params.round, e[0], e[:4], e[:4], (e[4],),
                         dict(relayed))
    with pytest.raises(SecAggConsistencyError, match="does not verify"):
        reg2.clients[e[0]].on_unmask(wire(req2))
    # the edges shown U3 see 4 = t signatures on it and reveal self-mask shares only: the fog
    # gets the honest sum and no secret-key share of e04
    answers = {u: reg.clients[u].on_unmask(wire(honest[u])) for u in e[1:]}
    assert all(e[4] not in a.secret_key_shares for a in answers.values())
    for u, a in answers.items():
        reg.server.receive(wire(a), sender=u)
    assert is_exact(params, reg.server.finish(), reg.inputs, e)


def test_an_unmask_request_naming_another_set_than_signed_is_refused() -> None:
    reg, requests = _signed_round()
    r = requests["edge-000"]
    with pytest.raises(SecAggConsistencyError, match="another survivor set"):
        reg.clients["edge-000"].on_unmask(wire(_with(r, survivors=r.survivors[:-1])))
    assert reg.clients["edge-000"].stage == "aborted"


def test_a_forged_signature_is_refused() -> None:
    reg, requests = _signed_round()
    r = requests["edge-000"]
    outsider = Ed25519PrivateKey.generate()
    message = consistency_message("fog-a", 7, r.survivors)
    forged = dict(r.signatures) | {"edge-003": outsider.sign(message)}
    with pytest.raises(SecAggConsistencyError, match="edge-003"):
        reg.clients["edge-000"].on_unmask(wire(_with(r, signatures=forged)))
    # a signature of another round by the right key is no better
    other_round = consistency_message("fog-a", 8, r.survivors)
    replayed = dict(r.signatures) | {"edge-003": reg.keys.private["edge-003"].sign(other_round)}
    with pytest.raises(SecAggConsistencyError):
        reg.clients["edge-001"].on_unmask(
            wire(_with(requests["edge-001"], signatures=replayed)))
    assert reg.clients["edge-000"].stage == reg.clients["edge-001"].stage == "aborted"
    # its own signature relayed back altered (it checks that one byte for byte)
    mine = dict(requests["edge-002"].signatures) | {"edge-002": b"\1" * 64}
    with pytest.raises(SecAggConsistencyError, match="edge-002"):
        reg.clients["edge-002"].on_unmask(wire(_with(requests["edge-002"], signatures=mine)))


def test_signatures_from_outside_the_neighbourhood_do_not_count() -> None:
    params = make_params(40, 8)  # k-regular: not everyone is a neighbour
    reg = CheckedRegion(params, seed=9)
    checks = reg.to_check()
    reg.sign(checks, params.roster)
    requests = reg.server.close_check()
    u = params.roster[0]
    stranger = next(v for v in params.roster if v not in params.graph[u] and v != u)
    sigs = dict(requests[u].signatures)
    sigs[stranger] = requests[stranger].signatures[stranger]
    with pytest.raises(SecAggConsistencyError, match="outside"):
        reg.clients[u].on_unmask(wire(_with(requests[u], signatures=sigs)))
    # t - 1 of its neighbourhood's signatures is not enough
    few = dict(sorted(requests[params.roster[1]].signatures.items())[: params.t - 1])
    with pytest.raises(SecAggConsistencyError, match="threshold"):
        reg.clients[params.roster[1]].on_unmask(wire(_with(requests[params.roster[1]],
                                                           signatures=few)))


def test_an_edge_with_keys_will_not_skip_the_check() -> None:
    reg = CheckedRegion(make_params(5, 8), seed=10)
    reg.to_check()
    e = "edge-000"
    r = UnmaskRequest("fog-a", 7, e, reg.params.roster, reg.params.roster, ())
    with pytest.raises(SecAggStageError):
        reg.clients[e].on_unmask(wire(r))
    assert reg.clients[e].stage == "masked"


def test_on_check_refuses_bad_survivor_sets() -> None:
    params = make_params(40, 8)
    gone = sorted(params.graph["edge-000"])[-1]  # a neighbour that never shares
    reg = CheckedRegion(params, seed=11)
    reg.to_check({"advertise": [gone]})
    c = reg.clients["edge-000"]
    ids = params.roster
    rest = tuple(v for v in ids if v != gone)
    with pytest.raises(SecAggPrivacyError):  # fewer than t
        c.on_check(wire(ConsistencyCheck("fog-a", 7, "edge-000", rest[: params.t - 1])))
    with pytest.raises(SecAggMessageError, match="omit"):
        c.on_check(wire(ConsistencyCheck("fog-a", 7, "edge-000", rest[1:])))
    with pytest.raises(SecAggMessageError, match="roster"):
        c.on_check(wire(ConsistencyCheck("fog-a", 7, "edge-000", (*rest, "zz"))))
    with pytest.raises(SecAggMessageError, match="never shared"):
        c.on_check(wire(ConsistencyCheck("fog-a", 7, "edge-000", ids)))
    assert c.stage == "masked"  # a refused check changes nothing
    sig = c.on_check(wire(ConsistencyCheck("fog-a", 7, "edge-000", rest)))
    assert c.stage == "checked"
    with pytest.raises(SecAggStageError):  # signs once per round
        c.on_check(wire(ConsistencyCheck("fog-a", 7, "edge-000", rest[:-1])))
    assert reg.keys.verify("edge-000", consistency_message("fog-a", 7, rest), sig.signature)


def test_the_fog_counts_bad_consistency_signatures() -> None:
    reg = CheckedRegion(make_params(5, 8), seed=12)
    checks = reg.to_check({"masked": ["edge-004"]})
    with pytest.raises(SecAggAuthError):
        reg.server.receive(wire(ConsistencySignature("fog-a", 7, "edge-000", b"\0" * 64)),
                           sender="edge-000")
    reg.sign(checks, ["edge-000"])
    with pytest.raises(SecAggDuplicateError):
        reg.server.receive(wire(ConsistencySignature("fog-a", 7, "edge-000", b"\0" * 64)),
                           sender="edge-000")
    with pytest.raises(SecAggMessageError):
        reg.server.receive(wire(ConsistencySignature("fog-a", 7, "edge-002", b"\0" * 64)),
                           sender="edge-001")
    assert reg.server.rejected == {"secagg.auth": 1, "secagg.duplicate": 1, "secagg.message": 1}
    assert "edge-000" in reg.server._signatures


def test_semi_honest_state_machines_keep_their_flow_and_refuse_mixing() -> None:
    params = make_params(3, 8)
    with pytest.raises(SecAggError):
        EdgeSecAgg(params, "edge-000", sign=lambda m: m)
    fog = FogSecAgg(params)
    with pytest.raises(SecAggStageError):
        fog.close_masked_check()
    fog2 = FogSecAgg(params, consistency=True)
    with pytest.raises(SecAggStageError):
        fog2.close_masked()
    edge = EdgeSecAgg(params, "edge-000")
    with pytest.raises(SecAggStageError):
        edge.on_check(wire(ConsistencyCheck("fog-a", 7, "edge-000", params.roster)))


def test_consistency_messages_parse_and_refuse_bad_fields() -> None:
    c = ConsistencyCheck("fog-a", 7, "edge-000", ("edge-000", "edge-001"))
    assert parse(wire(c)) == c
    s = ConsistencySignature("fog-a", 7, "edge-000", b"\1" * 72)
    assert parse(wire(s)) == s
    with pytest.raises(SecAggMessageError):
        parse(wire(s) | {"signature": b"\1" * (MAX_SIGNATURE_BYTES + 1)})
    with pytest.raises(SecAggMessageError):
        parse(wire(s) | {"signature": b""})
    r = UnmaskRequest("fog-a", 7, "edge-000", ("a",), (), (), {"a": b"\2" * 72})
    assert parse(wire(r)) == r
    with pytest.raises(SecAggMessageError):
        parse(wire(r) | {"signatures": {"a": 5}})
    with pytest.raises(SecAggMessageError):
        parse({k: v for k, v in wire(r).items() if k != "signatures"})
    # the signed bytes do not depend on the order U3 is listed in
    assert consistency_message("f", 1, ["b", "a"]) == consistency_message("f", 1, ("a", "b"))
    assert consistency_message("f", 1, ["a"]) != consistency_message("f", 2, ["a"])
    assert consistency_message("f", 1, ["a"]) != consistency_message("g", 1, ["a"])


def test_envelope_consistency_signatures_bind_signer_region_and_round() -> None:
    from hierfl.secagg.envelope import sign_consistency, verify_consistency
    from hierfl.security.trust import TrustStore
    from hierfl.wire.signing import Signer

    keys = {e: Ed25519PrivateKey.generate() for e in ("e0", "e1")}
    trust = TrustStore.from_parties(
        {f"edge/north/{e}": k.public_key() for e, k in keys.items()}, "fed")
    signer = Signer("edge/north/e0", keys["e0"], "fed")
    msg = consistency_message("north", 5, ["e0", "e1"])
    sig = sign_consistency(signer, "north", 5, msg)
    assert verify_consistency(trust, "fed", "north", 5, "e0", msg, sig)
    assert not verify_consistency(trust, "fed", "north", 6, "e0", msg, sig)  # another round
    assert not verify_consistency(trust, "fed", "north", 5, "e1", msg, sig)  # another edge
    assert not verify_consistency(trust, "other", "north", 5, "e0", msg, sig)
    other = consistency_message("north", 5, ["e0"])
    assert not verify_consistency(trust, "fed", "north", 5, "e0", other, sig)
    assert not verify_consistency(trust, "fed", "north", 5, "e0", msg, sig[:-1])
    assert not verify_consistency(trust, "fed", "north", 5, "e9", msg, sig)  # unknown
    assert not verify_consistency(trust, "fed", "north", 5, "../x", msg, sig)  # bad id
    trust.revoke("edge/north/e0")
    assert not verify_consistency(trust, "fed", "north", 5, "e0", msg, sig)
