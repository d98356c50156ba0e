"""Codec registry, spec parsing and name-based dispatch."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

import hierfl.compression as comp
from hierfl.compression import (
    CODECS,
    Codec,
    Fp16Codec,
    Int8Codec,
    RandKCodec,
    RawCodec,
    TopKCodec,
    decode_vector,
    encode_vector,
    make_codec,
)
from hierfl.errors import BadTensorError, CompressionError, ConfigError


def test_public_api_is_pinned() -> None:
    assert sorted(comp.__all__) == sorted(
        [
            "CODECS",
            "DENSE_CODECS",
            "FP16_MAX",
            "Codec",
            "ErrorFeedback",
            "Fp16Codec",
            "Int8Codec",
            "PreEncoded",
            "RandKCodec",
            "RawCodec",
            "ShuffleCodec",
            "TopKCodec",
            "decode_vector",
            "encode_vector",
            "make_codec",
            "randk_indices",
            "topk_indices",
        ]
    )


def test_registry_names_match_codecs() -> None:
    for name, factory in CODECS.items():
        codec = factory()
        assert isinstance(codec, Codec)
        assert codec.name == name


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("raw", RawCodec()),
        ("fp16", Fp16Codec()),
        ("int8", Int8Codec()),
        ("int8:chunk=4096", Int8Codec(chunk=4096)),
        (" INT8 : chunk = 1024 ", Int8Codec(chunk=1024)),
        ("int8:int8.chunk=0x100", Int8Codec(chunk=256)),
        ("topk:fraction=0.01", TopKCodec(fraction=0.01)),
        ("topk+raw:fraction=0.5", TopKCodec(fraction=0.5)),
        ("topk+int8:fraction=0.01", TopKCodec(fraction=0.01, values=Int8Codec())),
        (
            "topk+int8:fraction=0.02,chunk=512",
            TopKCodec(fraction=0.02, values=Int8Codec(chunk=512)),
        ),
        ("topk+fp16:topk.fraction=0.1", TopKCodec(fraction=0.1, values=Fp16Codec())),
        ({"name": "int8", "chunk": 64}, Int8Codec(chunk=64)),
        ({"codec": "topk+int8", "fraction": "0.25", "chunk": 8}, TopKCodec(0.25, Int8Codec(8))),
    ],
)
def test_make_codec_parses_specs(spec: str | dict[str, Any], expected: Codec) -> None:
    assert make_codec(spec) == expected


def test_make_codec_randk_params() -> None:
    codec = make_codec("randk+int8:fraction=0.05,seed=7,scaled=false")
    assert isinstance(codec, RandKCodec)
    assert (codec.fraction, codec.seed, codec.scaled) == (0.05, 7, False)
    assert codec.name == "randk+int8"
    assert make_codec({"name": "randk", "seed": None}).seed is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spec", "mentions"),
    [
        ("", "unknown codec"),
        ("gzip", "valid: raw, shuffle, fp16, int8, topk, randk"),
        ("int8+topk", "cannot compose"),
        ("topk+randk", "cannot compose"),
        ("topk+int8+fp16", "cannot compose"),
        ("int8:", "empty parameter"),
        ("int8:chunk", "not key=value"),
        ("int8:chunk=1,chunk=2", "given twice"),
        ("int8:chunk=abc", "must be an int"),
        ("int8:chunk=0", "chunk must be in"),
        ("int8:fraction=0.1", "valid: chunk"),
        ("raw:chunk=1", "valid: none"),
        ("topk:fraction=0", "fraction must be in (0, 1]"),
        ("topk:fraction=1.5", "fraction must be in (0, 1]"),
        ("topk:fraction=nan", "fraction must be in (0, 1]"),
        ("topk+int8:fp16.chunk=3", "not one of"),
        ("topk+int8:bogus=3", "int8.chunk, int8.stochastic, topk.fraction"),
        ("randk:scaled=maybe", "true or false"),
        ("randk:seed=-1", "seed must be >= 0"),
    ],
)
def test_make_codec_rejects_bad_specs(spec: str, mentions: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_codec(spec)
    assert mentions in str(info.value)


@pytest.mark.parametrize(
    "spec",
    [{"chunk": 3}, {"name": 3}, {"name": "int8", "codec": "int8"}, {"name": "int8", "chunk": True}],
)
def test_make_codec_rejects_bad_mappings(spec: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        make_codec(spec)


def test_make_codec_rejects_non_spec() -> None:
    with pytest.raises(ConfigError):
        make_codec(42)  # type: ignore[arg-type]


def test_sparse_values_must_be_dense() -> None:
    with pytest.raises(ConfigError, match="dense codec"):
        TopKCodec(values=TopKCodec())
    with pytest.raises(ConfigError, match="must be a codec"):
        RandKCodec(values="int8")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec",
    [
        "raw",
        "fp16",
        "int8",
        "topk",
        "randk",
        "topk+fp16",
        "topk+int8",
        "randk+fp16",
        "randk+int8",
    ],
)
def test_encode_then_decode_by_name(spec: str) -> None:
    # Prepare
    x = np.random.default_rng(1).normal(size=300).astype(np.float32)
    # Execute
    fields = encode_vector(x, spec, rng=np.random.default_rng(2))
    out = decode_vector(fields, x.size)
    # Assert
    assert fields["codec"] == spec
    assert out.dtype == np.float32
    assert out.shape == x.shape
    assert out.flags.writeable
    assert all(isinstance(k, str) for k in fields)
    assert all(isinstance(v, str | int | bytes) for v in fields.values())


def test_encode_is_reproducible_with_seeded_rng() -> None:
    x = np.random.default_rng(1).normal(size=1000).astype(np.float32)
    for spec in ("int8", "randk+int8:fraction=0.1", "topk+int8:fraction=0.1"):
        a = encode_vector(x, spec, rng=np.random.default_rng(5))
        b = encode_vector(x, spec, rng=np.random.default_rng(5))
        assert a == b


def test_encode_does_not_modify_input() -> None:
    x = np.random.default_rng(1).normal(size=1000).astype(np.float32)
    before = x.copy()
    for spec in ("raw", "fp16", "int8", "topk", "randk", "randk+int8", "topk+int8"):
        encode_vector(x, spec, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize(
    "vec",
    [
        np.array([1.0, np.nan], dtype=np.float32),
        np.array([np.inf], dtype=np.float32),
        np.zeros(3, dtype=np.float64),
        np.zeros((2, 2), dtype=np.float32),
        [1.0, 2.0],
    ],
)
def test_encoders_reject_bad_input(vec: Any) -> None:
    for spec in ("raw", "fp16", "int8", "topk", "randk", "topk+int8"):
        with pytest.raises(CompressionError):
            encode_vector(vec, spec)


@pytest.mark.parametrize("size", [-1, 2**40, 1.5, True, "3"])
def test_decode_rejects_invalid_expected_size(size: Any) -> None:
    fields = encode_vector(np.zeros(3, np.float32), "raw")
    with pytest.raises(CompressionError):
        decode_vector(fields, size)


@pytest.mark.parametrize(
    "fields",
    [
        {"codec": "gzip", "data": b""},
        {"codec": "topk+raw", "k": 0, "idx": b"", "values.data": b""},
        {"codec": "RAW", "data": b""},
        {"codec": 1, "data": b""},
        {"codec": "x" * 10_000},
        {"data": b""},
        [("codec", "raw")],
        None,
    ],
)
def test_decode_rejects_unknown_codec(fields: Any) -> None:
    with pytest.raises(BadTensorError, match="codec"):
        decode_vector(fields, 0)


def test_codec_decode_checks_its_own_name() -> None:
    fields = encode_vector(np.zeros(4, np.float32), "fp16")
    with pytest.raises(BadTensorError, match="codec"):
        RawCodec().decode(fields, 4)


def test_empty_vector_round_trips() -> None:
    x = np.zeros(0, dtype=np.float32)
    for spec in ("raw", "fp16", "int8", "topk", "randk", "topk+int8", "randk+int8"):
        out = decode_vector(encode_vector(x, spec), 0)
        assert out.shape == (0,)


@pytest.mark.parametrize(
    "spec", ["raw", "fp16", "int8", "topk+int8:fraction=0.1", "randk+fp16:fraction=0.1"]
)
def test_fields_survive_msgpack(spec: str) -> None:
    # Prepare: the wire layer's strict unpacking settings.
    x = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    fields = encode_vector(x, spec, rng=np.random.default_rng(0))
    # Execute
    wire = msgpack.unpackb(msgpack.packb(fields, use_bin_type=True), raw=False, strict_map_key=True)
    # Assert
    assert wire == fields
    np.testing.assert_array_equal(decode_vector(wire, x.size), decode_vector(fields, x.size))
