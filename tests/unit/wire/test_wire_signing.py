"""Signed frames without a broker: the role matrix, tampering, replays, revocation, reloads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hierfl.config import FogSettings
from hierfl.errors import (
    ConfigError,
    ReplayError,
    RevokedError,
    SignatureError,
    SignerError,
    WireFormatError,
)
from hierfl.provision import ProjectSpec, provision, revoke
from hierfl.security.tier import tier_security
from hierfl.security.trust import TrustStore, load_signing_key
from hierfl.wire import signing
from hierfl.wire.codec import decode_frame, encode_frame, split_signed
from hierfl.wire.frames import AggregateFrame, EdgeProof, ModelDeltaFrame, ModelFrame, UpdateFrame
from hierfl.wire.signing import (
    COUNTER_RESERVE_US,
    ReplayGuard,
    SigBlock,
    Signer,
    Verifier,
    edge_proof,
    payload_hash,
    unverified_claims,
    verify_proof,
)

FED = "city"
PARTIES = ("cloud", "fog/north", "fog/south", "edge/north/n0", "edge/north/n1", "edge/south/s0")


@pytest.fixture(scope="module")
def keys() -> dict[str, Ed25519PrivateKey]:
    return {p: Ed25519PrivateKey.generate() for p in PARTIES}


@pytest.fixture
def trust(keys: dict[str, Ed25519PrivateKey]) -> TrustStore:
    return TrustStore.from_parties({p: k.public_key() for p, k in keys.items()}, FED)


def signer(keys: dict[str, Ed25519PrivateKey], party: str) -> Signer:
    return Signer(party, keys[party], FED)


def vec(n: int = 16, value: float = 0.5) -> np.ndarray:
    return np.full(n, value, np.float32)


def update(fog: str = "north", edge: str = "n0", **kw: object) -> UpdateFrame:
    return UpdateFrame(FED, fog, edge, 3, 7, 10, vec(), **kw)  # type: ignore[arg-type]


def aggregate(fog: str = "north") -> AggregateFrame:
    return AggregateFrame(FED, fog, 3, 100, ("n0",), 1, vec())


def global_model(version: int = 4) -> ModelFrame:
    return ModelFrame(FED, version, vec())


def fog_model(fog: str = "north", seq: int = 8) -> ModelFrame:
    return ModelFrame(FED, 3, vec(), scope="fog", fog_id=fog, seq=seq)


def model_delta(fog: str = "north") -> ModelDeltaFrame:
    return ModelDeltaFrame(FED, fog, 3, 8, 3, 7, vec(), b"\0" * 16)


# --- who may sign what ------------------------------------------------------------------------

ALLOWED = [
    ("edge/north/n0", update()),
    ("fog/north", aggregate()),
    ("cloud", global_model()),
    ("fog/north", fog_model()),
    ("fog/north", model_delta()),
]
REFUSED = [
    ("edge/north/n1", update()),             # another edge's key for n0
    ("edge/south/s0", update()),             # an edge of another fog
    ("fog/north", update()),                 # a fog signing an edge's update
    ("edge/north/n0", aggregate()),          # an edge key cannot sign an aggregate
    ("fog/south", aggregate()),              # fog B's key for fog A
    ("cloud", aggregate()),
    ("edge/north/n0", global_model()),       # an edge key cannot sign a model
    ("fog/north", global_model()),           # only the cloud signs global models
    ("fog/south", fog_model()),              # fog B's key for fog A's model
    ("edge/north/n0", fog_model()),
    ("cloud", fog_model()),
    ("fog/south", model_delta()),
]


@pytest.mark.parametrize(("party", "frame"), ALLOWED, ids=lambda x: getattr(x, "KIND", x))
def test_each_role_signs_its_own_frames(keys, trust, party, frame) -> None:
    data = encode_frame(frame, signer=signer(keys, party))
    got = Verifier(trust, FED).decode(data)
    assert got.sig is not None and got.sig.signer == party
    assert type(got.frame) is type(frame)


@pytest.mark.parametrize(("party", "frame"), REFUSED, ids=lambda x: getattr(x, "KIND", x))
def test_a_key_cannot_sign_for_another_role_or_region(keys, trust, party, frame) -> None:
    data = encode_frame(frame, signer=signer(keys, party))
    with pytest.raises(SignerError) as exc:
        Verifier(trust, FED).decode(data)
    assert exc.value.reason == "wire.signer"


def test_unknown_signer_and_stranger_key(keys, trust) -> None:
    ghost = Signer("edge/north/ghost", Ed25519PrivateKey.generate(), FED)
    with pytest.raises(SignerError, match="not in the trust bundle"):
        Verifier(trust, FED).decode(encode_frame(update(edge="ghost"), signer=ghost))
    impostor = Signer("edge/north/n0", Ed25519PrivateKey.generate(), FED)
    with pytest.raises(SignatureError, match="bad signature") as exc:
        Verifier(trust, FED).decode(encode_frame(update(), signer=impostor))
    assert exc.value.reason == "wire.signature"


# --- tampering and malformed blocks -----------------------------------------------------------


def test_unsigned_frames_are_refused_when_signatures_are_required(trust) -> None:
    with pytest.raises(SignatureError, match="not signed") as exc:
        Verifier(trust, FED).decode(encode_frame(update()))
    assert exc.value.reason == "wire.signature"


def test_every_flipped_byte_of_a_signed_frame_is_caught(keys, trust) -> None:
    data = encode_frame(update(), signer=signer(keys, "edge/north/n0"))
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(WireFormatError):
            Verifier(trust, FED).decode(bytes(bad))


def test_claims_must_match_the_frame(keys, trust) -> None:
    """A signer that signs claims other than the frame's (a buggy or hostile encoder)."""
    s = signer(keys, "edge/north/n0")
    data = bytearray(encode_frame(update(), signer=s))
    signed, block = split_signed(bytes(data))
    assert block is not None
    # re-sign the same bytes claiming another base version
    import msgpack

    sb = s.sign("update", "north", 99, 7, payload_hash(signed))
    forged = msgpack.packb({"alg": "ed25519", "signer": sb.signer, "kind": sb.kind,
                            "fed": sb.federation, "fog": sb.fog, "base": sb.base, "seq": sb.seq,
                            "ctr": sb.counter, "h": sb.payload_hash, "sig": sb.signature})
    frame = bytes(signed) + forged + len(forged).to_bytes(2, "little")
    with pytest.raises(SignatureError, match="differ from the signed claims"):
        Verifier(trust, FED).decode(frame)


