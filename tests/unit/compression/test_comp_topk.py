"""top-k: selection, index coding, composition with int8, decoder strictness."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hierfl.compression import Int8Codec, TopKCodec, make_codec, topk_indices
from hierfl.compression._varint import decode_uvarints, encode_uvarints
from hierfl.errors import BadTensorError


@settings(max_examples=100, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        st.integers(1, 400),
        elements=st.floats(-1e6, 1e6, allow_nan=False, width=32),
        unique=True,
    ),
    fraction=st.floats(0.001, 1.0),
)
def test_keeps_exactly_the_k_largest(x: np.ndarray, fraction: float) -> None:
    # Prepare: unique values; drop one of each +-v pair so magnitudes are distinct too.
    _, keep = np.unique(np.abs(x), return_index=True)
    x = x[np.sort(keep)]
    codec = TopKCodec(fraction=fraction)
    k = codec.k_for(x.size)
    # Execute
    fields = codec.encode(x)
    out = codec.decode(fields, x.size)
    # Assert
    assert fields["k"] == k
    assert fraction * x.size - 1e-6 <= k < fraction * x.size + 1 + 1e-6
    expected = np.sort(np.argsort(-np.abs(x), kind="stable")[:k])
    np.testing.assert_array_equal(np.flatnonzero(out != 0), expected[x[expected] != 0])
    np.testing.assert_array_equal(out[expected], x[expected])
    assert (out[np.setdiff1d(np.arange(x.size), expected)] == 0).all()


def test_k_is_ceil_of_fraction_as_written() -> None:
    assert TopKCodec(fraction=0.07).k_for(100) == 7
    assert TopKCodec(fraction=0.01).k_for(1_000_000) == 10_000
    assert TopKCodec(fraction=0.01).k_for(1) == 1
    assert TopKCodec(fraction=1.0).k_for(5) == 5


def test_topk_indices_sorted_unique() -> None:
    x = np.random.default_rng(0).normal(size=10_000).astype(np.float32)
    idx = topk_indices(x, 100)
    assert (np.diff(idx) > 0).all()
    assert np.abs(x[idx]).min() >= np.sort(np.abs(x))[-100]


def test_layout_and_ratio_with_int8() -> None:
    # Prepare
    x = np.random.default_rng(0).normal(size=1_000_000).astype(np.float32)
    codec = make_codec("topk+int8:fraction=0.01")
    # Execute
    fields = codec.encode(x, np.random.default_rng(1))
    out = codec.decode(fields, x.size)
    # Assert
    assert set(fields) == {"codec", "k", "idx", "values.chunk", "values.absmax", "values.q"}
    assert fields["codec"] == "topk+int8"
    payload = sum(len(v) for v in fields.values() if isinstance(v, bytes))
    assert x.nbytes / payload >= 30
    kept = np.flatnonzero(out)
    assert kept.size <= 10_000
    # Each kept value within one int8 step of its original.
    absmax = np.frombuffer(fields["values.absmax"], "<f4").max()
    assert np.abs(out[kept] - x[kept]).max() <= absmax / 127 * (1 + 1e-5)


def test_plain_topk_layout() -> None:
    x = np.array([0.0, 5.0, 0.0, -7.0, 1.0], dtype=np.float32)
    fields = TopKCodec(fraction=0.4).encode(x)
    assert fields == {
        "codec": "topk",
        "k": 2,
        "idx": bytes([1, 1]),  # indices 1, 3 -> gaps 1 - 0, 3 - 1 - 1
        "values.data": np.array([5.0, -7.0], "<f4").tobytes(),
    }


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=50))
def test_varint_round_trip(values: list[int]) -> None:
    arr = np.array(values, dtype=np.uint32)
    data = encode_uvarints(arr)
    assert len(arr) <= len(data) <= 5 * len(arr)
    np.testing.assert_array_equal(decode_uvarints(data, len(values), field="idx"), arr)


@pytest.mark.parametrize(
    ("data", "count"),
    [
        (b"\x80", 1),  # unterminated
        (b"\x01\x80", 1),  # trailing continuation byte
        (b"\x01\x01", 1),  # two numbers, one claimed
        (b"\x81\x00", 1),  # overlong (non-minimal) encoding
        (b"\xff\xff\xff\xff\x10", 1),  # > uint32
        (b"\x80\x80\x80\x80\x80\x01", 1),  # six bytes
        (b"\x80", 0),
    ],
)
def test_varint_rejects_malformed(data: bytes, count: int) -> None:
    with pytest.raises(BadTensorError, match="'idx'"):
        decode_uvarints(data, count, field="idx")


def _valid(size: int = 20) -> dict[str, object]:
    x = np.arange(1, size + 1, dtype=np.float32)
    return TopKCodec(fraction=0.2, values=Int8Codec()).encode(x, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"k": 21}, "'k'"),
        ({"k": -1}, "'k'"),
        ({"k": 2**40}, "'k'"),
        ({"k": "4"}, "'k'"),
        ({"k": 3}, "'idx'"),
        ({"idx": bytes([17, 0, 0, 0])}, "'idx'"),  # 17..20: index 20 out of range
        ({"idx": bytes([25, 0, 0, 0])}, "'idx'"),  # gap beyond size
        ({"idx": bytes([0x80, 0x80, 0x80, 0x80, 0x08, 0, 0, 0])}, "'idx'"),  # 2**31
        ({"idx": b""}, "'idx'"),
        ({"idx": b"\x00" * 21}, "'idx'"),
        ({"idx": [16, 0, 0, 0]}, "'idx'"),
        ({"values.q": b"\x00" * 5}, "values"),
        ({"values.absmax": np.array([np.nan], "<f4").tobytes()}, "values"),
        ({"values.codec": "raw"}, "values.codec"),
        ({"values.extra": 1}, "extra"),
        ({"valuesq": b""}, "valuesq"),
    ],
)
def test_decode_rejects_malformed(patch: dict[str, object], field: str) -> None:
    fields = {**_valid(), **patch}
    with pytest.raises(BadTensorError, match=field):
        TopKCodec(values=Int8Codec()).decode(fields, 20)


def test_duplicate_or_unsorted_indices_are_unrepresentable() -> None:
    # Gaps are coded as i[j] - i[j-1] - 1 >= 0, so every decodable idx is strictly increasing;
    # the nearest an attacker gets to a duplicate is a negative gap, i.e. a uint32 overflow.
    fields = {**_valid(), "idx": bytes([3]) + encode_uvarints(np.array([2**32 - 1] * 3, "u4"))}
    with pytest.raises(BadTensorError, match="'idx'"):
        TopKCodec(values=Int8Codec()).decode(fields, 20)
