"""What an edge trains: the :class:`EdgeTask` protocol and a ready-made supervised task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from hierfl.edge.result import TrainResult

__all__ = ["EdgeTask", "SupervisedTask", "TrainResult"]


class EdgeTask(Protocol):
    """The device-side part a factory integrator provides.

    The model is a ``torch.nn.Module`` (its float state is the flat vector on the wire) or a
    :class:`~hierfl.edge.vector.VectorModel` (numpy only: no torch on that edge).
    """

    def build_model(self) -> Any:
        """Return a fresh model (its weights are overwritten by the fog's model)."""
        ...

    def train(self, model: Any, epochs: int) -> TrainResult:
        """Train ``model`` in place for ``epochs`` local epochs on this device's data."""
        ...


class SupervisedTask:
    """Mini-batch SGD on in-memory tensors: the common case, no subclassing needed.

    Args:
        model_factory: returns a fresh ``torch.nn.Module``.
        x: inputs, first dimension = samples.
        y: targets.
        batch_size: mini-batch size.
        lr: SGD learning rate.
        momentum: SGD momentum.
        seed: shuffling seed (advanced every epoch; reproducible per device).
        loss_fn: defaults to cross-entropy.
        prox_mu: FedProx proximal term weight (0 = plain FedAvg local training).

    SCAFFOLD: when :attr:`scaffold_correction` is set (the edge client sets it to
    ``c - c_i`` before training, :mod:`hierfl.optim.scaffold`), every step's gradient is
    corrected by it; :attr:`last_steps` counts the SGD steps of the last :meth:`train`.

    Usage::

        task = SupervisedTask(lambda: MyNet(), x_local, y_local, lr=0.05)
        client = EdgeClient(settings, task)
    """

    def __init__(
        self,
        model_factory: Callable[[], torch.nn.Module],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int = 16,
        lr: float = 0.05,
        momentum: float = 0.0,
        seed: int = 0,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        prox_mu: float = 0.0,
    ) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise ValueError("x and y must be non-empty and of equal length")
        self.model_factory = model_factory
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.loss_fn = loss_fn or torch.nn.functional.cross_entropy
        self.prox_mu = prox_mu
        self._gen = torch.Generator().manual_seed(seed)
        #: SCAFFOLD's ``c - c_i`` as one flat float32 vector (the wire's order), or None
        self.scaffold_correction: Any = None
        self.last_steps = 0

    def build_model(self) -> torch.nn.Module:
        """Return a fresh model from the factory."""
        return self.model_factory()

    def train(self, model: torch.nn.Module, epochs: int) -> TrainResult:
        """Run ``epochs`` epochs of mini-batch SGD; report mean loss and accuracy."""
        opt = _SGD(list(model.parameters()), self.lr, self.momentum)
        anchor = [p.detach().clone() for p in model.parameters()] if self.prox_mu else []
        correction = _corrections(model, self.scaffold_correction)
        self.last_steps = 0
        model.train()
        n = len(self.x)
        total_loss, correct, seen = 0.0, 0, 0
        for _ in range(epochs):
            order = torch.randperm(n, generator=self._gen)
            for i in range(0, n, self.batch_size):
                idx = order[i : i + self.batch_size]
                size = min(self.batch_size, n - i)  # len(idx), without Tensor.__len__
                xb, yb = self.x[idx], self.y[idx]
                opt.zero_grad()
                out = model(xb)
                loss = self.loss_fn(out, yb)
                if self.prox_mu:
                    prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor,
                                                                      strict=True))
                    loss = loss + 0.5 * self.prox_mu * prox
                loss.backward()
                for p, corr in correction:
                    if p.grad is not None:
                        p.grad.add_(corr)
                opt.step()
                self.last_steps += 1
                total_loss += float(loss.detach()) * size
                if out.ndim == 2:
                    correct += int((out.argmax(1) == yb).sum())
                seen += size
        metrics = {"train_loss": total_loss / max(seen, 1)}
        if correct:
            metrics["train_acc"] = correct / max(seen, 1)
        return TrainResult(num_samples=n, metrics=metrics)


class _SGD:
    """Plain SGD with optional momentum: the arithmetic of ``torch.optim.SGD`` (no weight
    decay, dampening or Nesterov; ``foreach`` off, as torch picks on CPU), bit for bit,
    without its per-step machinery (profiler hooks, grad-mode wrappers, state dicts), which
    cost a small model more than its arithmetic: 2 epochs of the digits-20 MLP on 67 samples
    took 3.0-4.2 ms with ``torch.optim.SGD`` and 2.2-3.2 ms with this, same process, one
    thread (tests/unit/edge/test_edge_sgd.py checks the two agree bit for bit)."""

    __slots__ = ("_bufs", "lr", "momentum", "params")

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float = 0.0) -> None:
        self.params = params
        self.lr = float(lr)
        self.momentum = float(momentum)
        self._bufs: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            if self.momentum != 0:
                buf = self._bufs[i]
                if buf is None:
                    buf = self._bufs[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1)
                grad = buf
            p.add_(grad, alpha=-self.lr)


def _corrections(model: torch.nn.Module, flat: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(parameter, its slice of flat)`` pairs: ``flat`` is in the order of the model's float
    state (:func:`hierfl.model.torch_adapter.model_to_vector`); None gives no pairs."""
    if flat is None:
        return []
    vec = torch.as_tensor(flat, dtype=torch.float32)
    total = sum(v.numel() for v in model.state_dict().values() if torch.is_floating_point(v))
    if total != vec.numel():
        raise ValueError(f"a SCAFFOLD correction of {vec.numel()} values for a model of "
                         f"{total}")
    params = dict(model.named_parameters())
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    pos = 0
    for name, v in model.state_dict().items():
        if not torch.is_floating_point(v):
            continue
        n = v.numel()
        if name in params:
            out.append((params[name], vec[pos:pos + n].view_as(params[name])))
        pos += n
    return out
