"""The edge client's SCAFFOLD part: a model carrying c gets an update carrying Delta c_i,
unless the edge adds privacy noise (the control change would reveal the update)."""

from __future__ import annotations

import numpy as np
import torch

from hierfl.config import EdgeSettings
from hierfl.edge import EdgeClient, SupervisedTask
from hierfl.model.torch_adapter import model_to_vector
from hierfl.wire.frames import ModelFrame


def _task() -> SupervisedTask:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(16, 3)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 2, size=16))

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2)

    return SupervisedTask(model, x, y, batch_size=8, lr=0.1)


def _model(control: np.ndarray | None) -> ModelFrame:
    w = model_to_vector(_task().build_model())
    return ModelFrame("fed", 0, w, scope="fog", fog_id="north", seq=1, control=control)


def test_an_update_carries_the_control_change_when_the_model_carries_c() -> None:
    client = EdgeClient(EdgeSettings.load(federation="fed", fog_id="north", edge_id="n0",
                                          security={"signing": "off"}), _task())
    c = np.full(8, 0.05, np.float32)
    u = client._train_on(_model(c))
    assert u.control is not None
    # c_i = 0: Delta c_i = -c + (x - y) / (K lr), K = 2 steps of batch 8
    np.testing.assert_allclose(u.control, -c - u.delta / (2 * 0.1), rtol=1e-4, atol=1e-6)
    assert client._train_on(_model(None)).control is None  # no c: plain training


def test_a_private_edge_never_sends_a_control_change() -> None:
    settings = EdgeSettings.load(
        federation="fed", fog_id="north", edge_id="n0", security={"signing": "off"},
        privacy={"mode": "trusted_fog", "clip_norm": 1.0})
    client = EdgeClient(settings, _task())
    u = client._train_on(_model(np.full(8, 0.05, np.float32)))
    assert u.control is None
