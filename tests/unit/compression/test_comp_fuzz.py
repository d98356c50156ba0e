"""Property and fuzz tests: any codec round-trips shape and dtype; any mangled field dict
decodes to a finite vector of the expected size or raises BadTensorError or
NonFiniteTensorError, nothing else."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hierfl.compression import decode_vector, encode_vector
from hierfl.errors import BadTensorError, NonFiniteTensorError

SPECS = [
    "raw",
    "shuffle",
    "topk+shuffle:fraction=0.4",
    "fp16",
    "int8:chunk=7",
    "int8",
    "topk:fraction=0.3",
    "topk+fp16:fraction=0.5",
    "topk+int8:fraction=0.2,chunk=3",
    "randk:fraction=0.3",
    "randk+fp16:fraction=0.5",
    "randk+int8:fraction=0.6,chunk=4",
]

vectors = hnp.arrays(
    np.float32,
    st.integers(0, 64),
    elements=st.floats(-(2.0**100), 2.0**100, width=32),
)


@settings(max_examples=150, deadline=None)
@given(x=vectors, spec=st.sampled_from(SPECS), seed=st.integers(0, 2**32))
def test_round_trip_shape_and_dtype(x: np.ndarray, spec: str, seed: int) -> None:
    fields = encode_vector(x, spec, rng=np.random.default_rng(seed))
    out = decode_vector(fields, x.size)
    assert out.dtype == np.float32
    assert out.shape == x.shape
    assert np.isfinite(out).all()


junk_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 2**64]),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=80),
    st.lists(st.integers(-5, 300), max_size=5),
)


@st.composite
def mutated_fields(draw: st.DrawFn) -> tuple[dict[Any, Any], int]:
    x = draw(vectors)
    fields: dict[Any, Any] = encode_vector(
        x, draw(st.sampled_from(SPECS)), rng=np.random.default_rng(draw(st.integers(0, 9)))
    )
    size = x.size
    for _ in range(draw(st.integers(1, 3))):
        # "codec" has its own mutation; leaving it out here spends the budget deeper in.
        keys = sorted((k for k in fields if k != "codec"), key=str)
        op = draw(
            st.sampled_from(
                ["drop", "add", "replace", "truncate", "extend", "flip", "codec", "size", "int"]
            )
        )
        if op == "drop" and keys:
            del fields[draw(st.sampled_from(keys))]
        elif op == "add":
            fields[draw(st.one_of(st.text(max_size=12), st.sampled_from(["values.q", "k", 1])))] = (
                draw(junk_values)
            )
        elif op == "replace" and keys:
            fields[draw(st.sampled_from(keys))] = draw(junk_values)
        elif op in {"truncate", "extend", "flip"}:
            byte_keys = [k for k in keys if isinstance(fields[k], bytes)]
            if not byte_keys:
                continue
            key = draw(st.sampled_from(byte_keys))
            data = bytearray(fields[key])
            if op == "truncate":
                del data[draw(st.integers(0, len(data))) :]
            elif op == "extend":
                data += draw(st.binary(min_size=1, max_size=9))
            elif data:
                pos = draw(st.integers(0, len(data) - 1))
                data[pos] ^= draw(st.integers(1, 255))
            fields[key] = bytes(data)
        elif op == "codec":
            fields["codec"] = draw(
                st.one_of(st.sampled_from([s.split(":")[0] for s in SPECS]), junk_values)
            )
        elif op == "size":
            size = draw(st.integers(0, 80))
        else:
            int_keys = [k for k in keys if isinstance(fields[k], int)]
            if int_keys:
                key = draw(st.sampled_from(int_keys))
                fields[key] = fields[key] + draw(st.sampled_from([-1, 1, 2**32, -(2**40)]))
    return fields, size


@settings(
    max_examples=800,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(mutated_fields())
def test_mangled_fields_raise_only_bad_tensor_error(case: tuple[dict[Any, Any], int]) -> None:
    fields, size = case
    try:
        out = decode_vector(fields, size)
    except (BadTensorError, NonFiniteTensorError):
        return
    assert out.dtype == np.float32
    assert out.shape == (size,)
    assert np.isfinite(out).all()


def test_huge_claims_are_refused_before_allocating() -> None:
    # k, chunk and seed far beyond the expected size fail on the number alone.
    cases = [
        {"codec": "topk", "k": 2**62, "idx": b"", "values.data": b""},
        {"codec": "randk", "k": 2**62, "seed": 0, "values.data": b""},
        {"codec": "int8", "chunk": 2**62, "absmax": b"", "q": b""},
        {
            "codec": "topk+int8",
            "k": 1,
            "idx": b"\x00",
            "values.chunk": 1,
            "values.absmax": b"",
            "values.q": b"\x00" * 2**20,
        },
    ]
    for fields in cases:
        try:
            decode_vector(fields, 10)
        except (BadTensorError, NonFiniteTensorError):
            continue
        raise AssertionError(f"accepted {fields}")
