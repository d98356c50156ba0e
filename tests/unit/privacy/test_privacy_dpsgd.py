"""Record-level DP-SGD at the edge: per-sample clipping, noise, accounting, the budget stop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hierfl.edge.trainer import SupervisedTask
from hierfl.errors import ConfigError, PrivacyBudgetExhaustedError
from hierfl.privacy.accountant import epsilon_for
from hierfl.privacy.dpsgd import DPSGDTask, clip_and_sum, per_sample_grads


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def tiny_task(n: int = 128, batch_size: int = 16, lr: float = 0.5, seed: int = 3,
              momentum: float = 0.0) -> SupervisedTask:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)).astype(np.int64)
    return SupervisedTask(tiny_model, torch.from_numpy(x), torch.from_numpy(y), lr=lr,
                          batch_size=batch_size, seed=seed, momentum=momentum)


def dp(task: SupervisedTask | None = None, **kw: float | str | int | None) -> DPSGDTask:
    args: dict = {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5,
                  "target_epsilon": 50.0, "seed": 0}
    args.update(kw)
    return DPSGDTask(task or tiny_task(), **args)


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class Scaled(torch.nn.Module):
    """A parameter outside nn.Linear: per_sample_grads must take the vmap path."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_model()
        self.scale = torch.nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.scale


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("kind", ["mlp", "scaled", "mse"])
def test_per_sample_grads_match_one_backward_per_record(fast: bool, kind: str) -> None:
    task = tiny_task(n=12)
    model = Scaled() if kind == "scaled" else task.build_model()
    loss_fn = task.loss_fn
    if kind == "mse":  # not cross-entropy: the vmap path, whatever `fast` says
        def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return ((out.sum(1) - y.float()) ** 2).mean()
    per = per_sample_grads(model, loss_fn, task.x, task.y, fast=fast)
    assert list(per) == [k for k, _ in model.named_parameters()]
    for i in range(len(task.x)):
        model.zero_grad()
        loss_fn(model(task.x[i : i + 1]), task.y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None
            torch.testing.assert_close(per[name][i], p.grad, rtol=1e-5, atol=1e-6)


def test_a_linear_layer_used_twice_takes_the_vmap_path() -> None:
    lin = torch.nn.Linear(3, 3)

    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(torch.relu(self.lin(x)))

    model = Twice()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    per = per_sample_grads(model, torch.nn.functional.cross_entropy, x, y)
    for i in range(5):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        assert lin.weight.grad is not None
        torch.testing.assert_close(per["lin.weight"][i], lin.weight.grad, rtol=1e-5, atol=1e-6)


def test_clipping_bounds_each_records_contribution() -> None:
    task = tiny_task(n=10)
    model = task.build_model()
    x = task.x.clone()
    x[3] *= 1e6  # one record with an enormous gradient
    per = per_sample_grads(model, task.loss_fn, x, task.y)
    raw = torch.cat([g.reshape(10, -1) for g in per.values()], dim=1).norm(dim=1)
    assert raw[3] > 1e3  # the record really is far above C
    c = 0.5
    with_all, norms = clip_and_sum(per, c)
    torch.testing.assert_close(norms, raw)
    for i in range(10):
        without = clip_and_sum({k: torch.cat([g[:i], g[i + 1 :]]) for k, g in per.items()}, c)[0]
        diff = torch.cat([(with_all[k] - without[k]).reshape(-1) for k in per]).norm()
        assert float(diff) <= c * (1 + 1e-5)
        if raw[i] < c:  # a record below C passes unclipped
            assert math.isclose(float(diff), float(raw[i]), rel_tol=1e-4)
        else:
            assert math.isclose(float(diff), c, rel_tol=1e-4)


def test_noise_has_std_sigma_times_c_on_the_sum() -> None:
    task = tiny_task(n=64, batch_size=16)
    sigma, c = 1.3, 0.7
    t = dp(task, noise_multiplier=sigma, clip_norm=c)
    model = task.build_model()
    xb, yb = task.x[:16], task.y[:16]
    clean = clip_and_sum(per_sample_grads(model, task.loss_fn, xb, yb), c)[0]
    expected = t.sample_rate * len(task.x)  # the mean divides by the expected batch size
    assert expected == 16
    noise = []
    for _ in range(40):
        g, _ = t.private_grad(model, xb, yb)
        noise.append(torch.cat([(g[k] * expected - clean[k]).reshape(-1) for k in clean]))
    z = torch.stack(noise)  # 40 x 195 draws
    assert abs(float(z.mean())) < 0.05 * sigma * c
    assert float(z.std()) == pytest.approx(sigma * c, rel=0.03)


def test_empty_poisson_batch_is_a_noise_only_step() -> None:
    task = tiny_task()
    t = dp(task, noise_multiplier=2.0, clip_norm=1.0)
    g, stats = t.private_grad(task.build_model(), task.x[:0], task.y[:0])
    z = torch.cat([v.reshape(-1) for v in g.values()]) * t.sample_rate * len(task.x)
    assert stats["loss_sum"] == 0.0
    assert float(z.std()) == pytest.approx(2.0, rel=0.15)


def test_epsilon_is_the_accountants_for_the_steps_taken() -> None:
    t = dp(noise_multiplier=1.1, target_epsilon=100.0)
    assert t.sample_rate == 16 / 128
    assert t.steps_per_epoch == 8
    assert t.epsilon == 0.0
    r = t.train(t.build_model(), 2)
    want = epsilon_for(noise_multiplier=1.1, sample_rate=16 / 128, releases=16, delta=1e-5)
    assert t.accountant.releases == 16
    assert r.metrics["epsilon"] == pytest.approx(want)
    assert t.epsilon == pytest.approx(want)
    assert r.metrics["dp_steps"] == 16
    assert r.num_samples == 128


def test_budget_stop_raises_before_the_epoch_that_would_exceed() -> None:
    probe = dp()
    per_epoch = probe.steps_per_epoch
    eps = [probe.accountant.epsilon(k * per_epoch) for k in (1, 2, 3, 4)]
    target = (eps[2] + eps[3]) / 2  # three epochs fit, the fourth does not
    t = dp(target_epsilon=target)
    model = t.build_model()
    t.train(model, 2)
    assert not t.exhausted
    t.train(model, 1)
    assert t.epsilon == pytest.approx(eps[2]) and t.epsilon <= target
    assert t.exhausted
    before, releases = flat(model), t.accountant.releases
    with pytest.raises(PrivacyBudgetExhaustedError, match="target") as exc:
        t.train(model, 1)
    assert exc.value.reason == "privacy.budget"
    assert torch.equal(flat(model), before)  # nothing trained, nothing spent
    assert t.accountant.releases == releases
    assert t.epsilon <= target


def test_budget_stop_checks_the_whole_call() -> None:
    probe = dp()
    target = (probe.accountant.epsilon(probe.steps_per_epoch)
              + probe.accountant.epsilon(2 * probe.steps_per_epoch)) / 2
    t = dp(target_epsilon=target)
    model = t.build_model()
    with pytest.raises(PrivacyBudgetExhaustedError):
        t.train(model, 2)  # one epoch would fit, two do not: the call is refused whole
    assert t.accountant.releases == 0
    t.train(model, 1)
    assert t.exhausted


def test_restored_releases_resume_the_account() -> None:
    t = dp(releases=40)
    assert t.epsilon == pytest.approx(t.accountant.epsilon(40)) and t.epsilon > 0


def test_dpsgd_learns_a_tiny_problem() -> None:
    task = tiny_task(n=512, batch_size=32, lr=0.5, momentum=0.5)
    t = dp(task, noise_multiplier=0.8, clip_norm=1.0, target_epsilon=10.0)
    model = t.build_model()
    with torch.no_grad():
        acc0 = float((model(task.x).argmax(1) == task.y).float().mean())
    r = t.train(model, 8)
    with torch.no_grad():
        acc = float((model(task.x).argmax(1) == task.y).float().mean())
    assert acc > 0.85 and acc > acc0 + 0.2
    assert r.metrics["epsilon"] <= 10.0
    assert 0.5 < r.metrics["train_acc"] <= 1.0


def test_same_seed_same_model_other_seed_differs() -> None:
    def run(seed: int) -> torch.Tensor:
        t = dp(seed=seed)
        m = t.build_model()
        t.train(m, 2)
        return flat(m)

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_default_seed_is_not_predictable() -> None:
    def run() -> torch.Tensor:
        t = dp(seed=None)
        m = t.build_model()
        t.train(m, 1)
        return flat(m)

    assert not torch.equal(run(), run())


@pytest.mark.parametrize(
    "kw",
    [
        {"noise_multiplier": 0.0},
        {"noise_multiplier": -1.0},
        {"clip_norm": 0.0},
        {"clip_norm": float("nan")},
        {"delta": 1.0},
        {"target_epsilon": 0.0},
        {"method": "moments"},
        {"releases": -1},
    ],
)
def test_nonsense_settings_are_refused(kw: dict) -> None:
    with pytest.raises(ConfigError, match="privacy"):
        dp(**kw)


def test_batchnorm_and_zero_epochs_are_refused() -> None:
    t = dp()
    bn = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(ConfigError, match="BatchNorm"):
        t.train(bn, 1)
    with pytest.raises(ConfigError, match="epochs"):
        t.train(t.build_model(), 0)
    assert t.accountant.releases == 0


def test_default_noise_is_reseeded_from_secrets_every_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from hierfl.privacy import dpsgd

    draws: list[int] = []

    def randbits(k: int) -> int:
        draws.append(k)
        return 12345  # the same seed every time: two rounds from one model then match

    monkeypatch.setattr(dpsgd.secrets, "randbits", randbits)
    t = dp(seed=None)
    m1, m2 = t.build_model(), t.build_model()
    m2.load_state_dict(m1.state_dict())
    t.train(m1, 1)
    t.train(m2, 1)
    assert draws == [63, 63, 63]  # at construction, then once per local round
    assert torch.equal(flat(m1), flat(m2))  # each round's noise is its own seed's only
    fixed = dp(seed=4)
    fixed.train(fixed.build_model(), 1)
    assert len(draws) == 3  # a fixed seed (tests, benchmarks) never draws from secrets
