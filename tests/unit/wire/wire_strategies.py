"""Shared hypothesis strategies and helpers for the wire tests (not a test module).

``craft`` builds frame bytes from a hand-made msgpack body, so tests can put on the wire
what :func:`hierfl.wire.encode_frame` would never produce.
"""

from __future__ import annotations

import dataclasses
import string
import struct
from typing import Any

import msgpack
import numpy as np
import zstandard
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hierfl.wire import (
    AggregateFrame,
    Frame,
    LayoutEntry,
    ModelDeltaFrame,
    ModelFrame,
    UpdateFrame,
)

HEADER = struct.Struct("<4sBBHI")
ID_ALPHABET = string.ascii_letters + string.digits + "_-"

# --- crafting frames by hand ------------------------------------------------------------------


def header(body_len: int, *, flags: int = 1, magic: bytes = b"HFLW", version: int = 1,
           reserved: int = 0) -> bytes:
    """The 12-byte frame header."""
    return HEADER.pack(magic, version, flags, reserved, body_len)


def craft(body: Any, *, compress: bool = True, raw_body: bytes | None = None,
          version: int | None = None) -> bytes:
    """Frame bytes whose body is ``msgpack(body)`` (or ``raw_body`` verbatim), under format
    ``version`` (default: 2 for a ``model_delta`` body, else 1)."""
    packed = raw_body if raw_body is not None else msgpack.packb(body, use_bin_type=True)
    if version is None:
        version = 2 if isinstance(body, dict) and body.get("kind") == "model_delta" else 1
    if compress:
        return header(len(packed), flags=1, version=version) + zstandard.ZstdCompressor(
        ).compress(packed)
    return header(len(packed), flags=0, version=version) + packed


def raw_vector(values: Any) -> dict[str, Any]:
    """A ``raw`` vector map for ``values``."""
    arr = np.asarray(values, dtype="<f4")
    return {"codec": "raw", "size": int(arr.size), "data": arr.tobytes()}


def update_map(**overrides: Any) -> dict[str, Any]:
    """A valid update-frame body map, with ``overrides`` applied."""
    m = {
        "kind": "update",
        "federation": "fed",
        "created_at": 1.5,
        "metrics": {"loss": 0.25},
        "fog": "fog-a",
        "edge": "edge_1",
        "base_version": 3,
        "base_seq": 1,
        "num_samples": 10,
        "delta": raw_vector([1.0, -2.0, 0.5]),
    }
    return m | overrides


def aggregate_map(**overrides: Any) -> dict[str, Any]:
    """A valid aggregate-frame body map, with ``overrides`` applied."""
    m = {
        "kind": "aggregate",
        "federation": "fed",
        "created_at": 1.5,
        "metrics": {},
        "fog": "fog-a",
        "base_version": 3,
        "num_samples": 100,
        "contributors": ["e1", "e2"],
        "fog_rounds": 2,
        "delta": raw_vector([0.0, 1.0]),
    }
    return m | overrides


def model_map(**overrides: Any) -> dict[str, Any]:
    """A valid model-frame body map, with ``overrides`` applied."""
    m = {
        "kind": "model",
        "federation": "fed",
        "created_at": 1.5,
        "metrics": {"acc": 0.9},
        "version": 4,
        "parent": 3,
        "scope": "global",
        "fog": None,
        "seq": 0,
        "fog_round": 0,
        "layout": [["w", [2, 2]], ["b", [2]]],
        "weights": raw_vector(np.arange(6)),
    }
    return m | overrides


def model_delta_map(**overrides: Any) -> dict[str, Any]:
    """A valid model-delta body map (format version 2), with ``overrides`` applied."""
    m = {
        "kind": "model_delta",
        "federation": "fed",
        "created_at": 1.5,
        "metrics": {},
        "fog": "fog-a",
        "version": 4,
        "seq": 9,
        "fog_round": 1,
        "base_version": 4,
        "base_seq": 8,
        "digest": bytes(range(16)),
        "delta": raw_vector([0.5, 0.0, -1.0]),
    }
    return m | overrides


MAPS = {"update": update_map, "aggregate": aggregate_map, "model": model_map,
        "model_delta": model_delta_map}