# fixed bytes (not os.urandom: a failing case must replay, and test ids must be stable)
@pytest.mark.parametrize("tail", [b"\0\0", b"\xff\xff", b"\x05\x00",
                                  bytes(range(7, 247, 6)) + b"\x28\x00"])
def test_malformed_signature_blocks_are_typed_errors(keys, trust, tail) -> None:
    data = encode_frame(update())
    header = bytearray(data[:12])
    header[5] |= 0x02
    with pytest.raises(SignatureError):
        Verifier(trust, FED).decode(bytes(header) + data[12:] + tail)


def test_another_federation_is_refused(keys) -> None:
    other = Signer("edge/north/n0", keys["edge/north/n0"], "other")
    trust = TrustStore.from_parties({"edge/north/n0": keys["edge/north/n0"].public_key()}, FED)
    data = encode_frame(UpdateFrame("other", "north", "n0", 0, 0, 1, vec()), signer=other)
    with pytest.raises(SignatureError, match="federation"):
        Verifier(trust, FED).decode(data)


def test_unverified_decoding_still_reads_a_signed_frame(keys) -> None:
    data = encode_frame(update(), signer=signer(keys, "edge/north/n0"))
    frame = decode_frame(data)
    assert isinstance(frame, UpdateFrame) and frame.edge_id == "n0"


# --- replays ------------------------------------------------------------------------------------


def test_replayed_updates_and_aggregates_are_refused(keys, trust) -> None:
    v = Verifier(trust, FED)
    up = encode_frame(update(), signer=signer(keys, "edge/north/n0"))
    agg = encode_frame(aggregate(), signer=signer(keys, "fog/north"))
    v.decode(up)
    v.decode(agg)
    for data in (up, agg):
        with pytest.raises(ReplayError) as exc:
            v.decode(data)
        assert exc.value.reason == "wire.replay"
    # a tier's own copy (its spool) is read back without the replay check
    assert v.decode(up, replay=False).frame.edge_id == "n0"  # type: ignore[union-attr]


