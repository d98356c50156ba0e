"""int8: error bound, unbiased stochastic rounding, layout and decoder strictness."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hierfl.compression import Int8Codec, make_codec
from hierfl.errors import BadTensorError, ConfigError

TINY = 2.0**-148  # float32 subnormal rounding, absolute
# Any finite float32 vector, empty included.
VECTORS = hnp.arrays(
    np.float32, st.integers(0, 300),
    elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
)


def _chunk_absmax(x: np.ndarray, chunk: int) -> np.ndarray:
    return np.array(
        [np.abs(x[i : i + chunk]).max(initial=0.0) for i in range(0, x.size, chunk)],
        dtype=np.float64,
    )


@settings(max_examples=150, deadline=None)
@given(
    x=VECTORS,
    chunk=st.integers(1, 70),
    seed=st.integers(0, 2**32),
)
def test_error_below_one_step_per_chunk(x: np.ndarray, chunk: int, seed: int) -> None:
    # Prepare
    codec = Int8Codec(chunk=chunk)
    # Execute
    fields = codec.encode(x, np.random.default_rng(seed))
    out = codec.decode(fields, x.size)
    # Assert: |x - x_hat| <= absmax / 127 of its chunk (plus float32 rounding)
    assert out.dtype == np.float32
    assert out.shape == x.shape
    step = np.repeat(_chunk_absmax(x, chunk) / 127.0, chunk)[: x.size]
    err = np.abs(out.astype(np.float64) - x.astype(np.float64))
    assert (err <= step * (1 + 1e-5) + TINY).all()


def test_stochastic_rounding_is_unbiased() -> None:
    # Prepare: values at awkward fractions of a step, two chunks of different scale.
    rng = np.random.default_rng(123)
    x = np.concatenate([rng.uniform(-1, 1, 64), rng.uniform(-1e-3, 1e-3, 64)]).astype(np.float32)
    codec = Int8Codec(chunk=64)
    n = 3000
    # Execute
    decodes = np.stack([codec.decode(codec.encode(x, rng), x.size) for _ in range(n)])
    # Assert: each decode is within one step and Bernoulli between two levels, so its
    # std is <= step / 2; the mean of n has std <= step / (2 sqrt n). 6 sigma per element
    # keeps the family-wise false-alarm rate below 128 * 2e-9.
    step = np.repeat(_chunk_absmax(x, 64) / 127.0, 64)
    sigma = step / (2 * math.sqrt(n))
    bias = decodes.astype(np.float64).mean(axis=0) - x
    assert (np.abs(bias) <= 6 * sigma + 1e-12).all()
    # The pooled bias in units of sigma is ~N(0, <=1/128): a systematic rounding bias of even
    # a few percent of sigma would show here.
    assert abs((bias / sigma).mean()) <= 6 / math.sqrt(x.size)


def test_deterministic_rounding_would_be_caught() -> None:
    # Guard for the test above: nearest rounding is biased and fails its check.
    x = np.full(64, 0.3, dtype=np.float32)
    x[0] = 1.0
    step = 1.0 / 127
    nearest = np.round(x / step) * step
    sigma = step / (2 * math.sqrt(3000))
    assert (np.abs(nearest - x) > 6 * sigma).any()


def test_extremes_and_zero_chunks_are_exact() -> None:
    x = np.array([0, 0, 0, 0, 3.0, -3.0, 0.0, 3.0], dtype=np.float32)
    codec = Int8Codec(chunk=4)
    out = codec.decode(codec.encode(x, np.random.default_rng(0)), x.size)
    np.testing.assert_array_equal(out, x)


def test_layout() -> None:
    # Prepare
    x = np.array([1.0, -0.5, 0.25, 2.0, -4.0], dtype=np.float32)
    # Execute
    fields = Int8Codec(chunk=2).encode(x, np.random.default_rng(0))
    # Assert
    assert set(fields) == {"codec", "chunk", "absmax", "q"}
    assert fields["codec"] == "int8"
    assert fields["chunk"] == 2
    np.testing.assert_array_equal(np.frombuffer(fields["absmax"], "<f4"), [1.0, 2.0, 4.0])
    q = np.frombuffer(fields["q"], "i1")
    assert q.size == 5
    assert (q[[0, 3, 4]] == [127, 127, -127]).all()


def test_compression_ratio_at_default_chunk() -> None:
    x = np.random.default_rng(0).normal(size=100_000).astype(np.float32)
    fields = Int8Codec().encode(x, np.random.default_rng(0))
    payload = sum(len(v) for v in fields.values() if isinstance(v, bytes))
    assert x.nbytes / payload >= 3.99


def _valid(size: int = 10, chunk: int = 4) -> dict[str, object]:
    x = np.linspace(-1, 1, size, dtype=np.float32)
    return Int8Codec(chunk=chunk).encode(x, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"chunk": 0}, "chunk"),
        ({"chunk": -4}, "chunk"),
        ({"chunk": 2**40}, "chunk"),
        ({"chunk": True}, "chunk"),
        ({"chunk": 4.0}, "chunk"),
        ({"chunk": 5}, "absmax"),  # needs 2 scales, 3 sent
        ({"chunk": 1}, "absmax"),  # needs 10 scales: sizes are checked, not trusted
        ({"absmax": b""}, "absmax"),
        ({"absmax": np.array([1, 1, np.nan], "<f4").tobytes()}, "absmax"),
        ({"absmax": np.array([1, np.inf, 1], "<f4").tobytes()}, "absmax"),
        ({"absmax": np.array([1, -1, 1], "<f4").tobytes()}, "absmax"),
        ({"absmax": [1.0, 1.0, 1.0]}, "absmax"),
        ({"q": b"\x00" * 9}, "q"),
        ({"q": b"\x00" * 11}, "q"),
        ({"q": b"\x80" + b"\x00" * 9}, "q"),
        ({"q": "0" * 10}, "q"),
        ({"scale": 1.0}, "scale"),
    ],
)
def test_decode_rejects_malformed(patch: dict[str, object], field: str) -> None:
    fields = {**_valid(), **patch}
    with pytest.raises(BadTensorError, match=field):
        Int8Codec().decode(fields, 10)


@pytest.mark.parametrize("missing", ["chunk", "absmax", "q"])
def test_decode_rejects_missing_field(missing: str) -> None:
    fields = _valid()
    del fields[missing]
    with pytest.raises(BadTensorError, match=missing):
        Int8Codec().decode(fields, 10)


def test_decode_ignores_its_own_chunk_parameter() -> None:
    # The sender's chunk travels in the fields; any instance decodes it.
    fields = _valid(chunk=3)
    out = Int8Codec(chunk=4096).decode(fields, 10)
    assert out.shape == (10,)


def test_values_near_float32_max_stay_finite() -> None:
    big = np.finfo(np.float32).max
    x = np.array([big, -big, big / 3, 2.6793887e36], dtype=np.float32)
    codec = Int8Codec(chunk=2)
    out = codec.decode(codec.encode(x, np.random.default_rng(0)), x.size)
    assert np.isfinite(out).all()
    assert out[0] == big
    assert out[1] == -big


def test_subnormal_chunks_keep_their_scale() -> None:
    x = np.array([1e-44, -7e-45, 3e-45, 0.0], dtype=np.float32)
    codec = Int8Codec(chunk=4)
    out = codec.decode(codec.encode(x, np.random.default_rng(0)), x.size)
    assert np.abs(out.astype(np.float64) - x).max() <= 1e-44 / 127 + TINY


@settings(max_examples=100, deadline=None)
@given(
    x=VECTORS,
    chunk=st.integers(1, 70),
)
def test_nearest_rounding_error_below_half_a_step(x: np.ndarray, chunk: int) -> None:
    codec = Int8Codec(chunk=chunk, stochastic=False)
    fields = codec.encode(x)
    out = codec.decode(fields, x.size)
    step = np.repeat(_chunk_absmax(x, chunk) / 127.0, chunk)[: x.size]
    # half a step (vs one for stochastic rounding), plus float32 rounding of scale and product
    err = np.abs(out.astype(np.float64) - x.astype(np.float64))
    assert (err <= step * (0.5 + 1e-4) + TINY).all()
    # deterministic: no noise, the same bytes every time, whatever rng is passed
    assert codec.encode(x, np.random.default_rng(1)) == fields


def test_stochastic_flag_parses_and_is_checked() -> None:
    assert make_codec("int8:stochastic=false") == Int8Codec(stochastic=False)
    assert make_codec("topk+int8:fraction=0.02,stochastic=false").values == Int8Codec(
        stochastic=False)
    with pytest.raises(ConfigError):
        Int8Codec(stochastic="no")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        make_codec("int8:stochastic=maybe")
