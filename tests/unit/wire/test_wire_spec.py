"""docs/wire-format.md against the code: its worked example and test vectors must stay true."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest

from hierfl.compression import decode_vector, make_codec
from hierfl.compression.randk import randk_indices
from hierfl.wire import UpdateFrame, decode_frame, encode_frame, split_frame
from tests.unit.wire.wire_strategies import assert_frames_equal

DOC = Path(__file__).resolve().parents[3] / "docs" / "wire-format.md"
EXAMPLE = UpdateFrame(
    federation="demo", fog_id="fog-a", edge_id="edge-1", base_version=3, base_seq=7,
    num_samples=120, delta=np.array([0.5, -0.25, 1.0], np.float32),
    metrics={"loss": 0.125}, created_at=1700000000.0,
)


def _hex_dumps() -> list[bytes]:
    """The hexdump blocks of the doc, in order, as bytes."""
    dumps = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", DOC.read_text(), flags=re.S | re.M):
        rows = re.findall(r"^[0-9a-f]{8}  ((?:[0-9a-f]{2} ?)+)", block, flags=re.M)
        if rows:
            dumps.append(bytes.fromhex("".join(rows).replace(" ", "")))
    return dumps


def test_doc_has_both_dumps() -> None:
    compressed, plain = _hex_dumps()
    assert len(compressed) == 181
    assert len(plain) == 185


def test_plain_example_is_what_encode_frame_produces() -> None:
    # msgpack output is deterministic: the plain dump must match byte for byte
    _, plain = _hex_dumps()
    assert encode_frame(EXAMPLE, compress=False) == plain


def test_compressed_example_header_and_decoding() -> None:
    compressed, _ = _hex_dumps()
    ours = encode_frame(EXAMPLE)
    assert ours[:12] == compressed[:12] == bytes.fromhex("48464c57 01 01 0000 ad000000")
    assert compressed[12:16] == bytes.fromhex("28b52ffd")  # a zstd frame
    # zstd bytes may differ between library versions; what they decode to may not
    assert_frames_equal(EXAMPLE, decode_frame(compressed))


def test_chunk_example() -> None:
    records = split_frame(encode_frame(EXAMPLE), chunk_bytes=140)
    assert [len(r) for r in records] == [140, 121]
    magic, version, reserved, _, index, count, total, _ = struct.unpack_from(
        "<4sB3s16sIIII", records[0]
    )
    assert (magic, version, reserved, index, count, total) == (b"HFLC", 1, b"\0\0\0", 0, 2, 181)


def test_randk_test_vectors() -> None:
    assert [int(x) for x in np.random.PCG64(12345).random_raw(3)] == [
        4193609425186963869, 5843160025838961886, 14708796524633321433,
    ]
    assert randk_indices(12345, 5, 100).tolist() == [22, 31, 39, 67, 79]
    assert randk_indices(12345, 7, 10).tolist() == [0, 1, 4, 5, 6, 8, 9]


def test_topk_example() -> None:
    x = np.zeros(300, np.float32)
    x[[3, 4, 200]] = [1.5, -2.0, 0.25]
    fields = make_codec("topk:fraction=0.01").encode(x)
    assert fields["k"] == 3
    assert fields["idx"] == bytes.fromhex("0300c301")


def test_int8_example() -> None:
    fields = {"codec": "int8", "chunk": 2, "absmax": np.array([2.0, 0.5], "<f4").tobytes(),
              "q": np.array([127, -64, 10], "i1").tobytes()}
    out = decode_vector(fields, 3)
    np.testing.assert_allclose(out, [2.0, -1.0078740, 0.0393701], rtol=1e-6)


@pytest.mark.parametrize(
    "name",
    ["raw", "fp16", "int8", "topk", "topk+fp16", "topk+int8", "randk", "randk+fp16",
     "randk+int8"],
)
def test_every_listed_codec_name_exists(name: str) -> None:
    spec = name if "k" not in name.split("+")[0] else f"{name}:fraction=0.5"
    assert make_codec(spec).name == name
    assert f"`{name}`" in DOC.read_text()
