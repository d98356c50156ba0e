"""The edge's SGD (hierfl.edge.trainer._SGD) is torch.optim.SGD's arithmetic, bit for bit."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hierfl.edge import trainer  # noqa: E402
from hierfl.edge.trainer import SupervisedTask  # noqa: E402


class _TorchSGD:
    """torch.optim.SGD behind the trainer's optimiser interface."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float = 0.0) -> None:
        self.opt = torch.optim.SGD(params, lr=lr, momentum=momentum)

    def zero_grad(self) -> None:
        self.opt.zero_grad()

    def step(self) -> None:
        self.opt.step()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _train(momentum: float, prox_mu: float, monkeypatch: pytest.MonkeyPatch,
           sgd: type | None) -> tuple[torch.Tensor, dict[str, float]]:
    if sgd is not None:
        monkeypatch.setattr(trainer, "_SGD", sgd)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(45, 8, generator=gen), torch.randint(0, 3, (45,), generator=gen)
    task = SupervisedTask(_model, x, y, batch_size=8, lr=0.1, momentum=momentum, seed=5,
                          prox_mu=prox_mu)
    model = _model()
    result = task.train(model, 3)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), result.metrics


@pytest.mark.parametrize(("momentum", "prox_mu"), [(0.0, 0.0), (0.9, 0.0), (0.0, 0.1)])
def test_edge_sgd_matches_torch_sgd_bit_for_bit(momentum: float, prox_mu: float,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ours, our_metrics = _train(momentum, prox_mu, monkeypatch, None)
    with monkeypatch.context() as m:
        theirs, their_metrics = _train(momentum, prox_mu, m, _TorchSGD)
    start = torch.cat([p.detach().flatten() for p in _model().parameters()])
    assert not torch.equal(ours, start)  # it trained
    assert torch.equal(ours, theirs)
    assert our_metrics == their_metrics
