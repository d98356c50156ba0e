"""Model deltas (wire format v2): the frame, its strict decoding, the fog's Downlink and
apply_model_delta, including hostile deltas (unknown base, wrong size, NaN, wrong digest)."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard

from hierfl.errors import (
    BadTensorError,
    FrameFieldError,
    ModelBaseError,
    NonFiniteTensorError,
    UnsupportedVersionError,
)
from hierfl.wire import (
    ModelDeltaFrame,
    ModelFrame,
    decode_frame,
    encode_frame,
    weights_digest,
)
from hierfl.wire.codec import DELTA_FORMAT_VERSION, FORMAT_VERSION
from hierfl.wire.downlink import Downlink, apply_model_delta
from tests.unit.wire.wire_strategies import craft, model_delta_map, raw_vector, update_map

RNG = np.random.default_rng(7)
W0 = RNG.normal(size=1000).astype(np.float32)


def fog_model(weights: np.ndarray, seq: int, version: int = 3, fog: str = "fog-a") -> ModelFrame:
    return ModelFrame(federation="fed", version=version, weights=weights, parent=version,
                      scope="fog", fog_id=fog, seq=seq, fog_round=0)


def delta_frame(**kw: Any) -> ModelDeltaFrame:
    base = {"federation": "fed", "fog_id": "fog-a", "version": 3, "seq": 2, "base_version": 3,
            "base_seq": 1, "delta": np.zeros(3, np.float32), "digest": bytes(16)}
    return ModelDeltaFrame(**(base | kw))


# --- the frame --------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [None, "shuffle", "fp16", "int8", "topk+fp16:fraction=0.1"])
def test_round_trip_under_format_version_2(codec: str | None) -> None:
    frame = delta_frame(delta=RNG.normal(size=50).astype(np.float32), metrics={"loss": 0.5},
                        created_at=12.5, fog_round=2)
    data = encode_frame(frame, codec=codec)
    assert data[4] == DELTA_FORMAT_VERSION == 2
    out = decode_frame(data)
    assert isinstance(out, ModelDeltaFrame)
    assert (out.version, out.seq, out.base_version, out.base_seq, out.fog_round) == (3, 2, 3, 1, 2)
    assert out.digest == frame.digest
    assert out.delta.shape == (50,)
    if codec in (None, "shuffle"):  # lossless
        np.testing.assert_array_equal(out.delta, frame.delta)


def test_v1_frames_keep_format_version_1() -> None:
    # v1 receivers must keep decoding everything they knew: only model_delta is written as v2
    data = encode_frame(fog_model(W0, 1))
    assert data[4] == FORMAT_VERSION == 1


def test_model_delta_under_a_v1_header_is_refused() -> None:
    with pytest.raises(FrameFieldError) as info:
        decode_frame(craft(model_delta_map(), version=1))
    assert info.value.field == "kind"


def test_v1_kinds_under_a_v2_header_decode() -> None:
    assert decode_frame(craft(update_map(), version=2)).KIND == "update"


def test_version_3_is_refused() -> None:
    with pytest.raises(UnsupportedVersionError):
        decode_frame(craft(model_delta_map(), version=3))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("digest", b"\0" * 15),
        ("digest", b"\0" * 17),
        ("digest", "0" * 16),
        ("digest", None),
        ("base_seq", 9),  # not older than seq 9
        ("base_seq", 10),
        ("base_version", 5),  # newer than version 4
        ("seq", 0),  # no base_seq can precede it
        ("base_seq", -1),
        ("base_seq", 1.0),
        ("version", True),
        ("fog", None),
        ("fog", "a/b"),
        ("fog_round", 10_001),
    ],
)
def test_bad_fields_are_refused(key: str, value: Any) -> None:
    with pytest.raises(FrameFieldError):
        decode_frame(craft(model_delta_map(**{key: value})))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_delta_is_refused(bad: float) -> None:
    values = np.ones(4, np.float32)
    values[2] = bad
    with pytest.raises(NonFiniteTensorError):
        decode_frame(craft(model_delta_map(delta=raw_vector(values))))


def test_fp16_delta_holding_nan_is_refused() -> None:
    data = np.array([1.0, np.nan], dtype="<f2").tobytes()
    m = model_delta_map(delta={"codec": "fp16", "size": 2, "data": data})
    with pytest.raises(NonFiniteTensorError):
        decode_frame(craft(m))


def test_delta_size_is_bounded_before_allocation() -> None:
    m = model_delta_map(delta={"codec": "topk", "size": 10**9, "k": 0, "idx": b""})
    with pytest.raises(BadTensorError):
        decode_frame(craft(m))


# --- apply_model_delta ------------------------------------------------------------------------


def test_apply_reproduces_the_digest() -> None:
    held = fog_model(W0, 1)
    d = (RNG.normal(size=W0.size) * 0.01).astype(np.float32)
    new = W0 + d
    out = apply_model_delta(held, delta_frame(delta=d, digest=weights_digest(new), fog_round=1))
    np.testing.assert_array_equal(out.weights, new)
    assert (out.version, out.seq, out.fog_round, out.scope, out.fog_id) == (3, 2, 1, "fog",
                                                                            "fog-a")


def test_the_digest_is_blake3_of_the_little_endian_float32_bytes() -> None:
    from blake3 import blake3

    w = RNG.normal(size=257).astype(np.float32)
    assert weights_digest(w) == blake3(w.astype("<f4").tobytes()).digest(length=16)
    assert weights_digest(w.astype(">f4")) == weights_digest(w)  # values, not the byte order
    assert weights_digest(w[::2]) == weights_digest(np.ascontiguousarray(w[::2]))
    z = np.zeros(4, np.float32)
    assert weights_digest(z) != weights_digest(-z)  # bit-exact: -0.0 is another model


def test_a_delta_digested_the_old_way_is_refused_so_the_edge_takes_the_full_model() -> None:
    """hierfl before 2026-12-07 digested with BLAKE2b-128: its deltas never apply here (and
    ours never apply there), which sends the receiver to the full model, never to wrong
    weights."""
    import hashlib

    held = fog_model(W0, 1)
    d = (RNG.normal(size=W0.size) * 0.01).astype(np.float32)
    old = hashlib.blake2b((W0 + d).astype("<f4").tobytes(), digest_size=16).digest()
    with pytest.raises(ModelBaseError):
        apply_model_delta(held, delta_frame(delta=d, digest=old, fog_round=1))


@pytest.mark.parametrize(
    ("held", "delta"),
    [
        pytest.param(fog_model(W0, 5), {}, id="unknown-base-seq"),
        pytest.param(fog_model(W0, 1, version=2), {}, id="unknown-base-version"),
        pytest.param(fog_model(W0, 1, fog="fog-b"), {}, id="other-fog"),
        pytest.param(fog_model(W0, 1), {"federation": "other"}, id="other-federation"),
        pytest.param(fog_model(W0, 1), {"delta": np.zeros(999, np.float32)}, id="wrong-size"),
        pytest.param(fog_model(W0, 1), {"digest": b"\x01" * 16}, id="wrong-digest"),
        pytest.param(fog_model(np.full(3, 3e38, np.float32), 1),
                     {"delta": np.full(3, 3e38, np.float32)}, id="overflows-to-inf"),
    ],
)
def test_apply_refuses(held: ModelFrame, delta: dict[str, Any]) -> None:
    kw = {"delta": np.zeros(held.weights.size, np.float32),
          "digest": weights_digest(held.weights)} | delta
    with pytest.raises(ModelBaseError):
        apply_model_delta(held, delta_frame(**kw))


# --- the fog's Downlink -----------------------------------------------------------------------


def _edge_side(downlink_msgs: list[tuple[bytes, bytes | None]]) -> ModelFrame:
    """Replay what an edge that received the first full model and then only deltas holds."""
    held: ModelFrame | None = None
    for full, stream in downlink_msgs:
        if held is None:
            f = decode_frame(full)
            assert isinstance(f, ModelFrame)
            held = f
            continue
        assert stream is not None
        d = decode_frame(stream)
        assert isinstance(d, ModelDeltaFrame)
        held = apply_model_delta(held, d)
    assert held is not None
    return held


@pytest.mark.parametrize("codec", [None, "shuffle", "fp16", "int8", "topk+fp16:fraction=0.05",
                                   "randk:fraction=0.1,scaled=false"])
def test_lossy_deltas_track_what_the_edges_hold(codec: str | None) -> None:
    dl = Downlink(codec=codec, delta=True, max_params=10_000)
    w = W0.copy()
    sent = []
    for seq in range(1, 8):
        target = fog_model(w, seq)
        out = dl.prepare(target)
        dl.commit(out)
        assert out.is_delta == (seq > 1)
        sent.append((out.full, out.stream))
        # fog and edges agree bit for bit: a joiner's full model == a follower's reconstruction
        full = decode_frame(out.full)
        assert isinstance(full, ModelFrame)
        assert weights_digest(full.weights) == weights_digest(out.held.weights)
        assert weights_digest(_edge_side(sent).weights) == weights_digest(out.held.weights)
        w = (w + RNG.normal(size=w.size).astype(np.float32) * 0.01).astype(np.float32)
    # the reconstruction stays close to the fog's exact model: errors do not accumulate
    err = np.abs(out.held.weights - out.target.weights).max()
    if codec in (None, "shuffle"):
        assert err <= 1e-6
    elif codec in ("fp16", "int8"):
        assert err < 0.01
    else:
        assert err < 0.1  # sparse: untransmitted coordinates wait for a later delta


def test_fp16_delta_is_half_the_full_model() -> None:
    dl = Downlink(codec="fp16", delta=True, max_params=10_000)
    dl.commit(dl.prepare(fog_model(W0, 1)))
    out = dl.prepare(fog_model(W0 + 0.01, 2))
    assert out.is_delta
    assert out.stream is not None
    assert len(out.stream) < 0.6 * len(out.full)


def test_no_base_sends_the_full_model_on_the_stream() -> None:
    dl = Downlink(codec="fp16", delta=True, max_params=10_000)
    out = dl.prepare(fog_model(W0, 4))
    assert not out.is_delta
    assert out.stream == out.full
    np.testing.assert_array_equal(out.held.weights, W0)  # full models are exact (raw)


def test_republishing_the_held_model_resends_it_in_full() -> None:
    # A resumed fog publishes the model its edges already hold: same weights, no delta.
    dl = Downlink(codec="fp16", delta=True, max_params=10_000)
    retained = fog_model(W0 + 1, 6)
    dl.seed(retained)
    out = dl.prepare(fog_model(W0, 6))
    assert out.stream == out.full
    assert out.held is retained


def test_model_of_another_size_is_sent_in_full() -> None:
    dl = Downlink(codec=None, delta=True, max_params=10_000)
    dl.commit(dl.prepare(fog_model(W0, 1)))
    out = dl.prepare(fog_model(W0[:10], 2))
    assert not out.is_delta


def test_a_delta_that_would_overflow_falls_back_to_the_full_model() -> None:
    dl = Downlink(codec=None, delta=True, max_params=10_000)
    dl.commit(dl.prepare(fog_model(np.full(4, -3e38, np.float32), 1)))
    out = dl.prepare(fog_model(np.full(4, 3e38, np.float32), 2))  # the difference is inf
    assert not out.is_delta


def test_without_deltas_the_model_codec_applies_to_the_full_model() -> None:
    dl = Downlink(codec="fp16", delta=False, max_params=10_000)
    out = dl.prepare(fog_model(W0, 1))
    body = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(out.full[12:]))
    assert body["weights"]["codec"] == "fp16"
    np.testing.assert_array_equal(out.held.weights, W0.astype(np.float16).astype(np.float32))
    dl.commit(out)
    second = dl.prepare(fog_model(W0 + 1, 2))
    assert second.stream == second.full  # the stream carries every model, here in full
    assert not second.is_delta


def test_a_lossless_model_codec_needs_no_decode_round_trip(monkeypatch) -> None:
    """shuffle is lossless: the fog holds the very weights it encoded (no decode of its own
    frame), and the edges decode exactly those."""
    from hierfl.wire import downlink

    def no_decode(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a lossless codec must not be decoded back")

    monkeypatch.setattr(downlink, "_decoded_weights", no_decode)
    monkeypatch.setattr(downlink, "decode_vector", no_decode)
    full_only = Downlink(codec="shuffle", delta=False, max_params=10_000)
    out = full_only.prepare(fog_model(W0, 1))
    assert out.held.weights is out.target.weights
    decoded = decode_frame(out.full)
    assert isinstance(decoded, ModelFrame)
    np.testing.assert_array_equal(decoded.weights.view(np.uint32), W0.view(np.uint32))
    dl = Downlink(codec="shuffle", delta=True, max_params=10_000)
    dl.commit(dl.prepare(fog_model(W0, 1)))
    out = dl.prepare(fog_model(W0 + np.float32(0.5), 2))
    assert out.is_delta
    body = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(out.stream[12:]))
    assert body["delta"]["codec"] == "shuffle"


def test_stochastic_codec_frames_are_encoded_once() -> None:
    # int8 rounds stochastically: the digest must match the very bytes sent
    dl = Downlink(codec="int8", delta=True, max_params=10_000)
    dl.commit(dl.prepare(fog_model(W0, 1)))
    out = dl.prepare(fog_model(W0 * 1.01, 2))
    assert out.stream is not None
    d = decode_frame(out.stream)
    assert isinstance(d, ModelDeltaFrame)
    assert d.digest == weights_digest(out.held.weights)
    assert dataclasses.replace(out.held).seq == 2
