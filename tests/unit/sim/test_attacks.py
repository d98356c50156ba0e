"""Byzantine edges: the attack math, and what a MaliciousEdge puts in its (valid) frames."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hierfl.config import EdgeSettings
from hierfl.edge import EdgeClient, SupervisedTask
from hierfl.errors import ConfigError
from hierfl.model.torch_adapter import model_layout, model_to_vector
from hierfl.sim.attacks import ATTACKS, MaliciousEdge, alie, alie_z, gaussian, scaled, sign_flip
from hierfl.wire import ModelFrame, UpdateFrame, decode_frame, encode_frame

ROOT = Path(__file__).resolve().parents[3]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def tiny_task() -> SupervisedTask:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)
    return SupervisedTask(tiny_model, torch.from_numpy(x), torch.from_numpy(y), lr=0.1,
                          batch_size=8, seed=3)


def settings(**task_options: object) -> EdgeSettings:
    return EdgeSettings.load(federation="fed", fog_id="fog0", edge_id="bad0",
                             task_options=task_options, security={"signing": "off"})


def model_frame() -> ModelFrame:
    m = tiny_model()
    return ModelFrame("fed", 3, model_to_vector(m), scope="fog", fog_id="fog0", seq=5,
                      layout=model_layout(m))


@pytest.fixture(scope="module")
def honest() -> UpdateFrame:
    torch.set_num_threads(1)
    return EdgeClient(settings(), tiny_task())._train_on(model_frame())


def attacked(attack: str, **kw: object) -> UpdateFrame:
    torch.set_num_threads(1)
    return MaliciousEdge(settings(), tiny_task(), attack, **kw)._train_on(model_frame())


# --- pure functions --------------------------------------------------------------------------


def test_sign_flip_and_scale_are_exact_multiples():
    d = np.array([1.0, -2.0, 0.5], np.float32)

    np.testing.assert_array_equal(sign_flip(d, 4.0), [-4.0, 8.0, -2.0])
    np.testing.assert_array_equal(scaled(d, 100.0), [100.0, -200.0, 50.0])
    assert sign_flip(d, 4.0).dtype == scaled(d, 3.0).dtype == np.float32
    np.testing.assert_array_equal(d, [1.0, -2.0, 0.5])  # input untouched


def test_gaussian_has_the_requested_spread():
    x = gaussian(200_000, 2.5, np.random.default_rng(0))

    assert x.dtype == np.float32
    assert abs(float(x.mean())) < 0.02
    assert float(x.std()) == pytest.approx(2.5, rel=0.01)


@pytest.mark.parametrize(
    ("n", "f", "expected"),
    [
        (20, 4, 0.38532),  # s = 11 - 4 = 7, Phi^-1(13/20)
        (5, 1, 0.25335),  # s = 3 - 1 = 2, Phi^-1(3/5)
        (50, 12, 0.58284),  # s = 26 - 12 = 14, Phi^-1(36/50)
        (4, 3, 3.0),  # s <= 0: capped
    ],
)
def test_alie_z_follows_the_paper_formula(n, f, expected):
    assert alie_z(n, f) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("n", "f"), [(5, 0), (3, 3)])
def test_alie_z_needs_some_but_not_all_byzantine(n, f):
    with pytest.raises(ValueError, match="1 <= f < n"):
        alie_z(n, f)


def test_alie_shifts_the_mean_by_z_sample_standard_deviations():
    samples = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]], np.float32)  # std 2 and 0

    np.testing.assert_allclose(alie(samples, 0.5), [3.0 - 0.5 * 2.0, 10.0])
    np.testing.assert_allclose(alie(samples[:1], 0.5), [1.0, 10.0])  # one row: no spread


# --- the malicious edge ------------------------------------------------------------------------


def test_training_is_deterministic_so_attacks_can_be_compared_to_the_honest_delta(honest):
    again = EdgeClient(settings(), tiny_task())._train_on(model_frame())

    np.testing.assert_array_equal(again.delta, honest.delta)
    assert np.linalg.norm(honest.delta) > 0


@pytest.mark.parametrize(
    ("attack", "kw", "factor"),
    [
        ("sign-flip", {}, -4.0),
        ("sign-flip", {"scale": 2.0}, -2.0),
        ("sign-flip-1", {}, -1.0),
        ("scale", {}, 100.0),
        ("weighting", {}, 10.0),
    ],
)
def test_multiplicative_attacks(honest, attack, kw, factor):
    bad = attacked(attack, **kw)

    np.testing.assert_allclose(bad.delta, factor * honest.delta, rtol=1e-6, atol=1e-7)
    claimed = 10**6 if attack == "weighting" else honest.num_samples
    assert bad.num_samples == claimed


def test_gaussian_attack_ignores_the_data(honest):
    bad = attacked("gaussian", sigma=3.0, seed=1)

    assert float(bad.delta.std()) == pytest.approx(3.0, rel=0.3)
    assert abs(np.corrcoef(bad.delta, honest.delta)[0, 1]) < 0.5
    assert bad.num_samples == honest.num_samples


def test_alie_stays_near_the_honest_delta_but_shifted_down(honest):
    bad = attacked("alie", n_byzantine=4, bootstrap=4)
    one = attacked("alie", n_byzantine=4, bootstrap=1)

    np.testing.assert_allclose(one.delta, honest.delta, rtol=1e-6, atol=1e-7)
    # a "little": closer to the honest delta than the honest delta is to zero ...
    assert np.linalg.norm(bad.delta - honest.delta) < np.linalg.norm(honest.delta)
    # ... and not the honest delta itself
    assert not np.allclose(bad.delta, honest.delta)


def test_alie_reads_n_from_the_task_options():
    edge = MaliciousEdge(settings(num_edges=20), tiny_task(), "alie", n_byzantine=4)
    fallback = MaliciousEdge(settings(), tiny_task(), "alie", n_byzantine=1)

    assert edge.z == pytest.approx(alie_z(20, 4))
    assert fallback.z == pytest.approx(alie_z(5, 1))
    assert MaliciousEdge(settings(), tiny_task(), "alie", z=1.5).z == 1.5


def test_bootstrap_leaves_the_task_data_in_place():
    task = tiny_task()
    x, y = task.x, task.y
    edge = MaliciousEdge(settings(), task, "alie", bootstrap=3)

    edge._train_on(model_frame())

    assert edge.task.x is x
    assert edge.task.y is y


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_attack_sends_a_valid_frame_of_its_own(attack):
    frame = model_frame()
    bad = attacked(attack)

    back = decode_frame(encode_frame(bad))

    assert isinstance(back, UpdateFrame)
    assert (back.federation, back.fog_id, back.edge_id) == ("fed", "fog0", "bad0")
    assert (back.base_version, back.base_seq) == (frame.version, frame.seq)
    assert back.delta.shape == frame.weights.shape
    assert np.isfinite(back.delta).all()
    assert "train_loss" in back.metrics


@pytest.mark.parametrize(
    ("attack", "kw", "match"),
    [
        ("label-flip", {}, "data attack"),
        ("nope", {}, "unknown attack"),
        ("scale", {"scale": 0.0}, "scale"),
        ("scale", {"scale": float("inf")}, "scale"),
        ("gaussian", {"sigma": -1.0}, "sigma"),
        ("alie", {"n_byzantine": 0}, ">= 1"),
    ],
)
def test_bad_attack_configuration_is_a_config_error(attack, kw, match):
    with pytest.raises(ConfigError, match=match):
        MaliciousEdge(settings(), tiny_task(), attack, **kw)


def test_module_entry_point_fails_cleanly_on_bad_settings():
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIERFL_")}
    env["HIERFL_SIM_BYZANTINE_OF"] = "2"  # fog and edge ids are missing
    run = subprocess.run(
        [sys.executable, "-m", "hierfl.sim.attacks", "scale"], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=False,
    )

    assert run.returncode == 2, run.stderr
    assert "error: invalid edge settings" in run.stderr
    assert "fog_id" in run.stderr


def test_module_entry_point_rejects_unknown_attacks():
    run = subprocess.run(
        [sys.executable, "-m", "hierfl.sim.attacks", "label-flip"], cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=False,
    )

    assert run.returncode == 2
    assert "invalid choice" in run.stderr
