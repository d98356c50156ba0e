"""Error feedback at the edge: nothing the codec drops is lost, across rounds and restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hierfl.compression import ErrorFeedback, PreEncoded, encode_vector, make_codec
from hierfl.config import EdgeSettings
from hierfl.edge import EdgeClient, SupervisedTask
from hierfl.edge.feedback import UplinkFeedback
from hierfl.errors import CompressionError, ConfigError, TransportError
from hierfl.metrics import ServiceMetrics
from hierfl.model.torch_adapter import model_layout, model_to_vector
from hierfl.wire import ModelFrame, UpdateFrame, decode_frame, encode_frame

CODEC = "topk+int8:fraction=0.05"
EPS = np.finfo(np.float32).eps


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def tiny_task() -> SupervisedTask:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)).astype(np.int64)
    return SupervisedTask(tiny_model, torch.from_numpy(x), torch.from_numpy(y), lr=0.1,
                          batch_size=8, seed=3)


def edge(**overrides: Any) -> EdgeClient:
    torch.set_num_threads(1)
    settings = EdgeSettings.load(federation="fed", fog_id="fog0", edge_id="e0",
                                 **{"codec": CODEC, "security": {"signing": "off"}, **overrides})
    return EdgeClient(settings, tiny_task())


def model_frame(weights: np.ndarray, version: int) -> ModelFrame:
    return ModelFrame("fed", version, weights, scope="fog", fog_id="fog0",
                      layout=model_layout(tiny_model()))


def run_rounds(client: EdgeClient, weights: np.ndarray, versions: range
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, encode and 'aggregate' (apply what the wire carried) round after round.

    Returns the final weights, the sum of the true deltas and the sum of the decoded ones.
    """
    true_sum = np.zeros(weights.size, dtype=np.float64)
    wire_sum = np.zeros(weights.size, dtype=np.float64)
    for version in versions:
        update = client._train_on(model_frame(weights, version))
        data, sent = client._encode(update)
        received = decode_frame(data)
        assert isinstance(received, UpdateFrame)
        assert sent is not None
        # the frame carries exactly the fields the residual was computed against
        np.testing.assert_array_equal(received.delta, sent)
        true_sum += update.delta
        wire_sum += received.delta
        weights = weights + received.delta
    return weights, true_sum, wire_sum


def assert_invariant(sent: np.ndarray, residual: np.ndarray, true: np.ndarray, steps: int
                     ) -> None:
    drift = np.abs(sent + residual - true).max()
    assert drift <= steps * 8 * EPS * max(np.abs(true).max(), 1.0)


def test_edge_sent_plus_residual_equals_sum_of_true_updates() -> None:
    # Prepare
    client = edge()
    weights = model_to_vector(client.model)
    steps = 12
    # Execute
    _, true_sum, wire_sum = run_rounds(client, weights, range(steps))
    # Assert: sum(sent) + e == sum(true deltas); and top-k 5% really dropped mass each round
    assert client.feedback is not None
    residual = client.feedback.residual
    assert residual is not None
    assert_invariant(wire_sum, residual, true_sum, steps)
    assert np.linalg.norm(residual) > 0
    assert client.metrics.snapshot()["gauges"]["error_feedback_residual_norm"] > 0


def test_edge_without_feedback_loses_what_the_codec_drops() -> None:
    # The same run with error feedback off: the wire sum misses mass for good.
    client = edge(error_feedback=False)
    assert client.feedback is None
    weights = model_to_vector(client.model)
    true_sum = np.zeros(weights.size)
    wire_sum = np.zeros(weights.size)
    for version in range(4):
        update = client._train_on(model_frame(weights, version))
        data, sent = client._encode(update)
        assert sent is None
        received = decode_frame(data)
        true_sum += update.delta
        wire_sum += received.delta
        weights = weights + received.delta
    assert np.abs(wire_sum - true_sum).max() > 1e-3


@pytest.mark.parametrize("codec", ["raw", "int8"])
def test_feedback_only_for_lossy_codecs(codec: str) -> None:
    client = edge(codec=codec)
    assert (client.feedback is None) == (codec == "raw")


def test_residual_survives_a_restart(tmp_path: Path) -> None:
    # Prepare: one device runs 3 rounds with its residual on disk, then "restarts".
    path = tmp_path / "state" / "ef.npy"
    first = edge(error_feedback_path=path)
    weights, true_sum, wire_sum = run_rounds(first, model_to_vector(first.model), range(3))
    assert first.feedback is not None
    assert first.feedback.residual is not None
    kept = np.array(first.feedback.residual)
    assert np.linalg.norm(kept) > 0
    assert path.exists()
    # Execute: a new client (new process) on the same file continues with the next version
    second = edge(error_feedback_path=path)
    weights, true_more, wire_more = run_rounds(second, weights, range(3, 5))
    # Assert: the invariant holds over both lives of the device
    assert second.feedback is not None
    assert second.feedback.residual is not None
    assert_invariant(wire_sum + wire_more, second.feedback.residual, true_sum + true_more, 5)
    assert (tmp_path / "state" / "ef.npy.version").read_text().strip() == "4"
    # A device back after a long absence (version 4 -> 40) starts from a zero residual.
    third = edge(error_feedback_path=path)
    update = third._train_on(model_frame(weights, 40))
    _, sent = third._encode(update)
    assert sent is not None
    assert third.feedback is not None
    assert third.feedback.residual is not None
    np.testing.assert_allclose(sent + third.feedback.residual, update.delta, atol=1e-6)
    assert third.metrics.snapshot()["counters"]["error_feedback_resets"] == 1


