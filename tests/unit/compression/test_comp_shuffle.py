"""The byte-shuffled float32 codec: lossless, strict on decode, smaller frames."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hierfl.compression import ShuffleCodec, make_codec
from hierfl.compression.shuffle import shuffle_bytes, unshuffle_bytes
from hierfl.config import EdgeSettings, FogSettings
from hierfl.errors import BadTensorError, CompressionError, NonFiniteTensorError
from hierfl.wire.codec import decode_frame, encode_frame
from hierfl.wire.frames import UpdateFrame

finite = hnp.arrays(np.float32, st.integers(0, 300),
                    elements=st.floats(width=32, allow_nan=False, allow_infinity=False))


@settings(max_examples=200, deadline=None)
@given(finite)
def test_round_trip_is_bit_exact(x: np.ndarray) -> None:
    codec = ShuffleCodec()
    out = codec.decode(codec.encode(x), x.size)
    assert out.dtype == np.float32 and out.flags.writeable and out.flags.c_contiguous
    np.testing.assert_array_equal(out.view(np.uint32), x.view(np.uint32))  # -0.0, subnormals
    assert ShuffleCodec.lossless


def test_layout_is_byte_planes_of_little_endian_float32() -> None:
    fields = ShuffleCodec().encode(np.array([1.0, -2.0], dtype=np.float32))
    # 1.0 = 00 00 80 3f, -2.0 = 00 00 00 c0: plane k holds byte k of each value
    assert fields == {"codec": "shuffle", "data": b"\x00\x00" b"\x00\x00" b"\x80\x00" b"\x3f\xc0"}
    assert unshuffle_bytes(fields["data"], 2).tolist() == [1.0, -2.0]
    assert shuffle_bytes(np.array([1.0, -2.0], dtype=">f4")) == fields["data"]  # any byte order


@pytest.mark.parametrize("delta", [-4, -1, 1, 4])
def test_wrong_length_is_refused(delta: int) -> None:
    fields = ShuffleCodec().encode(np.ones(10, np.float32))
    fields["data"] = fields["data"][:delta] if delta < 0 else fields["data"] + b"\x00" * delta
    with pytest.raises(BadTensorError, match="'data'"):
        ShuffleCodec().decode(fields, 10)


def test_non_finite_payload_is_refused() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        data = shuffle_bytes(np.array([0.0, bad], dtype=np.float32))
        with pytest.raises(NonFiniteTensorError, match="NaN or Inf"):
            ShuffleCodec().decode({"codec": "shuffle", "data": data}, 2)
    with pytest.raises(CompressionError):
        ShuffleCodec().encode(np.array([np.nan], dtype=np.float32))


def test_wrong_types_and_keys_are_refused() -> None:
    good = ShuffleCodec().encode(np.ones(2, np.float32))
    for bad in (
        {**good, "data": list(good["data"])},
        {**good, "data": bytearray(good["data"])},
        {**good, "extra": 1},
        {"codec": "shuffle"},
        {**good, "codec": "raw"},
    ):
        with pytest.raises(BadTensorError):
            ShuffleCodec().decode(bad, 2)


def test_composes_as_the_values_of_a_sparse_codec() -> None:
    codec = make_codec("topk+shuffle:fraction=0.5")
    assert codec.name == "topk+shuffle"
    x = np.array([0.1, -5.0, 0.2, 3.0], np.float32)
    from hierfl.compression import decode_vector, encode_vector

    out = decode_vector(encode_vector(x, codec), 4)
    np.testing.assert_array_equal(out, [0.0, -5.0, 0.0, 3.0])


def test_settings_accept_it_for_updates_aggregates_and_models() -> None:
    assert EdgeSettings.load(fog_id="f", edge_id="e", codec="shuffle").codec == "shuffle"
    fog = FogSettings.load(fog_id="f", cloud_codec="shuffle", model_codec="shuffle",
                           downlink_delta=False)  # a full-model codec must be dense
    assert (fog.cloud_codec, fog.model_codec) == ("shuffle", "shuffle")


def test_a_frame_of_weights_like_values_is_smaller() -> None:
    """The point of the codec: weights and deltas share their sign/exponent bytes."""
    rng = np.random.default_rng(7)
    delta = (rng.normal(size=50_000) * 0.01).astype(np.float32)

    def frame(codec: str | None) -> bytes:
        return encode_frame(UpdateFrame(federation="fed", fog_id="f", edge_id="e",
                                        base_version=1, base_seq=0, num_samples=10,
                                        delta=delta), codec=codec)

    raw, shuffled = frame(None), frame("shuffle")
    assert len(shuffled) < 0.95 * len(raw)
    out = decode_frame(shuffled)
    assert isinstance(out, UpdateFrame)
    np.testing.assert_array_equal(out.delta.view(np.uint32), delta.view(np.uint32))
