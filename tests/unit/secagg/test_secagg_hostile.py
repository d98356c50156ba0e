"""Every peer is hostile: a malicious fog's requests an honest edge refuses (the privacy rule),
and malformed, misrouted, duplicate, out-of-stage or forged messages, each a typed error that
changes no state and never a crash."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hierfl.secagg import EdgeSecAgg, FogSecAgg
from hierfl.secagg.errors import (
    SecAggAuthError,
    SecAggDuplicateError,
    SecAggError,
    SecAggMessageError,
    SecAggPrivacyError,
    SecAggRecoveryError,
    SecAggStageError,
)
from hierfl.secagg.messages import (
    AdvertiseKeys,
    ForwardedShares,
    KeyRoster,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
    parse,
)
from tests.unit.secagg.secagg_harness import Region, make_inputs, make_params, seeded, wire


class _Staged:
    """A 5-edge region run up to the unmasking requests, one edge (edge-001) dropped after
    sharing, so requests hold both kinds: self-mask shares and secret-key shares."""

    def __init__(self) -> None:
        self.params = make_params(5, 64)
        self.region = Region(self.params, seed=21)
        self.inputs = make_inputs(self.params, seed=21)
        c, s = self.region.clients, self.region.server
        for e in self.params.roster:
            s.receive(wire(c[e].advertise()))
        rosters = s.close_advertise()
        for e in self.params.roster:
            s.receive(wire(c[e].on_roster(wire(rosters[e]))))
        forwarded = s.close_share()
        self.alive = [e for e in self.params.roster if e != "edge-001"]
        for e in self.alive:
            s.receive(wire(c[e].on_shares(wire(forwarded[e]), self.inputs[e])))
        self.requests = s.close_masked()


def test_a_request_for_both_shares_of_one_edge_is_refused() -> None:
    st_ = _Staged()
    honest = st_.requests["edge-000"]
    assert honest.secret_key_of == ("edge-001",)
    # the malicious fog claims edge-001 both sent (self-mask share) and dropped (key share):
    # both would unmask edge-001's input, were it ever sent
    greedy = dataclasses.replace(honest, self_mask_of=(*honest.self_mask_of, "edge-001"))
    client = st_.region.clients["edge-000"]
    with pytest.raises(SecAggPrivacyError, match="both"):
        client.on_unmask(wire(greedy))
    assert client.stage == "masked"  # refused, nothing revealed, still able to answer honestly
    # ... and the honest request still completes the round exactly
    for e in st_.alive:
        st_.region.server.receive(wire(st_.region.clients[e].on_unmask(wire(st_.requests[e]))))
    result = st_.region.server.finish()
    total = sum(st_.params.codec.quantize(st_.inputs[e]) for e in st_.alive)
    assert np.array_equal(st_.params.codec.decode_integers(result.total), total)
    assert result.dropped == {"edge-001": "share"}


def test_a_second_request_is_refused() -> None:
    st_ = _Staged()
    client = st_.region.clients["edge-000"]
    client.on_unmask(wire(st_.requests["edge-000"]))
    # the fog now pretends edge-001 sent after all, to get its self-mask share too
    other = dataclasses.replace(
        st_.requests["edge-000"], survivors=st_.params.roster,
        self_mask_of=st_.params.roster, secret_key_of=(),
    )
    with pytest.raises(SecAggPrivacyError, match="second"):
        client.on_unmask(wire(other))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        # the key share of an edge listed as a survivor
        (lambda r: dataclasses.replace(r, secret_key_of=("edge-002",)), SecAggPrivacyError),
        # fewer survivors than the threshold
        (lambda r: dataclasses.replace(r, survivors=r.survivors[:3]), SecAggPrivacyError),
        # a survivor list that omits this edge (it sent its input)
        (lambda r: dataclasses.replace(
            r, survivors=(*(e for e in r.survivors if e != "edge-000"), "edge-001"),
            self_mask_of=("edge-001",), secret_key_of=()), SecAggMessageError),
        # shares of an edge that is not a neighbour holding nothing here
        (lambda r: dataclasses.replace(r, secret_key_of=("edge-999",)), SecAggMessageError),
        # the self-mask share of an edge not listed as a survivor
        (lambda r: dataclasses.replace(r, self_mask_of=("edge-001",), secret_key_of=()),
         SecAggMessageError),
        # another round, another recipient
        (lambda r: dataclasses.replace(r, round=8), SecAggMessageError),
        (lambda r: dataclasses.replace(r, recipient="edge-002"), SecAggMessageError),
    ],
)
def test_other_unmasking_requests_an_honest_edge_refuses(change: Any, error: type) -> None:
    st_ = _Staged()
    client = st_.region.clients["edge-000"]
    with pytest.raises(error):
        client.on_unmask(wire(change(st_.requests["edge-000"])))
    assert client.stage == "masked"


def test_tampered_or_misrouted_shares_do_not_authenticate() -> None:
    params = make_params(3, 8)
    region = Region(params, seed=22)
    c, s = region.clients, region.server
    for e in params.roster:
        s.receive(wire(c[e].advertise()))
    rosters = s.close_advertise()
    for e in params.roster:
        s.receive(wire(c[e].on_roster(wire(rosters[e]))))
    fwd = s.close_share()
    x = np.zeros(8)
    ct = fwd["edge-000"].ciphertexts["edge-001"]
    flipped = ct[:20] + bytes([ct[20] ^ 1]) + ct[21:]
    for bad in (
        {**fwd["edge-000"].ciphertexts, "edge-001": flipped},
        # the fog swaps two senders' shares: each is bound to its sender
        {"edge-001": fwd["edge-000"].ciphertexts["edge-002"],
         "edge-002": fwd["edge-000"].ciphertexts["edge-001"]},
        # a share meant for another edge relayed to edge-000
        {"edge-001": fwd["edge-002"].ciphertexts["edge-001"],
         "edge-002": fwd["edge-000"].ciphertexts["edge-002"]},
    ):
        with pytest.raises(SecAggAuthError):
            c["edge-000"].on_shares(wire(dataclasses.replace(fwd["edge-000"], ciphertexts=bad)), x)
        assert c["edge-000"].stage == "shared"
    # the genuine relay still goes through after the refusals
    assert c["edge-000"].on_shares(wire(fwd["edge-000"]), x).sender == "edge-000"


def test_edge_refuses_out_of_stage_and_forged_rosters() -> None:
    params = make_params(5, 8)
    a = EdgeSecAgg(params, "edge-000", random_bytes=seeded(1))
    b = EdgeSecAgg(params, "edge-001", random_bytes=seeded(2))
    with pytest.raises(SecAggStageError):
        a.on_shares(ForwardedShares("fog-a", 7, "edge-000", {}).to_wire(), np.zeros(8))
    adv_a, adv_b = a.advertise(), b.advertise()
    with pytest.raises(SecAggStageError):
        a.advertise()
    keys = {"edge-000": [adv_a.c_pk, adv_a.s_pk], "edge-001": [adv_b.c_pk, adv_b.s_pk]}
    # the fog substitutes its own key for edge-000's
    forged = {**keys, "edge-000": [adv_b.c_pk, adv_a.s_pk]}
    with pytest.raises(SecAggMessageError, match="own keys"):
        a.on_roster(KeyRoster("fog-a", 7, "edge-000", forged).to_wire())
    # two neighbours with one key (a fog impersonating both)
    clone = {**keys, "edge-002": [adv_b.c_pk, adv_b.s_pk]}
    with pytest.raises(SecAggMessageError, match="repeats"):
        a.on_roster(KeyRoster("fog-a", 7, "edge-000", clone).to_wire())
    with pytest.raises(SecAggStageError):
        a.on_roster(UnmaskRequest("fog-a", 7, "edge-000", (), (), ()).to_wire())
    with pytest.raises(SecAggError, match="threshold"):
        a.on_roster(KeyRoster("fog-a", 7, "edge-000", keys).to_wire())  # 2 of t = 4
    assert a.stage == "aborted"
    with pytest.raises(SecAggError):
        EdgeSecAgg(params, "edge-999")


def test_fog_refuses_duplicates_strangers_wrong_sizes_and_stages() -> None:
    params = make_params(5, 8)
    region = Region(params, seed=24)
    c, s = region.clients, region.server
    adv = {e: c[e].advertise() for e in params.roster}
    s.receive(wire(adv["edge-000"]), sender="edge-000")
    with pytest.raises(SecAggDuplicateError):
        s.receive(wire(adv["edge-000"]))
    with pytest.raises(SecAggMessageError, match="came from"):
        s.receive(wire(adv["edge-001"]), sender="edge-002")
    with pytest.raises(SecAggMessageError, match="roster"):
        s.receive(wire(dataclasses.replace(adv["edge-001"], sender="edge-999")))
    with pytest.raises(SecAggMessageError, match="another edge"):
        s.receive(wire(dataclasses.replace(adv["edge-001"], s_pk=adv["edge-000"].c_pk)))
    with pytest.raises(SecAggMessageError, match="not this round"):
        s.receive(wire(dataclasses.replace(adv["edge-001"], round=6)))
    with pytest.raises(SecAggStageError):
        s.receive(MaskedInput("fog-a", 7, "edge-001", bytes(32)).to_wire())
    with pytest.raises(SecAggStageError):
        s.receive(KeyRoster("fog-a", 7, "edge-001", {}).to_wire())
    with pytest.raises(SecAggStageError):
        s.close_share()
    for e in params.roster[1:]:
        s.receive(wire(adv[e]))
    rosters = s.close_advertise()
    with pytest.raises(SecAggStageError):
        s.receive(wire(adv["edge-003"]))  # a late advertisement
    shares = {e: c[e].on_roster(wire(rosters[e])) for e in params.roster}
    for e in params.roster:
        s.receive(wire(shares[e]))
    fwd = s.close_share()
    masked = c["edge-000"].on_shares(wire(fwd["edge-000"]), np.ones(8))
    with pytest.raises(SecAggMessageError, match="bytes"):
        s.receive(wire(dataclasses.replace(masked, masked=masked.masked[:-4])))
    s.receive(wire(masked))
    with pytest.raises(SecAggDuplicateError):
        s.receive(wire(masked))
    assert s.rejected == {
        "secagg.duplicate": 2, "secagg.message": 5, "secagg.stage": 3,
    }


def test_fog_refuses_answers_other_than_requested_and_detects_corrupt_key_shares() -> None:
    st_ = _Staged()
    s = st_.region.server
    answers = {e: st_.region.clients[e].on_unmask(wire(st_.requests[e])) for e in st_.alive}
    extra = dataclasses.replace(
        answers["edge-000"],
        self_mask_shares={**answers["edge-000"].self_mask_shares, "edge-001": bytes(66)},
    )
    with pytest.raises(SecAggMessageError, match="other shares"):
        s.receive(wire(extra))
    not_field = dataclasses.replace(
        answers["edge-000"],
        secret_key_shares={"edge-001": b"\xff" * 66},
    )
    with pytest.raises(SecAggMessageError, match="field element"):
        s.receive(wire(not_field))
    # every survivor lies about edge-001's key share: the recovered key cannot match
    for e in st_.alive:
        s.receive(wire(dataclasses.replace(
            answers[e], secret_key_shares={"edge-001": (7 + len(e)).to_bytes(66, "big")},
        )))
    with pytest.raises(SecAggRecoveryError):
        s.finish()
    assert s.stage == "aborted"


def _valid_wire_messages() -> list[dict[str, Any]]:
    k = bytes(range(32))
    return [m.to_wire() for m in (
        AdvertiseKeys("fog-a", 7, "edge-000", k, k[::-1]),
        KeyRoster("fog-a", 7, "edge-000", {"edge-001": [k, k]}),
        ForwardedShares("fog-a", 7, "edge-000", {"edge-001": bytes(160)}),
        MaskedInput("fog-a", 7, "edge-000", bytes(32)),
        UnmaskRequest("fog-a", 7, "edge-000", ("a",), ("a",), ()),
        UnmaskResponse("fog-a", 7, "edge-000", {"a": bytes(66)}, {}),
    )]


_junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8),
    st.binary(max_size=200), st.lists(st.binary(max_size=40), max_size=3),
    st.dictionaries(st.text(max_size=4), st.binary(max_size=70), max_size=3),
    st.dictionaries(st.integers(0, 2**32), st.integers(0, 2**32), max_size=2),
)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(which=st.integers(0, 5), field_index=st.integers(0, 10), junk=_junk, drop=st.booleans())
def test_malformed_messages_raise_only_typed_errors(
    which: int, field_index: int, junk: Any, drop: bool
) -> None:
    msg = _valid_wire_messages()[which]
    name = sorted(msg)[field_index % len(msg)]
    if drop:
        del msg[name]
    else:
        msg[name] = junk
    packed = msgpack.unpackb(msgpack.packb(msg, use_bin_type=True), raw=False, strict_map_key=False)
    edge = EdgeSecAgg(make_params(3, 8), "edge-000", random_bytes=seeded(0))
    edge.advertise()
    targets = (parse, FogSecAgg(make_params(3, 8)).receive, edge.on_roster)
    for target in targets:
        # a typed SecAggError or acceptance; anything else (a crash) fails the test
        with contextlib.suppress(SecAggError):
            target(packed)


def test_garbage_that_is_not_a_message() -> None:
    for junk in (None, b"\x00", [], {"kind": "advertise"}, {"kind": "nope"}, 3):
        with pytest.raises(SecAggMessageError):
            parse(junk)
    ok = _valid_wire_messages()[0]
    with pytest.raises(SecAggMessageError, match="unexpected"):
        parse({**ok, "extra": 1})
    with pytest.raises(SecAggMessageError, match="32 bytes"):
        parse({**ok, "c_pk": b"short"})
    with pytest.raises(SecAggMessageError):
        parse({**ok, "round": True})


def test_a_fog_lying_differently_to_each_edge_gets_fewer_than_t_of_either_secret() -> None:
    # edge-002 sent its masked input. The fog tells edge-000, edge-002 and edge-004 that it
    # survived (asking for its self-mask share) and edge-003 that it dropped (asking for its
    # key share), each request consistent on its own, then asks everyone again the other way.
    # With t = 4 of m = 5 holders, all honest, it never holds t shares of either secret.
    st_ = _Staged()
    v = "edge-002"
    truth = ("edge-000", "edge-002", "edge-003", "edge-004")
    lie = ("edge-000", "edge-001", "edge-003", "edge-004")  # v "dropped", edge-001 "sent"
    requests = {e: UnmaskRequest("fog-a", 7, e, truth, (v,), ()) for e in truth}
    requests["edge-003"] = UnmaskRequest("fog-a", 7, "edge-003", lie, (), (v,))
    answers = {e: st_.region.clients[e].on_unmask(wire(r)) for e, r in requests.items()}
    self_mask = sum(v in a.self_mask_shares for a in answers.values())
    secret_key = sum(v in a.secret_key_shares for a in answers.values())
    assert (self_mask, secret_key) == (3, 1)
    for e in truth:  # second requests, the other way round: all refused
        with pytest.raises(SecAggPrivacyError, match="second"):
            st_.region.clients[e].on_unmask(wire(UnmaskRequest("fog-a", 7, e, lie, (), (v,))))
    assert self_mask < st_.params.t
    assert secret_key < st_.params.t
