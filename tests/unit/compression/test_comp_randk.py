"""rand-k: seeded index regeneration, unbiasedness, layout and decoder strictness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hierfl.compression import RandKCodec, make_codec, randk_indices
from hierfl.errors import BadTensorError, NonFiniteTensorError


def test_indices_are_pinned_across_numpy_versions() -> None:
    # Edge and fog must agree on the indices from a seed alone. If this changes, numpy's
    # PCG64/SeedSequence stream changed and the wire format with it.
    assert randk_indices(12345, 5, 1000).tolist() == PINNED_5_OF_1000
    assert randk_indices(0, 7, 10).tolist() == PINNED_7_OF_10


PINNED_5_OF_1000 = [227, 316, 391, 676, 797]
PINNED_7_OF_10 = [1, 3, 4, 5, 7, 8, 9]


def _reference_indices(seed: int, k: int, size: int) -> list[int]:
    """The documented algorithm, one draw at a time, for cross-checking the vectorised one."""
    words = np.random.PCG64(seed).random_raw(100_000)
    m = min(k, size - k)
    threshold = (2**32 - size) % size
    chosen: list[int] = []
    for word in words.tolist() if m else []:
        prod = (word >> 32) * size
        if prod & 0xFFFFFFFF < threshold:
            continue
        value = prod >> 32
        if value not in chosen:
            chosen.append(value)
        if len(chosen) == m:
            break
    picked = set(chosen) if m == k else set(range(size)) - set(chosen)
    return sorted(picked)


@pytest.mark.parametrize(
    ("seed", "k", "size"),
    [(1, 10, 1000), (2, 600, 1000), (3, 499, 999), (4, 3, 7), (5, 1, 1), (2**63 - 1, 50, 60)],
)
def test_vectorised_indices_match_reference(seed: int, k: int, size: int) -> None:
    assert randk_indices(seed, k, size).tolist() == _reference_indices(seed, k, size)


@pytest.mark.parametrize(
    ("k", "size"),
    [(0, 0), (0, 5), (1, 1), (3, 10), (5, 10), (9, 10), (10, 10), (100, 1000), (999, 1000)],
)
def test_indices_distinct_sorted_in_range(k: int, size: int) -> None:
    for seed in range(20):
        idx = randk_indices(seed, k, size)
        assert idx.size == k
        assert (np.diff(idx) > 0).all()
        assert k == 0 or (idx[0] >= 0 and idx[-1] < size)


def test_index_choice_is_uniform() -> None:
    # Each coordinate is chosen with probability k/d: counts over n seeds are
    # Binomial(n, k/d); allow 6 sigma per coordinate.
    size, n = 40, 4000
    for k in (3, 30):  # the direct draw and the complement path
        counts = np.zeros(size)
        for seed in range(n):
            counts[randk_indices(seed, k, size)] += 1
        p = k / size
        assert np.abs(counts - n * p).max() <= 6 * math.sqrt(n * p * (1 - p))


def test_scaled_randk_is_unbiased() -> None:
    # Prepare
    rng = np.random.default_rng(7)
    x = rng.normal(size=50).astype(np.float32)
    codec = RandKCodec(fraction=0.1)  # k = 5 of 50
    n = 4000
    # Execute
    total = np.zeros(x.size)
    for _ in range(n):
        total += codec.decode(codec.encode(x, rng), x.size)
    # Assert: each sample is x*d/k w.p. k/d, else 0; var = x^2 (d/k - 1).
    sigma = np.abs(x) * math.sqrt((x.size / 5 - 1) / n)
    assert (np.abs(total / n - x) <= 6 * sigma + 1e-9).all()


def test_unscaled_sends_original_values() -> None:
    x = np.arange(1, 101, dtype=np.float32)
    out = make_codec("randk:fraction=0.1,scaled=false").decode(
        make_codec("randk:fraction=0.1,scaled=false").encode(x), 100
    )
    kept = np.flatnonzero(out)
    assert kept.size == 10
    np.testing.assert_array_equal(out[kept], x[kept])


def test_codec_seed_gives_reproducible_but_varying_frames() -> None:
    x = np.ones(100, dtype=np.float32)
    a, b = RandKCodec(seed=3), RandKCodec(seed=3)
    first = [a.encode(x)["seed"] for _ in range(3)]
    assert first == [b.encode(x)["seed"] for _ in range(3)]
    assert len(set(first)) == 3


def test_layout() -> None:
    x = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    fields = make_codec("randk+int8:fraction=0.01").encode(x, np.random.default_rng(0))
    assert set(fields) == {"codec", "k", "seed", "values.chunk", "values.absmax", "values.q"}
    assert fields["codec"] == "randk+int8"
    assert fields["k"] == 10
    assert 0 <= fields["seed"] < 2**63


def _valid() -> dict[str, object]:
    return RandKCodec(fraction=0.25).encode(np.ones(20, np.float32), np.random.default_rng(0))


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"k": 21}, "'k'"),
        ({"k": 2**40}, "'k'"),
        ({"k": 4}, "values"),  # 5 values sent
        ({"seed": -1}, "'seed'"),
        ({"seed": 2**63}, "'seed'"),
        ({"seed": 2**64 + 5}, "'seed'"),
        ({"seed": 1.0}, "'seed'"),
        ({"seed": None}, "'seed'"),
        ({"values.data": b"\x00" * 19}, "values"),
        ({"values.data": np.array([np.nan] * 5, "<f4").tobytes()}, "NaN or Inf"),
        ({"idx": b""}, "'idx'"),
    ],
)
def test_decode_rejects_malformed(patch: dict[str, object], field: str) -> None:
    fields = {**_valid(), **patch}
    with pytest.raises((BadTensorError, NonFiniteTensorError), match=field):
        RandKCodec().decode(fields, 20)


def test_seeded_codec_is_reproducible_with_int8_values() -> None:
    x = np.random.default_rng(0).normal(size=500).astype(np.float32)
    a = make_codec("randk+int8:fraction=0.1,seed=11")
    b = make_codec("randk+int8:fraction=0.1,seed=11")
    assert a.encode(x) == b.encode(x)


@pytest.mark.parametrize(
    "spec",
    ["randk:fraction=0.05", "randk:fraction=0.05,scaled=false", "randk+int8:fraction=0.3",
     "randk+fp16:fraction=1.0", "randk:fraction=0.0001"],
)
@pytest.mark.parametrize("size", [1, 7, 10_000])
def test_encode_decoded_matches_decode_bit_for_bit(spec: str, size: int) -> None:
    """What error feedback keeps as 'sent' is exactly what the receiver decodes."""
    codec = make_codec(spec)
    x = np.random.default_rng(size).normal(size=size).astype(np.float32)
    fields, decoded = codec.encode_decoded(x, np.random.default_rng(1))
    again = codec.encode(x, np.random.default_rng(1))  # same draws, same fields
    assert fields.keys() == again.keys()
    assert all(np.array_equal(np.asarray(fields[k]), np.asarray(again[k])) if not isinstance(
        fields[k], bytes) else fields[k] == again[k] for k in fields)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, codec.decode(fields, size))