def test_models_may_repeat_but_not_go_back(keys, trust) -> None:
    """A retained model arrives again on every subscribe: equal counters pass, older fail."""
    v = Verifier(trust, FED)
    s = signer(keys, "cloud")
    old = encode_frame(global_model(3), signer=s)
    new = encode_frame(global_model(4), signer=s)
    v.decode(new)
    v.decode(new)
    with pytest.raises(ReplayError):
        v.decode(old)


def test_counters_increase_across_signer_restarts(keys, tmp_path: Path) -> None:
    state = tmp_path / "counter"
    a = Signer("cloud", keys["cloud"], FED, state_path=state).sign("model", "", 1, 0, b"h" * 32)
    b = Signer("cloud", keys["cloud"], FED, state_path=state).sign("model", "", 1, 0, b"h" * 32)
    assert b.counter > a.counter
    # a clock stepped back cannot make it reuse a counter: the state file holds the floor
    state.write_text(str(10**18))
    c = Signer("cloud", keys["cloud"], FED, state_path=state).sign("model", "", 1, 0, b"h" * 32)
    assert c.counter == 10**18 + 1


def test_the_counter_file_is_a_reservation_written_once_a_minute(keys, tmp_path: Path,
                                                                monkeypatch) -> None:
    """The state file holds a floor COUNTER_RESERVE_US above the counter that wrote it: one
    write for a minute of signatures, and a restart (even with the clock stepped back)
    continues above every counter issued."""
    state = tmp_path / "counter"
    writes: list[str] = []
    real_write = signing._atomic_write_text

    def counting(path: Path, text: str) -> None:
        writes.append(text)
        real_write(path, text)

    monkeypatch.setattr(signing, "_atomic_write_text", counting)
    now = [1_800_000_000 * 10**9]  # a fixed wall clock, ns
    monkeypatch.setattr(signing.time, "time_ns", lambda: now[0])
    s = Signer("fog/north", keys["fog/north"], FED, state_path=state)
    ctrs = []
    for _ in range(100):
        ctrs.append(s.sign("model", "north", 1, 0, b"h" * 32).counter)
        now[0] += 100_000_000  # 0.1 s apart: 10 s in all
    assert ctrs == sorted(set(ctrs))
    assert len(writes) == 1  # written before the first counter was used, not since
    assert int(state.read_text()) == ctrs[0] + COUNTER_RESERVE_US > ctrs[-1]
    # a counter past the reservation rewrites it first
    now[0] += COUNTER_RESERVE_US * 1000
    late = s.sign("model", "north", 1, 0, b"h" * 32).counter
    assert len(writes) == 2
    assert int(state.read_text()) == late + COUNTER_RESERVE_US
    # a restart with the clock stepped back an hour: above every counter issued
    now[0] -= 3600 * 10**9
    again = Signer("fog/north", keys["fog/north"], FED, state_path=state)
    assert again.sign("model", "north", 1, 0, b"h" * 32).counter > late


