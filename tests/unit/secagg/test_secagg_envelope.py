"""Signed envelopes of SecAgg+ messages: who may sign what, tampering, and the masked input's
signature verifying as an update's provenance."""

from __future__ import annotations

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hierfl.errors import RevokedError, SignatureError, SignerError
from hierfl.secagg.envelope import open_envelope, round_id, seal, split_round_id
from hierfl.secagg.errors import SecAggMessageError
from hierfl.security.trust import TrustStore
from hierfl.wire.frames import EdgeProof
from hierfl.wire.signing import Signer, verify_proof

FED, FOG = "fed", "north"


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {p: Ed25519PrivateKey.generate() for p in ("fog/north", "edge/north/e0",
                                                     "edge/north/e1")}


@pytest.fixture
def trust(keys) -> TrustStore:
    return TrustStore.from_parties({p: k.public_key() for p, k in keys.items()}, FED)


def signer(keys, party: str) -> Signer:
    return Signer(party, keys[party], FED)


def masked(sender: str = "e0", rnd: int = round_id(3, 7)) -> dict:
    return {"kind": "masked", "region": FOG, "round": rnd, "sender": sender, "masked": b"\0" * 8}


def test_round_ids_round_trip() -> None:
    assert split_round_id(round_id(3, 7)) == (3, 7)
    assert round_id(0, 1) < round_id(0, 2) < round_id(1, 0)
    # a refused round is retried under the next attempt: a new id of the same fog model
    assert split_round_id(round_id(3, 7, 5)) == (3, 7)
    assert round_id(3, 7) < round_id(3, 7, 1) < round_id(3, 7, 255) < round_id(3, 8)


def test_an_edge_message_opens_and_its_masked_input_is_an_update_proof(keys, trust) -> None:
    data = seal(signer(keys, "edge/north/e0"), FOG, masked())
    opened = open_envelope(data, trust=trust, federation=FED, fog=FOG, edge="e0")
    assert opened.signer == "edge/north/e0" and opened.body["sender"] == "e0"
    proof = EdgeProof("e0", 3, 7, opened.counter, opened.payload_hash, opened.signature)
    verify_proof(trust, FED, FOG, proof)  # what the cloud checks in an aggregate
    with pytest.raises(SignatureError):
        verify_proof(trust, FED, FOG, EdgeProof("e0", 3, 8, opened.counter,
                                                opened.payload_hash, opened.signature))


def test_who_may_sign_what(keys, trust) -> None:
    fog_signs_edge_msg = seal(signer(keys, "fog/north"), FOG, masked())
    with pytest.raises(SignerError):
        open_envelope(fog_signs_edge_msg, trust=trust, federation=FED, fog=FOG)
    e1_claims_e0 = seal(signer(keys, "edge/north/e1"), FOG, masked("e0"))
    with pytest.raises(SignerError):
        open_envelope(e1_claims_e0, trust=trust, federation=FED, fog=FOG)
    on_other_topic = seal(signer(keys, "edge/north/e0"), FOG, masked())
    with pytest.raises(SignerError):
        open_envelope(on_other_topic, trust=trust, federation=FED, fog=FOG, edge="e1")
    edge_signs_fog_msg = seal(signer(keys, "edge/north/e0"), FOG,
                              {"kind": "unmask", "region": FOG, "round": 1})
    with pytest.raises(SignerError):
        open_envelope(edge_signs_fog_msg, trust=trust, federation=FED, fog=FOG)


def test_tampered_stranger_revoked_and_malformed_are_refused(keys, trust) -> None:
    data = seal(signer(keys, "edge/north/e0"), FOG, masked())
    env = msgpack.unpackb(data)
    env["body"] = env["body"][:-1] + b"\1"
    with pytest.raises(SignatureError):
        open_envelope(msgpack.packb(env), trust=trust, federation=FED, fog=FOG)
    stranger = Signer("edge/north/e0", Ed25519PrivateKey.generate(), FED)
    with pytest.raises(SignatureError):
        open_envelope(seal(stranger, FOG, masked()), trust=trust, federation=FED, fog=FOG)
    with pytest.raises(SignatureError):  # another federation
        open_envelope(data, trust=trust, federation="other", fog=FOG)
    for junk in (b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"f": "x"})):
        with pytest.raises((SignatureError, SecAggMessageError)):
            open_envelope(junk, trust=trust, federation=FED, fog=FOG)
    trust.revoke("edge/north/e0")
    with pytest.raises(RevokedError):
        open_envelope(data, trust=trust, federation=FED, fog=FOG)
