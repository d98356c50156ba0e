"""Server optimisers (hierfl.optim.server): each step against hand-computed values, Flower's
FedAdam/FedYogi/FedAvgM formulas, and the state's checkpoint round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hierfl.errors import ConfigError, StateError, StoreError
from hierfl.optim.checkpoint import restore_state, save_state
from hierfl.optim.server import ServerOptConfig, ServerOptimizer, make_server_optimizer


def _opt(name: str, **kw: float | bool) -> ServerOptimizer:
    opt = make_server_optimizer(name, 2, **kw)
    assert opt is not None
    return opt


def test_none_is_off() -> None:
    assert make_server_optimizer("none", 3) is None


def test_fedavgm_by_hand() -> None:
    opt = _opt("fedavgm", server_lr=0.5, momentum=0.9)
    d1 = np.array([1.0, -2.0], np.float32)
    # m1 = d1, step = 0.5 * m1
    np.testing.assert_allclose(opt.step(d1), [0.5, -1.0])
    # m2 = 0.9 * [1, -2] + [2, 0] = [2.9, -1.8]; step = [1.45, -0.9]
    np.testing.assert_allclose(opt.step(np.array([2.0, 0.0], np.float32)), [1.45, -0.9],
                               rtol=1e-6)


def test_fedadam_paper_by_hand() -> None:
    opt = _opt("fedadam", server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3,
               bias_correction=False)
    d = np.array([0.2, -0.1], np.float32)
    # m = 0.1 d = [0.02, -0.01]; v = 0.01 d^2 = [4e-4, 1e-4]; sqrt v = [0.02, 0.01]
    want = 0.1 * np.array([0.02 / 0.021, -0.01 / 0.011])
    np.testing.assert_allclose(opt.step(d), want, rtol=1e-6)
    # second step with the same delta: m = 0.09 d + 0.1 d = 0.19 d; v = (0.0099 + 0.01) d^2
    m2 = 0.19 * np.array([0.2, -0.1])
    v2 = 0.0199 * np.array([0.04, 0.01])
    np.testing.assert_allclose(opt.step(d), 0.1 * m2 / (np.sqrt(v2) + 1e-3), rtol=1e-6)
    assert opt.t == 2


def test_fedadam_bias_correction_by_hand() -> None:
    opt = _opt("fedadam", server_lr=0.1, tau=1e-9)  # defaults: bias correction on
    d = np.array([0.5, -0.25], np.float32)
    # t = 1: eta_1 = 0.1 * sqrt(0.01) / 0.1 = 0.1; m/sqrt(v) = 0.1 d / (0.1 |d|) = sign(d)
    np.testing.assert_allclose(opt.step(d), [0.1, -0.1], rtol=1e-6)


def test_fedyogi_by_hand() -> None:
    opt = _opt("fedyogi", server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)
    d = np.array([0.3, 0.0], np.float32)
    # v0 = 0: sign(0 - d^2) = -1 -> v1 = 0.01 d^2 = [9e-4, 0]; m1 = [0.03, 0]
    np.testing.assert_allclose(opt.step(d), [0.01 * 0.03 / (0.03 + 1e-3), 0.0], rtol=1e-6)
    # a smaller delta: v1 = 9e-4 > d^2 = 1e-4 -> v2 = v1 - 0.01 * 1e-4 (Yogi shrinks v
    # additively, where Adam would multiply it by beta2)
    d2 = np.array([0.01, 0.0], np.float32)
    opt.step(d2)
    assert math.isclose(opt.v[0], 9e-4 - 1e-6, rel_tol=1e-6)  # float32 deltas


def test_fedadagrad_by_hand() -> None:
    opt = _opt("fedadagrad", server_lr=0.1, tau=1e-9)
    d = np.array([0.2, -0.4], np.float32)
    opt.step(d)
    # beta1 = 0: m = d; v = d^2 + d^2 after the second step
    np.testing.assert_allclose(opt.step(d), 0.1 * d / (np.sqrt(2) * np.abs(d)), rtol=1e-6)


def _flower_fedadam(x: list[np.ndarray], rounds: list[list[np.ndarray]], *, eta: float,
                    beta_1: float, beta_2: float, tau: float,
                    exponent: list[float]) -> list[np.ndarray]:
    """Flower 1.x FedAdam.aggregate_fit's update (flwr/server/strategy/fedadam.py), ported
    verbatim on the aggregate's delta; ``exponent[r]`` is the power of the bias correction
    (Flower: ``server_round + 1.0``)."""
    m_t: list[np.ndarray] = []
    v_t: list[np.ndarray] = []
    for r, delta_t in enumerate(rounds):
        if not m_t:
            m_t = [np.zeros_like(d) for d in delta_t]
        m_t = [np.multiply(beta_1, a) + (1 - beta_1) * b for a, b in zip(m_t, delta_t,
                                                                         strict=True)]
        if not v_t:
            v_t = [np.zeros_like(d) for d in delta_t]
        v_t = [beta_2 * a + (1 - beta_2) * np.multiply(b, b) for a, b in zip(v_t, delta_t,
                                                                           strict=True)]
        eta_norm = (eta * np.sqrt(1 - np.power(beta_2, exponent[r]))
                    / (1 - np.power(beta_1, exponent[r])))
        x = [a + eta_norm * b / (np.sqrt(c) + tau) for a, b, c in zip(x, m_t, v_t, strict=True)]
    return x


def test_fedadam_matches_flowers_formula() -> None:
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=5)
    deltas = [rng.normal(scale=0.1, size=5) for _ in range(4)]
    opt = make_server_optimizer("fedadam", 5)  # Flower's defaults: eta 0.1, 0.9, 0.99, 1e-9
    assert opt is not None
    x = x0.astype(np.float64)
    for d in deltas:
        x = x + opt.step(d.astype(np.float32))
    # Flower's exponent is server_round + 1 (2 on its first round); ours is the step count t:
    # the same formula with t = 1, 2, ... (Kingma and Ba's alpha_t)
    want = _flower_fedadam([x0], [[d] for d in deltas], eta=0.1, beta_1=0.9, beta_2=0.99,
                           tau=1e-9, exponent=[1.0, 2.0, 3.0, 4.0])[0]
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-6)


def test_fedyogi_and_fedavgm_match_flowers_formulas() -> None:
    rng = np.random.default_rng(4)
    deltas = [rng.normal(scale=0.1, size=3) for _ in range(3)]
    yogi = make_server_optimizer("fedyogi", 3)
    avgm = make_server_optimizer("fedavgm", 3, server_lr=1.0, momentum=0.5)
    assert yogi is not None and avgm is not None
    m = np.zeros(3)
    v = np.zeros(3)
    mom = np.zeros(3)
    for d in deltas:
        # flwr/server/strategy/fedyogi.py (eta 1e-2, beta 0.9/0.99, tau 1e-3)
        m = 0.9 * m + 0.1 * d
        v = v - (1.0 - 0.99) * d * d * np.sign(v - d * d)
        np.testing.assert_allclose(yogi.step(d.astype(np.float32)),
                                   1e-2 * m / (np.sqrt(v) + 1e-3), rtol=1e-5, atol=1e-9)
        # flwr/server/strategy/fedavgm.py: pseudo-gradient = -delta; x -= lr * momentum_vector
        mom = 0.5 * mom + (-d)
        np.testing.assert_allclose(avgm.step(d.astype(np.float32)), -1.0 * mom, rtol=1e-5)


@pytest.mark.parametrize("bad", [
    {"server_lr": 0.0}, {"momentum": 1.0}, {"beta1": -0.1}, {"tau": 0.0}, {"nesterov": True},
])
def test_bad_params_are_config_errors(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ServerOptConfig.build("fedadam", **bad)
    with pytest.raises(ConfigError):
        ServerOptConfig.build("adamw")


def test_wrong_size_delta_is_refused() -> None:
    with pytest.raises(StateError):
        _opt("fedadam").step(np.zeros(3, np.float32))


def test_state_checkpoint_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    opt = _opt("fedyogi")
    for d in ([0.1, 0.2], [-0.3, 0.05]):
        opt.step(np.array(d, np.float32))
    entry = save_state(tmp_path, 2, opt)
    assert entry["name"] == "fedyogi" and entry["step"] == 2
    fresh = _opt("fedyogi")
    assert restore_state(tmp_path, {"server_opt": entry}, fresh)
    assert fresh.t == 2
    np.testing.assert_array_equal(fresh.m, opt.m)
    np.testing.assert_array_equal(fresh.v, opt.v)
    # the next step is the same as the uninterrupted optimiser's
    d = np.array([0.2, -0.2], np.float32)
    np.testing.assert_array_equal(fresh.step(d), opt.step(d))
    # another optimiser's state is not loaded; an altered file is refused
    assert not restore_state(tmp_path, {"server_opt": entry}, _opt("fedadam"))
    (tmp_path / entry["file"]).write_bytes(b"junk")
    with pytest.raises(StoreError):
        restore_state(tmp_path, {"server_opt": entry}, _opt("fedyogi"))


def test_old_state_files_are_pruned(tmp_path) -> None:  # type: ignore[no-untyped-def]
    opt = _opt("fedavgm")
    for v in range(1, 7):
        opt.step(np.ones(2, np.float32))
        save_state(tmp_path, v, opt, keep=3)
    assert sorted(p.name for p in (tmp_path / "optim").iterdir()) == [
        "v00000004.npz", "v00000005.npz", "v00000006.npz"]