def test_a_failed_reservation_write_issues_no_counter(keys, tmp_path: Path,
                                                      monkeypatch) -> None:
    def broken(path: Path, text: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(signing, "_atomic_write_text", broken)
    s = Signer("fog/north", keys["fog/north"], FED, state_path=tmp_path / "counter")
    with pytest.raises(OSError, match="disk full"):
        s.sign("model", "north", 1, 0, b"h" * 32)
    monkeypatch.setattr(signing, "_atomic_write_text", lambda p, t: p.write_text(t))
    # the next attempt still writes (the failed one reserved nothing)
    s.sign("model", "north", 1, 0, b"h" * 32)
    assert (tmp_path / "counter").exists()


def test_replay_counters_survive_a_restart_on_disk(keys, trust, tmp_path: Path) -> None:
    path = tmp_path / "replay.json"
    up = encode_frame(update(), signer=signer(keys, "edge/north/n0"))
    Verifier(trust, FED, replay=ReplayGuard(path)).decode(up)
    with pytest.raises(ReplayError):
        Verifier(trust, FED, replay=ReplayGuard(path)).decode(up)
    # the cloud's way: no file, a snapshot saved with a checkpoint seeds the next process
    g1 = ReplayGuard(autosave=False)
    Verifier(trust, FED, replay=g1).decode(up)
    g2 = ReplayGuard()
    g2.seed(g1.snapshot())
    with pytest.raises(ReplayError):
        Verifier(trust, FED, replay=g2).decode(up)


def test_deferred_counters_persist_only_once_committed(keys, trust, tmp_path: Path) -> None:
    """A fog defers ``update`` counters: one decoded but still queued when the fog crashed is
    not in the saved state, so the edge's re-sent copy gets in after the restart; once the
    update is kept (committed), its counter persists and a copy is refused."""
    path = tmp_path / "replay.json"
    queued = encode_frame(update(), signer=signer(keys, "edge/north/n0"))
    kept = encode_frame(update(edge="n1"), signer=signer(keys, "edge/north/n1"))
    model = encode_frame(ModelFrame(FED, 3, vec(), scope="fog", fog_id="north", seq=1),
                         signer=signer(keys, "fog/north"))
    guard = ReplayGuard(path, autosave=False, deferred=frozenset({"update"}))
    v = Verifier(trust, FED, replay=guard)
    got_kept = v.decode(kept)
    v.decode(queued)
    v.decode(model)  # not deferred: persists when checked
    with pytest.raises(ReplayError):  # refused at once in memory, committed or not
        v.decode(queued)
    assert got_kept.sig is not None
    guard.commit(got_kept.sig)
    guard.save()
    assert set(json.loads(path.read_text())) == {"edge/north/n1|update", "fog/north|model"}
    after = Verifier(trust, FED, replay=ReplayGuard(path, deferred=frozenset({"update"})))
    after.decode(queued)  # the re-sent copy of the update never kept
    with pytest.raises(ReplayError):
        after.decode(kept)
    # without deferral (the old behaviour) the queued update's counter was saved too
    plain = ReplayGuard(tmp_path / "plain.json", autosave=False)
    Verifier(trust, FED, replay=plain).decode(queued)
    plain.save()
    assert "edge/north/n0|update" in json.loads((tmp_path / "plain.json").read_text())


def test_unverified_claims_read_the_block_without_the_body(keys) -> None:
    """What hierfl sim's observer uses to attribute bytes to a round: the signed claims, no
    decompression; None for an unsigned frame or junk (never an exception)."""
    data = encode_frame(update(), signer=signer(keys, "edge/north/n0"))
    sb = unverified_claims(data)
    assert sb is not None and (sb.kind, sb.fog, sb.base, sb.seq) == ("update", "north", 3, 7)
    assert unverified_claims(encode_frame(update())) is None
    assert unverified_claims(b"junk") is None
    assert unverified_claims(data[:-3] + b"\xff\xff") is None  # a bad block length


def test_unreadable_replay_state_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "replay.json"
    path.write_text("{not json")
    with pytest.raises(WireFormatError):
        ReplayGuard(path)


# --- provenance ---------------------------------------------------------------------------------


def test_edge_proofs_verify_and_forgeries_do_not(keys, trust) -> None:
    v = Verifier(trust, FED)
    got = v.decode(encode_frame(update(), signer=signer(keys, "edge/north/n0")))
    assert got.sig is not None
    proof = edge_proof(got.sig, "n0")
    verify_proof(trust, FED, "north", proof)
    with pytest.raises(SignatureError):
        verify_proof(trust, FED, "north", EdgeProof("n0", 3, 8, proof.counter,
                                                    proof.payload_hash, proof.signature))
    with pytest.raises(SignerError):
        verify_proof(trust, FED, "north", EdgeProof("ghost", 3, 7, 1, b"\0" * 32, b"\0" * 64))
    # provenance travels in the aggregate frame
    agg = AggregateFrame(FED, "north", 3, 10, ("n0",), 1, vec(), provenance=(proof,))
    back = decode_frame(encode_frame(agg))
    assert isinstance(back, AggregateFrame) and back.provenance == (proof,)


def test_sig_block_json_round_trip(keys) -> None:
    sb = signer(keys, "fog/north").sign("aggregate", "north", 3, 1, b"x" * 32)
    assert SigBlock.from_json(sb.to_json()) == sb
    with pytest.raises(SignatureError):
        SigBlock.from_json({"signer": "x"})


# --- trust files, revocation, kits --------------------------------------------------------------


@pytest.fixture
def prov(tmp_path: Path):
    spec = ProjectSpec(federation=FED, fogs={"north": ("n0", "n1")})
    return provision(spec, tmp_path / "pki", tls=False)


def test_revocation_applies_without_a_restart(prov) -> None:
    trust = TrustStore(prov.trust_bundle, FED, revoked=prov.revocation_list, check_every_s=0)
    key = load_signing_key(prov.edge_kit("north", "n1") / "signing.key")
    v = Verifier(trust, FED)
    s = Signer("edge/north/n1", key, FED)
    v.decode(encode_frame(update(edge="n1"), signer=s))
    time.sleep(0.01)  # a new mtime stamp
    assert revoke(prov.out, "edge/north/n1", reason="stolen")
    with pytest.raises(RevokedError) as exc:
        v.decode(encode_frame(update(edge="n1"), signer=s))
    assert exc.value.reason == "wire.revoked"
    assert trust.edges_of("north") == frozenset({"n0"})


def test_a_broken_trust_file_keeps_the_last_good_state(prov) -> None:
    trust = TrustStore(prov.trust_bundle, FED, revoked=prov.revocation_list, check_every_s=0)
    prov.trust_bundle.write_text("{half a file")
    trust.refresh(force=True)
    assert "edge/north/n0" in trust.parties()


def test_tier_security_from_a_kit(prov) -> None:
    kit = prov.fog_kit("north")
    s = FogSettings.load(kit / "fog.toml")
    assert s.security.key_file == kit / "signing.key"  # relative to the TOML's folder
    sec = tier_security(s.security, federation=FED, party_id="fog/north", tier="fog")
    assert sec.enabled and sec.signer is not None
    # the kit of another party: the key does not match the party
    with pytest.raises(ConfigError, match="not the key"):
        tier_security(s.security, federation=FED, party_id="edge/north/n0", tier="fog")


def test_required_signing_without_a_kit_refuses_to_start() -> None:
    s = FogSettings.load(fog_id="north")
    with pytest.raises(ConfigError, match="hierfl provision"):
        tier_security(s.security, federation=FED, party_id="fog/north", tier="fog")


def test_signing_off_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    s = FogSettings.load(fog_id="north", security={"signing": "off"})
    sec = tier_security(s.security, federation=FED, party_id="fog/north", tier="fog north")
    assert not sec.enabled
    assert "SIGNATURES ARE OFF" in caplog.text


def test_a_private_key_others_can_read_is_refused(prov) -> None:
    key = prov.fog_kit("north") / "signing.key"
    assert key.stat().st_mode & 0o077 == 0
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_signing_key(key)


def test_trust_bundle_of_another_federation_is_refused(prov) -> None:
    with pytest.raises(ConfigError, match="federation"):
        TrustStore(prov.trust_bundle, "other")
    doc = json.loads(prov.trust_bundle.read_text())
    doc["parties"]["fog/north"]["role"] = "cloud"
    prov.trust_bundle.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="role"):
        TrustStore(prov.trust_bundle, FED)