def test_residual_is_dropped_after_a_long_gap_or_a_rollback() -> None:
    # Prepare
    metrics = ServiceMetrics("edge", "e0")
    fb = UplinkFeedback(make_codec("topk:fraction=0.1"), max_gap=2, metrics=metrics)
    rng = np.random.default_rng(0)
    delta = rng.normal(size=100).astype(np.float32)
    fb.compress(delta, version=10)
    # Execute / Assert: a gap within max_gap keeps it: sent + e' == delta + e
    before = np.array(fb.residual)
    _, sent = fb.compress(delta, version=12)
    np.testing.assert_allclose(sent + fb.residual, delta + before, atol=1e-5)
    # a jump beyond max_gap drops it: sent + e' == delta
    _, sent = fb.compress(delta, version=15)
    np.testing.assert_allclose(sent + fb.residual, delta, atol=1e-6)
    # so does a version going backwards
    _, sent = fb.compress(delta, version=3)
    np.testing.assert_allclose(sent + fb.residual, delta, atol=1e-6)
    assert metrics.snapshot()["counters"]["error_feedback_resets"] == 2


def test_model_size_change_starts_a_fresh_residual(tmp_path: Path) -> None:
    path = tmp_path / "ef.npy"
    fb = UplinkFeedback("topk:fraction=0.1", path=path)
    fb.compress(np.ones(50, dtype=np.float32), version=1)
    delta = np.arange(80, dtype=np.float32)
    _, sent = fb.compress(delta, version=2)
    np.testing.assert_allclose(sent + fb.residual, delta)
    assert ErrorFeedback(80, path=path).residual.size == 80  # the file follows the new size


def test_unusable_residual_file_is_discarded(tmp_path: Path) -> None:
    path = tmp_path / "ef.npy"
    path.write_bytes(b"not a numpy file")
    metrics = ServiceMetrics("edge", "e0")
    fb = UplinkFeedback("topk:fraction=0.1", path=path, metrics=metrics)
    delta = np.linspace(-1, 1, 40, dtype=np.float32)
    _, sent = fb.compress(delta, version=0)
    np.testing.assert_allclose(sent + fb.residual, delta)
    assert metrics.snapshot()["counters"]["error_feedback_resets"] == 1
    np.testing.assert_array_equal(ErrorFeedback(40, path=path).residual, fb.residual)


class _BrokenMqtt:
    async def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        raise TransportError("broker gone")


async def test_undelivered_update_goes_back_into_the_residual() -> None:
    # Prepare: a fixed update, and a broker that fails the publish
    client = edge()
    weights = model_to_vector(client.model)
    frame = model_frame(weights, 1)
    delta = np.random.default_rng(1).normal(size=weights.size).astype(np.float32)
    client._train_on = lambda f: UpdateFrame("fed", "fog0", "e0", f.version, f.seq, 64,  # type: ignore[method-assign]
                                             delta)
    client._latest = frame
    client._new_model.set()
    # Execute
    with pytest.raises(TransportError):
        await client._train_loop(_BrokenMqtt())  # type: ignore[arg-type]
    # Assert: nothing was counted as sent and the whole delta waits in the residual
    assert client.updates_sent == 0
    assert client.feedback is not None
    assert client.feedback.residual is not None
    np.testing.assert_allclose(client.feedback.residual, delta, atol=1e-6)


def test_pre_encoded_hands_out_exactly_its_fields() -> None:
    vec = np.linspace(-1, 1, 1000, dtype=np.float32)
    fields = encode_vector(vec, "int8", rng=np.random.default_rng(0))
    sent = make_codec("int8").decode(fields, vec.size)
    frame = UpdateFrame("fed", "fog0", "e0", 0, 0, 1, sent)
    # stochastic rounding: a fresh encoding of `sent` would not give the same bytes
    again = decode_frame(encode_frame(frame, codec=PreEncoded(fields, sent)))
    np.testing.assert_array_equal(again.delta, sent)  # type: ignore[union-attr]
    with pytest.raises(CompressionError, match="another vector"):
        encode_frame(frame, codec=PreEncoded(fields, sent + 1))
    with pytest.raises(CompressionError, match="name their codec"):
        PreEncoded({"data": b""}, sent)


def test_settings_refuse_scaled_randk_with_feedback() -> None:
    with pytest.raises(ConfigError, match="scaled=false"):
        EdgeSettings.load(fog_id="f", edge_id="e", codec="randk:fraction=0.1")
    ok = EdgeSettings.load(fog_id="f", edge_id="e", codec="randk:fraction=0.1,scaled=false")
    assert ok.error_feedback
    off = EdgeSettings.load(fog_id="f", edge_id="e", codec="randk", error_feedback=False)
    assert not off.error_feedback
    with pytest.raises(ConfigError, match=r"codec: .*unknown codec"):
        EdgeSettings.load(fog_id="f", edge_id="e", codec="zip")


def test_unwritable_residual_file_skips_the_update_not_the_edge(tmp_path: Path) -> None:
    # The residual's directory is a file: saving fails with OSError, surfaced as a typed error
    (tmp_path / "blocker").write_text("")
    fb = UplinkFeedback("topk:fraction=0.1", path=tmp_path / "blocker" / "ef.npy")
    with pytest.raises(CompressionError, match="cannot save"):
        fb.compress(np.ones(20, dtype=np.float32), version=0)