# --- comparing frames -------------------------------------------------------------------------


def assert_frames_equal(a: Frame, b: Frame) -> None:
    """Field-by-field equality; vectors compared bit for bit (so -0.0 != 0.0)."""
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray)
            assert y.dtype == np.float32
            assert x.shape == y.shape
            assert x.view(np.uint32).tobytes() == y.view(np.uint32).tobytes(), f.name
        else:
            assert x == y, f.name
            assert type(x) is type(y), f.name


# --- strategies -------------------------------------------------------------------------------

ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=64)
versions = st.integers(0, 2**63 - 1)
sample_counts = st.integers(1, 2**63 - 1)
# 0.0 (and -0.0) mean "now" to the encoder, which substitutes time.time(): not an identity.
timestamps = st.floats(allow_nan=False, allow_infinity=False).filter(lambda t: t != 0)
metric_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**64 - 1),
)
metric_names = st.text(
    alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40
)
metrics = st.dictionaries(metric_names, metric_values, max_size=8)
finite_f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


def vectors(max_size: int = 300) -> st.SearchStrategy[np.ndarray]:
    """1-D float32 vectors of finite values, including the empty one."""
    return hnp.arrays(np.float32, st.integers(0, max_size), elements=finite_f32)


shapes = st.lists(st.integers(0, 5), max_size=3).map(tuple)
layouts = st.lists(st.builds(LayoutEntry, metric_names, shapes), max_size=6).map(tuple)


@st.composite
def update_frames(draw: st.DrawFn) -> UpdateFrame:
    """Valid update frames."""
    return UpdateFrame(
        federation=draw(ids),
        fog_id=draw(ids),
        edge_id=draw(ids),
        base_version=draw(versions),
        base_seq=draw(versions),
        num_samples=draw(sample_counts),
        delta=draw(vectors()),
        metrics=draw(metrics),
        created_at=draw(timestamps),
    )


@st.composite
def aggregate_frames(draw: st.DrawFn) -> AggregateFrame:
    """Valid aggregate frames."""
    return AggregateFrame(
        federation=draw(ids),
        fog_id=draw(ids),
        base_version=draw(versions),
        num_samples=draw(sample_counts),
        contributors=tuple(draw(st.lists(ids, min_size=1, max_size=12, unique=True))),
        fog_rounds=draw(st.integers(1, 10_000)),
        delta=draw(vectors()),
        metrics=draw(metrics),
        created_at=draw(timestamps),
    )


@st.composite
def model_frames(draw: st.DrawFn) -> ModelFrame:
    """Valid model frames, global or fog-scoped, with a layout matching the weights or none."""
    layout = draw(layouts)
    if layout:
        size = sum(e.size for e in layout)
        weights = draw(hnp.arrays(np.float32, size, elements=finite_f32))
    else:
        weights = draw(vectors())
    scope = draw(st.sampled_from(ModelFrame.SCOPES))
    return ModelFrame(
        federation=draw(ids),
        version=draw(versions),
        weights=weights,
        parent=draw(st.none() | versions),
        scope=scope,
        fog_id=draw(ids) if scope == "fog" else None,
        seq=draw(versions),
        fog_round=draw(st.integers(0, 10_000)),
        layout=layout,
        metrics=draw(metrics),
        created_at=draw(timestamps),
    )


@st.composite
def model_delta_frames(draw: st.DrawFn) -> ModelDeltaFrame:
    """Valid model-delta frames."""
    version = draw(versions)
    seq = draw(st.integers(1, 2**63 - 1))
    return ModelDeltaFrame(
        federation=draw(ids),
        fog_id=draw(ids),
        version=version,
        seq=seq,
        base_version=draw(st.integers(0, version)),
        base_seq=draw(st.integers(0, seq - 1)),
        delta=draw(vectors()),
        digest=draw(st.binary(min_size=16, max_size=16)),
        fog_round=draw(st.integers(0, 10_000)),
        metrics=draw(metrics),
        created_at=draw(timestamps),
    )


any_frames = st.one_of(update_frames(), aggregate_frames(), model_frames(),
                       model_delta_frames())
