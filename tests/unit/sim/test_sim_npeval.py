"""The sim's numpy evaluation (hierfl/sim/npeval.py) reports what torch's does: the same
accuracy (the same float), the same per-sample hits, the loss to float32 precision, on the
built-in scenarios' models, trained and untrained; layouts that are not such an MLP are
refused (the sim then evaluates with torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hierfl.model.torch_adapter import model_layout, model_to_vector, vector_to_model
from hierfl.sim.datasets import digits_data, sensors_data
from hierfl.sim.npeval import Mlp, accuracy_and_loss, per_sample
from hierfl.sim.scenarios import digits_task, evaluate, scenario_model, sensors_task
from hierfl.wire.frames import LayoutEntry


def _models(name: str, wide: bool = False, steps: int = 6) -> list[np.ndarray]:
    """The initial model and the models after each of ``steps`` local trainings."""
    make = ((lambda i: digits_task(edge_id="e", fog_id="f", index=i, wide=wide))
            if name == "digits" else
            (lambda i: sensors_task(edge_id="e", fog_id="f", index=i)))
    model = scenario_model(name, wide=wide)
    out = [model_to_vector(model)]
    for i in range(steps):
        make(i).train(model, 1)
        out.append(model_to_vector(model))
    return out


@pytest.mark.parametrize(("name", "wide"), [("digits", False), ("digits", True),
                                            ("sensors", False)])
def test_numpy_evaluation_reports_torchs_figures(name, wide):
    data = digits_data(20, 0) if name == "digits" else sensors_data(20, 4, 0)
    model = scenario_model(name, wide=wide)
    mlp = Mlp.from_layout(model_layout(model))
    assert mlp is not None
    x, y = data.x_test, data.y_test
    for vec in _models(name, wide, steps=3 if wide else 8):
        vector_to_model(model, vec)
        acc, loss = evaluate(model, x, y)
        logits = mlp.logits(vec, x)
        with torch.no_grad():
            out = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(logits, out, rtol=1e-5, atol=1e-5)
        n_acc, n_loss = accuracy_and_loss(logits, y)
        assert n_acc == acc  # the same float, not merely close
        assert n_loss == pytest.approx(loss, rel=1e-5)
        right, losses = per_sample(logits, y)
        assert np.array_equal(right, (out.argmax(1) == y).astype(np.float64))
        np.testing.assert_allclose(losses, torch.nn.functional.cross_entropy(
            torch.from_numpy(out), torch.from_numpy(y), reduction="none").numpy(),
            rtol=1e-5, atol=1e-6)


def test_argmax_ties_keep_the_first_maximum_as_torch_does():
    logits = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, -1.0, 0.0]], np.float32)
    y = np.array([2, 0, 0])
    right, _ = per_sample(logits, y)
    expect = (torch.from_numpy(logits).argmax(1) == torch.from_numpy(y)).numpy()
    assert right.tolist() == expect.astype(float).tolist() == [0.0, 1.0, 1.0]


def _layout(*entries: tuple[str, tuple[int, ...]]) -> list[LayoutEntry]:
    return [LayoutEntry(n, s) for n, s in entries]


@pytest.mark.parametrize("layout", [
    [],
    _layout(("0.weight", (4, 3))),  # no bias
    _layout(("0.weight", (4, 3)), ("0.bias", (5,))),  # bias of another size
    _layout(("0.weight", (4, 3)), ("0.bias", (4,)), ("2.weight", (2, 5)), ("2.bias", (2,))),
    _layout(("0.weight", (4, 3)), ("0.bias", (4,)), ("1.weight", (2, 4)), ("1.bias", (2,))),
    _layout(("conv.weight", (4, 3, 3, 3)), ("conv.bias", (4,))),
    _layout(("0.bias", (4,)), ("0.weight", (4, 3))),
    _layout(("0.weight", (4, 3)), ("1.bias", (4,))),
])
def test_layouts_that_are_not_a_linear_relu_chain_are_refused(layout):
    assert Mlp.from_layout(layout) is None


def test_a_weights_file_gives_its_mlp(tmp_path):
    from hierfl.sim.scenarios import write_initial_model

    path = tmp_path / "initial.npz"
    write_initial_model(path, "digits", wide=False)
    mlp = Mlp.from_weights_file(path)
    assert mlp is not None
    assert [(e.name, e.shape) for e in mlp.layout] == [
        ("0.weight", (64, 64)), ("0.bias", (64,)), ("2.weight", (10, 64)), ("2.bias", (10,))]