def test_an_edge_revoked_after_its_update_still_proves_it_at_the_cloud(keys, trust) -> None:
    got = Verifier(trust, FED).decode(encode_frame(update(), signer=signer(keys, "edge/north/n0")))
    assert got.sig is not None
    proof = edge_proof(got.sig, "n0")
    trust.revoke("edge/north/n0")
    with pytest.raises(RevokedError):
        verify_proof(trust, FED, "north", proof)
    verify_proof(trust, FED, "north", proof, revoked_ok=True)  # what the cloud does


def test_the_meta_section_is_under_the_signature(keys, trust) -> None:
    """Version 3 keeps clock readings outside the compressed body, but inside what is signed:
    a broker that rewrites an update's timing (or created_at) breaks its signature."""
    from hierfl.wire.frames import TimingSpan

    f = update(timing=(TimingSpan("edge.train", "", 1.0, 2.0),))
    data = bytearray(encode_frame(f, signer=signer(keys, "edge/north/n0")))
    assert Verifier(trust, FED).decode(bytes(data)).frame.timing == f.timing
    at = bytes(data).index(b"edge.train")
    data[at] ^= 0x01  # "edge.train" -> "ddge.train": still a valid span name
    with pytest.raises(SignatureError):
        Verifier(trust, FED).decode(bytes(data))
