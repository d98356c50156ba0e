"""raw and fp16 round trips and their decoders' strictness."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hierfl.compression import FP16_MAX, Fp16Codec, RawCodec
from hierfl.errors import BadTensorError, NonFiniteTensorError

finite_f32 = hnp.arrays(
    np.float32,
    st.integers(0, 200),
    elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
)


@settings(max_examples=100, deadline=None)
@given(finite_f32)
def test_raw_is_exact(x: np.ndarray) -> None:
    out = RawCodec().decode(RawCodec().encode(x), x.size)
    np.testing.assert_array_equal(out.view(np.uint32), x.view(np.uint32))
    assert RawCodec.lossless


@settings(max_examples=100, deadline=None)
@given(finite_f32)
def test_fp16_error_within_half_precision(x: np.ndarray) -> None:
    # Execute
    out = Fp16Codec().decode(Fp16Codec().encode(x), x.size)
    # Assert: relative 2**-11 for normal float16, absolute 2**-25 in the subnormal range,
    # and clipped (never Inf) outside +-65504.
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    target = np.clip(x, -FP16_MAX, FP16_MAX).astype(np.float64)
    err = np.abs(out.astype(np.float64) - target)
    bound = np.maximum(np.abs(target) * 2.0**-11, 2.0**-25)
    assert (err <= bound).all()


def test_fp16_clips_instead_of_overflowing() -> None:
    x = np.array([1e6, -1e30, 65519.0, 65520.0, 1.0], dtype=np.float32)
    out = Fp16Codec().decode(Fp16Codec().encode(x), x.size)
    np.testing.assert_array_equal(out, [65504.0, -65504.0, 65504.0, 65504.0, 1.0])


def test_raw_layout_is_little_endian_float32() -> None:
    fields = RawCodec().encode(np.array([1.0, -2.0], dtype=np.float32))
    assert fields == {"codec": "raw", "data": b"\x00\x00\x80\x3f\x00\x00\x00\xc0"}


@pytest.mark.parametrize("codec", [RawCodec(), Fp16Codec()])
@pytest.mark.parametrize("delta", [-1, 1])
def test_dense_rejects_wrong_length(codec: RawCodec | Fp16Codec, delta: int) -> None:
    fields = codec.encode(np.ones(10, np.float32))
    fields["data"] = fields["data"][:-1] if delta < 0 else fields["data"] + b"\x00"
    with pytest.raises(BadTensorError, match="'data'"):
        codec.decode(fields, 10)


@pytest.mark.parametrize("codec", [RawCodec(), Fp16Codec()])
def test_dense_rejects_non_finite_payload(codec: RawCodec | Fp16Codec) -> None:
    dtype = "<f4" if isinstance(codec, RawCodec) else "<f2"
    for bad in (np.nan, np.inf, -np.inf):
        fields = {"codec": codec.name, "data": np.array([0.0, bad], dtype=dtype).tobytes()}
        with pytest.raises(NonFiniteTensorError, match="NaN or Inf"):
            codec.decode(fields, 2)


@pytest.mark.parametrize("codec", [RawCodec(), Fp16Codec()])
def test_dense_rejects_wrong_types_and_keys(codec: RawCodec | Fp16Codec) -> None:
    good = codec.encode(np.ones(2, np.float32))
    for bad in (
        {**good, "data": list(good["data"])},
        {**good, "data": bytearray(good["data"])},
        {**good, "data": good["data"].hex()},
        {**good, "extra": 1},
        {"codec": codec.name},
    ):
        with pytest.raises(BadTensorError):
            codec.decode(bad, 2)
