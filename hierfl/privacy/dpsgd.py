"""Record-level DP at the edge: DP-SGD [Abadi et al., 2016] with per-sample clipping.

Paper: arxiv.org/abs/1607.00133

Each step samples the edge's records with Poisson sampling (every record is in the batch with
probability ``q = batch_size / n``), computes one gradient per record, clips each to L2 norm
``C``, sums them, adds Gaussian noise of standard deviation ``sigma * C`` to the sum and divides
by the *expected* batch size ``q * n`` (the realised size is data-dependent and is not used).
Each step is one release of the sampled Gaussian mechanism on the edge's records; the edge's
(epsilon, delta) is :class:`hierfl.privacy.accountant.Accountant`'s for ``q`` and the number of
steps taken. Momentum, the learning rate and FedProx's proximal term are post-processing (they
see only noised gradients or no data at all), so they cost no privacy.

Per-sample gradients come from ``torch.func`` (``vmap(grad(...))`` over
``functional_call``), not from Opacus. Opacus 1.6.0 works with torch 2.13.0 (``make_private``
and ``GradSampleModule`` trained our MLPs), but, measured on this project's digits MLP:

* its module hooks make torch warn ("Full backward hook is firing when gradients are computed
  with respect to module outputs...") on every backward pass, which fails the test suite
  (``filterwarnings = error``) and floods an edge's log;
* ``import opacus`` after torch and torch.optim costs 0.7 s, 64 MB of RSS and ~750 more
  modules (scipy) in each edge process; an edge forked from the sim's zygote
  (:mod:`hierfl.sim.zygote`) would need it preloaded there, a plain ``hierfl edge`` pays it;
* ``GradSampleModule`` wraps the model and renames its state (``_module.0.weight``), while the
  flat vector on the wire is the plain model's state; and its accountant and data loader would
  duplicate ours (accounting is dp-accounting's, through :mod:`hierfl.privacy.accountant`).

``torch.func`` is part of torch: no extra dependency, no backward hooks, no wrapper, and the
model stays the plain ``nn.Module``. For models whose parameters all sit in ``nn.Linear``
layers (the scenarios' MLPs) with cross-entropy, one batched forward and backward pass gives
the per-sample gradients directly (``g_i a_i^T`` per layer, Opacus's rule, with a forward hook
only): 2.1 ms per batch of 16 on the digits MLP against 5.7 ms through ``vmap`` (and 1.2 ms
for a plain SGD step). Both paths are checked against one backward pass per sample in
tests/unit/privacy/test_privacy_dpsgd.py.

Models whose output for one record depends on the other records of the batch (BatchNorm)
break per-sample clipping and are refused.

Noise and sampling come from a ``torch.Generator`` (a statistical generator): by default
reseeded with 63 bits from :mod:`secrets` (the OS's CSPRNG) at every :meth:`DPSGDTask.train`
call, i.e. every local round's releases get a fresh, independent seed (anyone who knew a seed
could subtract that round's noise); ``seed=`` fixes it for reproducible benchmarks and tests
only.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

import torch
from torch.func import functional_call, grad, vmap

from hierfl.edge.result import TrainResult
from hierfl.edge.trainer import SupervisedTask
from hierfl.errors import ConfigError, PrivacyBudgetExhaustedError
from hierfl.privacy.accountant import Accountant, Method

__all__ = ["DPSGDTask", "clip_and_sum", "per_sample_grads"]

_NORM_EPS = 1e-6  # Opacus's guard in C / (norm + eps): a zero gradient gets factor 1


def per_sample_grads(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    fast: bool = True,
) -> dict[str, torch.Tensor]:
    """One gradient per record: ``{name: tensor of shape (len(x), *param.shape)}``.

    The loss of record ``i`` is ``loss_fn(model(x[i:i+1]), y[i:i+1])``.

    Two ways, the same numbers: when every trainable parameter belongs to an ``nn.Linear`` used
    once per forward pass and ``loss_fn`` is plain cross-entropy (the scenarios' MLPs), one
    forward and one backward pass of the batch give each layer's input ``a_i`` and output
    gradient ``g_i`` per record, and the record's weight gradient is ``g_i a_i^T`` (Opacus's
    rule for linear layers, without module hooks); otherwise, and with ``fast=False``,
    ``vmap(grad(...))`` over ``functional_call`` (any model, about 5x slower on an MLP).

    Args:
        model: the module (its trainable parameters are differentiated; not modified).
        loss_fn: a loss over a batch (a batch of one record here), e.g. cross-entropy.
        x: inputs, first dimension = records (at least one).
        y: targets.
        fast: allow the linear-layer path when the model and loss qualify.

    Returns:
        The per-record gradients of every parameter that requires grad.
    """
    if fast and loss_fn is torch.nn.functional.cross_entropy:
        linears = _linear_layers(model)
        if linears is not None:
            out = _linear_per_sample_grads(model, linears, x, y)
            if out is not None:
                return out
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    grads: dict[str, torch.Tensor] = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    return grads


def _linear_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]] | None:
    """The model's ``nn.Linear`` layers by name, or None if a trainable parameter is elsewhere."""
    layers = []
    for name, mod in model.named_modules():
        own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if type(mod) is not torch.nn.Linear:
            return None
        layers.append((name, mod))
    return layers


