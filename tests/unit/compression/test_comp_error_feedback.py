"""Error feedback: nothing is lost over many steps, and the residual persists atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hierfl.compression import ErrorFeedback, RawCodec, make_codec
from hierfl.errors import CompressionError

SIZE = 2000


@pytest.mark.parametrize(
    "spec", ["topk:fraction=0.01", "topk+int8:fraction=0.05", "int8", "randk:scaled=false",
            "randk+int8:fraction=0.05,scaled=false"]
)
def test_sent_plus_residual_equals_sum_of_deltas(spec: str) -> None:
    # Prepare
    rng = np.random.default_rng(0)
    codec = make_codec(spec)
    ef = ErrorFeedback(SIZE)
    true_sum = np.zeros(SIZE)
    sent_sum = np.zeros(SIZE)
    steps = 200
    # Execute
    for _ in range(steps):
        delta = rng.normal(scale=0.1, size=SIZE).astype(np.float32)
        fields, sent = ef.compress(delta, codec, rng)
        assert fields["codec"] == codec.name
        true_sum += delta
        sent_sum += sent
    # Assert: the invariant, to float32 rounding accumulated over the steps.
    drift = np.abs(sent_sum + ef.residual - true_sum).max()
    assert drift <= steps * 4 * np.finfo(np.float32).eps * np.abs(true_sum).max()
    # The residual stays bounded; top-k 1% of 2000 keeps 20 per step, so it must not
    # grow like the sum of deltas would.
    assert np.abs(ef.residual).max() < np.abs(true_sum).max() + 5


def test_residual_is_what_the_codec_dropped() -> None:
    ef = ErrorFeedback(5)
    delta = np.array([1.0, -4.0, 2.0, 0.5, 3.0], dtype=np.float32)
    _, sent = ef.compress(delta, make_codec("topk:fraction=0.2"))
    np.testing.assert_array_equal(sent, [0, -4, 0, 0, 0])
    np.testing.assert_array_equal(ef.residual, [1, 0, 2, 0.5, 3])
    _, sent = ef.compress(np.zeros(5, np.float32), make_codec("topk:fraction=0.2"))
    np.testing.assert_array_equal(sent, [0, 0, 0, 0, 3])


def test_lossless_codec_leaves_no_residual() -> None:
    ef = ErrorFeedback(100)
    delta = np.random.default_rng(0).normal(size=100).astype(np.float32)
    _, sent = ef.compress(delta, RawCodec())
    np.testing.assert_array_equal(sent, delta)
    assert not ef.residual.any()


def test_residual_view_is_read_only() -> None:
    ef = ErrorFeedback(3)
    with pytest.raises(ValueError, match="read-only"):
        ef.residual[0] = 1.0


def test_bad_delta_leaves_state_unchanged() -> None:
    ef = ErrorFeedback(4)
    ef.compress(np.array([1, 2, 3, 4], np.float32), make_codec("topk:fraction=0.25"))
    before = ef.residual.copy()
    for bad in (np.zeros(5, np.float32), np.array([np.nan] * 4, np.float32)):
        with pytest.raises(CompressionError):
            ef.compress(bad, make_codec("topk"))
    np.testing.assert_array_equal(ef.residual, before)


def test_persistence_round_trip(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "state" / "ef.npy"
    rng = np.random.default_rng(3)
    codec = make_codec("topk+int8:fraction=0.1")
    ef = ErrorFeedback(SIZE, path=path)
    # Execute: compress saves after each step; a new instance resumes from the file.
    for _ in range(3):
        ef.compress(rng.normal(size=SIZE).astype(np.float32), codec, rng)
    resumed = ErrorFeedback(SIZE, path=path)
    # Assert
    np.testing.assert_array_equal(resumed.residual, ef.residual)
    assert resumed.residual.any()
    assert sorted(p.name for p in path.parent.iterdir()) == ["ef.npy"]  # no temp left behind


def test_save_and_load_explicitly(tmp_path: Path) -> None:
    ef = ErrorFeedback(10)
    ef.compress(np.arange(10, dtype=np.float32), make_codec("topk:fraction=0.1"))
    ef.save(tmp_path / "r.npy")
    other = ErrorFeedback(10)
    other.load(tmp_path / "r.npy")
    np.testing.assert_array_equal(other.residual, ef.residual)
    other.reset()
    assert not other.residual.any()


@pytest.mark.parametrize(
    "content",
    [
        np.zeros(9, np.float32),
        np.zeros(10, np.float64),
        np.zeros((2, 5), np.float32),
        np.zeros(10, ">f4"),
        np.array([np.nan] * 10, np.float32),
        np.array([None] * 10, dtype=object),
    ],
)
def test_load_rejects_wrong_residual(tmp_path: Path, content: np.ndarray) -> None:
    path = tmp_path / "ef.npy"
    np.save(path, content, allow_pickle=True)  # object arrays need pickle to be written at all
    with pytest.raises(CompressionError):
        ErrorFeedback(10, path=path)


@pytest.mark.parametrize("raw", [b"", b"not numpy", b"\x93NUMPY\x01\x00"])
def test_load_rejects_garbage_files(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "ef.npy"
    path.write_bytes(raw)
    with pytest.raises(CompressionError):
        ErrorFeedback(10, path=path)


def test_load_rejects_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "ef.npy"
    np.save(path, np.ones(10, np.float32))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CompressionError):
        ErrorFeedback(10, path=path)


def test_failed_save_keeps_state_and_leaves_no_temp(tmp_path: Path) -> None:
    blocker = tmp_path / "ef.npy"
    blocker.mkdir()  # os.replace onto a directory fails
    ef = ErrorFeedback(4, path=tmp_path / "other.npy")
    ef._path = blocker
    with pytest.raises(OSError):  # noqa: PT011
        ef.compress(np.ones(4, np.float32), make_codec("topk:fraction=0.25"))
    assert not ef.residual.any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ef.npy"]
