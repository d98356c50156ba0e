"""SCAFFOLD's maths at each tier (hierfl.optim.scaffold), the corrected SGD step of the edge
trainer, FedProx's proximal step, and the control vectors on the wire (old frames unchanged)."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
import zstandard

from hierfl.edge.trainer import SupervisedTask
from hierfl.errors import FrameFieldError, StateError
from hierfl.optim.scaffold import EdgeControl, cloud_control, edge_control, fog_control
from hierfl.wire.codec import HEADER_SIZE, decode_frame, encode_frame
from hierfl.wire.frames import AggregateFrame, ModelFrame, UpdateFrame

F = np.float32


def test_edge_control_option_two_by_hand() -> None:
    c_i = np.array([0.1, -0.2], F)
    c = np.array([0.3, 0.0], F)
    x = np.array([1.0, 2.0], F)
    y = np.array([0.8, 2.1], F)
    new, delta = edge_control(c_i, c, x, y, steps=4, lr=0.05)
    # c_i - c + (x - y) / (K lr) = [0.1 - 0.3 + 0.2/0.2, -0.2 - 0 - 0.1/0.2]
    np.testing.assert_allclose(new, [0.8, -0.7], rtol=1e-5)
    np.testing.assert_allclose(delta, new - c_i, rtol=1e-5)
    with pytest.raises(StateError):
        edge_control(c_i, c, x, y, steps=0, lr=0.05)


def test_fog_and_cloud_control_by_hand() -> None:
    d = fog_control([np.array([1.0, 0.0], F), np.array([3.0, 2.0], F)])
    np.testing.assert_allclose(d, [2.0, 1.0])  # plain mean: SCAFFOLD weighs edges equally
    c = cloud_control(np.array([0.5, 0.5], F), [d, np.array([-1.0, 4.0], F)], [2, 6])
    # c + (2 * [2, 1] + 6 * [-1, 4]) / 8
    np.testing.assert_allclose(c, [0.5 - 0.25, 0.5 + 3.25])
    with pytest.raises(StateError):
        cloud_control(c, [d], [1, 2])


def _task(**kw: float) -> SupervisedTask:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(8, 3)).astype(F))
    y = torch.from_numpy(rng.integers(0, 2, size=8))

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2)

    return SupervisedTask(model, x, y, batch_size=8, lr=0.1, **kw)  # one step per epoch


def _flat(m: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()]).numpy()


def test_trainer_step_is_corrected_by_c_minus_c_i() -> None:
    plain, corrected = _task(), _task()
    corr = np.linspace(-1, 1, 8).astype(F)  # Linear(3, 2): 6 weights + 2 biases
    corrected.scaffold_correction = corr
    m1, m2 = plain.build_model(), corrected.build_model()
    plain.train(m1, 1)
    corrected.train(m2, 1)
    # one SGD step: y = x - lr (g + corr)
    np.testing.assert_allclose(_flat(m2) - _flat(m1), -0.1 * corr, atol=1e-6)
    assert corrected.last_steps == 1
    bad = _task()
    bad.scaffold_correction = np.zeros(5, F)
    with pytest.raises(ValueError, match="SCAFFOLD correction of 5 values"):
        bad.train(bad.build_model(), 1)


def test_trainer_fedprox_pulls_towards_the_received_model() -> None:
    plain, prox = _task(), _task(prox_mu=0.5)
    m1, m2 = plain.build_model(), prox.build_model()
    x0 = _flat(m1)
    plain.train(m1, 2)
    prox.train(m2, 2)
    # the first step is the same (w = w_global: no pull), the second is pulled back
    assert np.linalg.norm(_flat(m2) - x0) < np.linalg.norm(_flat(m1) - x0)


def test_edge_control_around_a_training() -> None:
    task = _task()
    ctl = EdgeControl()
    assert not ctl.before(task, None)  # a model without c: no SCAFFOLD
    c = np.full(8, 0.2, F)
    assert ctl.before(task, c)
    np.testing.assert_array_equal(task.scaffold_correction, c)  # c_i starts at zero
    m = task.build_model()
    x = _flat(m)
    task.train(m, 1)
    y = _flat(m)
    delta = ctl.after(task, c, x, y)
    assert task.scaffold_correction is None
    np.testing.assert_allclose(delta, -c + (x - y) / 0.1, rtol=1e-4, atol=1e-5)
    assert ctl.c_i is not None
    np.testing.assert_allclose(ctl.c_i, delta)


def _body(data: bytes) -> dict:
    assert data[5] & 0x01  # zstd
    return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(
        data[HEADER_SIZE:]), raw=False)


def test_control_round_trips_and_frames_without_it_are_unchanged() -> None:
    delta = np.arange(6, dtype=F)
    ctl = np.linspace(0, 1, 6).astype(F)
    u = UpdateFrame("fed", "north", "n0", 3, 7, 12, delta, created_at=1.0)
    plain = encode_frame(u)
    assert "control" not in _body(plain)
    assert decode_frame(plain).control is None  # type: ignore[union-attr]
    with_ctl = encode_frame(UpdateFrame("fed", "north", "n0", 3, 7, 12, delta,
                                        created_at=1.0, control=ctl))
    got = decode_frame(with_ctl)
    assert isinstance(got, UpdateFrame)
    np.testing.assert_array_equal(got.control, ctl)
    np.testing.assert_array_equal(got.delta, delta)
    # the cost: one more raw float32 vector
    assert len(with_ctl) > len(plain)
    agg = AggregateFrame("fed", "north", 3, 20, ("n0",), 1, delta, control=ctl, created_at=1.0)
    a2 = decode_frame(encode_frame(agg))
    assert isinstance(a2, AggregateFrame)
    np.testing.assert_array_equal(a2.control, ctl)
    model = ModelFrame("fed", 4, delta, control=ctl, created_at=1.0)
    m2 = decode_frame(encode_frame(model))
    assert isinstance(m2, ModelFrame)
    np.testing.assert_array_equal(m2.control, ctl)
    assert "control" not in _body(encode_frame(ModelFrame("fed", 4, delta, created_at=1.0)))
    with pytest.raises(FrameFieldError):
        UpdateFrame("fed", "north", "n0", 3, 7, 12, delta, control=np.zeros(5, F))


def test_cloud_round_updates_c_by_the_edge_weighted_mean_and_applies_its_optimiser() -> None:
    from hierfl.aggregation import FedAvg
    from hierfl.cloud.round import CloudRound, CloudRoundConfig, NewGlobal
    from hierfl.optim.server import make_server_optimizer
    from hierfl.wire.frames import LayoutEntry

    w0 = np.zeros(2, F)
    r = CloudRound(CloudRoundConfig(federation="fed", fogs=frozenset({"a", "b"})), FedAvg(),
                   version=0, weights=w0, layout=(LayoutEntry("w", (2,)),),
                   server_opt=make_server_optimizer("fedavgm", 2, server_lr=2.0),
                   control=np.array([1.0, 1.0], F))
    r.on_aggregate(AggregateFrame("fed", "a", 0, 10, ("e1",), 1, np.array([1.0, 0.0], F),
                                  control=np.array([4.0, 0.0], F)), 0.0)
    out = r.on_aggregate(AggregateFrame("fed", "b", 0, 30, ("e2", "e3", "e4"), 1,
                                        np.array([0.0, 1.0], F),
                                        control=np.array([0.0, 8.0], F)), 0.0)
    new = next(a for a in out if isinstance(a, NewGlobal))
    # FedAvg by samples [0.25, 0.75], then FedAvgM's first step: server_lr * delta
    np.testing.assert_allclose(new.weights, [0.5, 1.5])
    # c + (1 * [4, 0] + 3 * [0, 8]) / 4: weighted by contributing edges, not samples
    np.testing.assert_allclose(new.control, [2.0, 7.0])
    np.testing.assert_allclose(r.control, [2.0, 7.0])


def test_control_checkpoint_round_trip_and_tampering(tmp_path: Path) -> None:
    from hierfl.errors import StoreError
    from hierfl.optim.checkpoint import restore_control, save_control

    c = np.linspace(-1, 1, 5).astype(F)
    entry = save_control(tmp_path, 7, c)
    np.testing.assert_array_equal(restore_control(tmp_path, {"scaffold": entry}, 5), c)
    assert restore_control(tmp_path, {}, 5) is None  # a record without SCAFFOLD: start at 0
    with pytest.raises(StoreError):
        restore_control(tmp_path, {"scaffold": entry}, 6)  # another model size
    (tmp_path / entry["file"]).write_bytes(b"x")
    with pytest.raises(StoreError):
        restore_control(tmp_path, {"scaffold": entry}, 5)