def _linear_per_sample_grads(
    model: torch.nn.Module, layers: list[tuple[str, torch.nn.Linear]], x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, torch.Tensor] | None:
    """Per-record gradients of a linear-layers-only model; None if a layer ran twice."""
    seen: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    reused = False

    def hook(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal reused
        if mod in seen:
            reused = True
        seen[mod] = (inp[0].detach(), out)

    handles = [mod.register_forward_hook(hook) for _, mod in layers]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    if reused or len(seen) != len(layers):
        return None
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    outs = [seen[mod][1] for _, mod in layers]
    gouts = torch.autograd.grad(loss, outs)
    grads: dict[str, torch.Tensor] = {}
    b = x.shape[0]
    for (name, mod), g in zip(layers, gouts, strict=True):
        a = seen[mod][0].reshape(b, -1, mod.in_features)
        g3 = g.detach().reshape(b, -1, mod.out_features)
        prefix = f"{name}." if name else ""
        if mod.weight.requires_grad:
            grads[prefix + "weight"] = torch.einsum("bto,bti->boi", g3, a)
        if mod.bias is not None and mod.bias.requires_grad:
            grads[prefix + "bias"] = g3.sum(1)
    return grads


def clip_and_sum(
    grads: dict[str, torch.Tensor], clip_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Clip each record's whole gradient (all parameters together) to ``clip_norm`` and sum.

    Args:
        grads: per-record gradients from :func:`per_sample_grads` (not modified).
        clip_norm: C > 0; a record's gradient of L2 norm ``g`` is scaled by
            ``min(1, C / (g + 1e-6))``, so no record contributes more than C to the sum.

    Returns:
        ``(sums, norms)``: the summed clipped gradients (parameter shapes) and each record's
        norm before clipping.
    """
    flat = [g.reshape(g.shape[0], -1) for g in grads.values()]
    norms = torch.cat(flat, dim=1).norm(dim=1) if flat else torch.zeros(0)
    factor = (clip_norm / (norms + _NORM_EPS)).clamp(max=1.0)
    sums = {k: torch.einsum("i,i...->...", factor, g) for k, g in grads.items()}
    return sums, norms


class DPSGDTask:
    """An :class:`~hierfl.edge.trainer.EdgeTask` that trains ``task`` with DP-SGD.

    Args:
        task: the supervised task (data, model factory, batch size, lr, momentum, loss, prox).
        noise_multiplier: sigma; noise std on the summed clipped gradient is ``sigma * C``.
        clip_norm: C, per-record L2 clipping bound (> 0).
        delta: delta of the edge's (epsilon, delta) guarantee (in (0, 1); should be below
            1 / the number of records).
        target_epsilon: the budget: no epoch starts that would take epsilon above it.
        method: accountant, "rdp" (default) or "pld".
        seed: seeds sampling and noise (tests, benchmarks); None draws it from the OS.
        releases: steps already accounted (an edge restored from its own ledger).

    Attributes:
        sample_rate: q = min(1, batch_size / records).
        steps_per_epoch: ceil(1 / q): an epoch sees each record once in expectation.
        accountant: the running account (one release per step).

    Raises:
        ConfigError: for nonsense parameters (sigma <= 0, C <= 0, delta outside (0, 1), a
            non-positive target, a model with BatchNorm).

    Usage::

        task = DPSGDTask(SupervisedTask(make_net, x, y, batch_size=16), noise_multiplier=1.1,
                         clip_norm=1.0, delta=1e-5, target_epsilon=3.0)
        client = EdgeClient(settings, task)   # raises PrivacyBudgetExhaustedError when spent
    """

    def __init__(
        self,
        task: SupervisedTask,
        *,
        noise_multiplier: float,
        clip_norm: float,
        delta: float,
        target_epsilon: float,
        method: str = "rdp",
        seed: int | None = None,
        releases: int = 0,
    ) -> None:
        if not (math.isfinite(clip_norm) and clip_norm > 0):
            raise ConfigError(f"privacy: clip_norm must be > 0, got {clip_norm}")
        if not (math.isfinite(target_epsilon) and target_epsilon > 0):
            raise ConfigError(f"privacy: target_epsilon must be > 0, got {target_epsilon}")
        if task.batch_size <= 0:
            raise ConfigError(f"privacy: batch_size must be > 0, got {task.batch_size}")
        n = len(task.x)
        self.task = task
        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(clip_norm)
        self.delta = float(delta)
        self.target_epsilon = float(target_epsilon)
        self.sample_rate = min(1.0, task.batch_size / n)
        self.steps_per_epoch = math.ceil(1.0 / self.sample_rate)
        if method not in ("rdp", "pld"):
            raise ConfigError(f"privacy: accountant method must be 'rdp' or 'pld', got {method!r}")
        mth: Method = "rdp" if method == "rdp" else "pld"
        self.accountant = Accountant(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
            delta=self.delta, method=mth, releases=releases,
        )
        self._seed = seed
        self._gen = torch.Generator().manual_seed(
            secrets.randbits(63) if seed is None else int(seed)
        )

    # --- the budget -----------------------------------------------------------------------

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far (at ``delta``)."""
        return self.accountant.epsilon()

    @property
    def exhausted(self) -> bool:
        """Whether one more epoch would exceed ``target_epsilon`` (training would raise)."""
        return self.accountant.would_exceed(self.target_epsilon, self.steps_per_epoch)

    # --- EdgeTask -------------------------------------------------------------------------

    def build_model(self) -> torch.nn.Module:
        """Return a fresh model from the wrapped task (refused if it has BatchNorm)."""
        model = self.task.build_model()
        _check_model(model)
        return model

    def train(self, model: torch.nn.Module, epochs: int) -> TrainResult:
        """Run ``epochs`` epochs of DP-SGD in place; report loss, accuracy and epsilon.

        The budget is checked for the whole call before anything runs: if ``epochs`` more
        epochs would take epsilon above ``target_epsilon``, nothing is trained (the model is
        untouched) and the error is raised; an update trained with fewer epochs than asked is
        never produced.

        Raises:
            PrivacyBudgetExhaustedError: the call would exceed the budget.
            ConfigError: the model has BatchNorm, or ``epochs`` < 1.
        """
        if epochs < 1:
            raise ConfigError(f"privacy: epochs must be >= 1, got {epochs}")
        _check_model(model)
        steps = epochs * self.steps_per_epoch
        if self.accountant.would_exceed(self.target_epsilon, steps):
            raise PrivacyBudgetExhaustedError(
                f"privacy budget: {epochs} more epoch(s) ({steps} DP-SGD steps) would take "
                f"epsilon from {self.epsilon:.3f} to "
                f"{self.accountant.epsilon(self.accountant.releases + steps):.3f} > target "
                f"{self.target_epsilon} at delta {self.delta}"
            )
        if self._seed is None:  # production: a fresh seed from the OS for this round's noise
            self._gen.manual_seed(secrets.randbits(63))
        task = self.task
        opt = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=task.momentum)
        anchor = (
            {k: p.detach().clone() for k, p in model.named_parameters()} if task.prox_mu else {}
        )
        model.train()
        n = len(task.x)
        total_loss, correct, seen, clipped, done = 0.0, 0, 0, 0, 0
        try:
            for _ in range(steps):
                mask = torch.rand(n, generator=self._gen) < self.sample_rate
                xb, yb = task.x[mask], task.y[mask]
                grads, stats = self.private_grad(model, xb, yb)
                done += 1  # a noised gradient exists: it counts, whatever happens next
                opt.zero_grad(set_to_none=True)
                for name, p in model.named_parameters():
                    if name not in grads:
                        continue
                    g = grads[name]
                    if anchor:  # FedProx: data-independent, added after the noise
                        g = g + task.prox_mu * (p.detach() - anchor[name])
                    p.grad = g
                opt.step()
                total_loss += stats["loss_sum"]
                correct += int(stats["correct"])
                clipped += int(stats["clipped"])
                seen += len(xb)
        finally:
            # one accounting per call (an epsilon evaluation costs milliseconds), and in a
            # finally: steps taken before an error are spent all the same
            self.accountant.spend(done)
        metrics: dict[str, float] = {
            "train_loss": total_loss / max(seen, 1),
            "epsilon": self.epsilon,
            "dp_delta": self.delta,
            "dp_sigma": self.noise_multiplier,
            "dp_clip": self.clip_norm,
            "dp_q": self.sample_rate,
            "dp_steps": float(self.accountant.releases),
            "dp_clipped_frac": clipped / max(seen, 1),
        }
        if correct:
            metrics["train_acc"] = correct / max(seen, 1)
        return TrainResult(num_samples=n, metrics=metrics)

    def private_grad(
        self, model: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The noised mean gradient of one Poisson batch (one release; not accounted here).

        ``(sum of clipped per-record gradients + N(0, (sigma C)^2 I)) / (q n)``.

        Args:
            model: the module (not modified).
            xb: the batch's inputs (may be empty: the step is then noise alone).
            yb: the batch's targets.

        Returns:
            ``(grads, stats)``: the gradient per trainable parameter name, and the batch's
            summed loss, correct predictions and number of clipped records (for metrics only;
            computed from the same forward pass, never released).
        """
        params = {k: v for k, v in model.named_parameters() if v.requires_grad}
        stats = {"loss_sum": 0.0, "correct": 0.0, "clipped": 0.0}
        if len(xb):
            per = per_sample_grads(model, self.task.loss_fn, xb, yb)
            sums, norms = clip_and_sum(per, self.clip_norm)
            stats["clipped"] = float((norms > self.clip_norm).sum())
            with torch.no_grad():
                out = model(xb)
                stats["loss_sum"] = float(self.task.loss_fn(out, yb)) * len(xb)
                if out.ndim == 2:
                    stats["correct"] = float((out.argmax(1) == yb).sum())
        else:
            sums = {k: torch.zeros_like(v) for k, v in params.items()}
        expected = self.sample_rate * len(self.task.x)
        std = self.noise_multiplier * self.clip_norm
        out_grads = {}
        for k, s in sums.items():
            noise = torch.normal(0.0, std, size=s.shape, generator=self._gen, dtype=s.dtype)
            out_grads[k] = (s + noise) / expected
        return out_grads, stats

    def __repr__(self) -> str:
        return (
            f"DPSGDTask(sigma={self.noise_multiplier}, C={self.clip_norm}, "
            f"q={self.sample_rate:.4g}, delta={self.delta}, target={self.target_epsilon}, "
            f"releases={self.accountant.releases})"
        )


def _check_model(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            raise ConfigError(
                "privacy: DP-SGD refuses BatchNorm: it mixes the records of a batch, so one "
                "record's gradient is not bounded by per-sample clipping (use GroupNorm)"
            )
