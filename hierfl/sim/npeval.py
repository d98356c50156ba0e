"""The sim's test-set evaluation in numpy: the built-in scenarios' models are MLPs (Linear
layers with ReLU between them), whose forward pass needs no torch.

``hierfl sim`` (processes mode) evaluates every global model in its own process, which would
otherwise import torch (about 2 s of CPU on a 2-core machine) while the federation starts or
runs its first rounds. The edges (and the initial model, written by a child of the edge zygote)
still use torch; this only reads the weights they produce.

What it reports is torch's: accuracy is ``(argmax == y).float().mean()`` in float32 (argmax
keeps the first of equal maxima, as torch's does), so the figure is the same float;
the logits come from float32 matrix products, as torch's do (the BLAS may round the last bit
differently, which could change an argmax only on an exact near-tie;
tests/unit/sim/test_sim_npeval.py compares both on trained models). The loss is the mean
cross-entropy computed in float64 (torch's float32 figure may differ in the 7th digit).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hierfl.wire.frames import LayoutEntry

__all__ = ["Mlp", "accuracy_and_loss", "one_blas_thread", "per_sample", "sim_mlp"]

_PARAM = re.compile(r"^(\d+)\.(weight|bias)$")


@dataclass(frozen=True)
class Mlp:
    """A ``torch.nn.Sequential`` of Linear layers with a ReLU between each two, as a layout
    (the flat weight vector's order, :func:`hierfl.model.torch_adapter.model_layout`)."""

    layout: tuple[LayoutEntry, ...]

    @classmethod
    def from_weights_file(cls, path: str | Path) -> Mlp | None:
        """The MLP of a weights file's layout (``.npz``; see :meth:`from_layout`)."""
        from hierfl.model.store import load_weights_file  # noqa: PLC0415

        _, layout = load_weights_file(path)
        return cls.from_layout(layout)

    @classmethod
    def from_layout(cls, layout: Sequence[LayoutEntry]) -> Mlp | None:
        """The MLP that ``layout`` describes, or None when it is not one: pairs
        ``i.weight`` (out, in), ``i.bias`` (out,) whose sizes chain, indices 2 apart (a
        ReLU between: ``Sequential(Linear, ReLU, Linear, ...)``)."""
        entries = tuple(layout)
        if not entries or len(entries) % 2:
            return None
        prev_index, prev_out = None, None
        for w, b in zip(entries[0::2], entries[1::2], strict=True):
            mw, mb = _PARAM.match(w.name), _PARAM.match(b.name)
            if not (mw and mb and mw.group(2) == "weight" and mb.group(2) == "bias"
                    and mw.group(1) == mb.group(1)):
                return None
            index = int(mw.group(1))
            if len(w.shape) != 2 or tuple(b.shape) != (w.shape[0],):
                return None
            if prev_index is not None and (index != prev_index + 2 or w.shape[1] != prev_out):
                return None
            prev_index, prev_out = index, w.shape[0]
        return cls(entries)

    def logits(self, vec: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The model's output for inputs ``x`` (float32), weights from the flat ``vec``."""
        h = np.asarray(x, dtype=np.float32)
        pos = 0
        layers = len(self.layout) // 2
        for i in range(layers):
            w_e, b_e = self.layout[2 * i], self.layout[2 * i + 1]
            w = vec[pos:pos + w_e.size].reshape(w_e.shape)
            pos += w_e.size
            b = vec[pos:pos + b_e.size]
            pos += b_e.size
            h = h @ w.T
            h += b
            if i < layers - 1:
                np.maximum(h, 0, out=h)
        return h


def one_blas_thread() -> None:
    """Limit this process's BLAS (numpy's OpenBLAS) to one thread, if threadpoolctl is there
    (scikit-learn's dependency, so in the ``sim`` extra). The sim's children run with
    ``OMP_NUM_THREADS=1``; the sim's own process does not, and OpenBLAS's worker threads spin
    after every product: evaluating the wide model they took about 2 % of the machine, on the
    cores the federation needs."""
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError:  # pragma: no cover - the sim extra has it
        return
    threadpool_limits(limits=1, user_api="blas")


def sim_mlp(initial: str | Path) -> Mlp | None:
    """The MLP of the sim's initial model file, with this process's BLAS set to one thread
    (:func:`one_blas_thread`); None when the model is not such an MLP (evaluate with torch)."""
    mlp = Mlp.from_weights_file(initial)
    if mlp is not None:
        one_blas_thread()
    return mlp


def per_sample(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(right, loss)`` per sample, float64: 1.0 where the argmax is the label, and the
    cross-entropy of each sample."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logsumexp = np.log(np.exp(z).sum(axis=1))
    losses = logsumexp - z[np.arange(len(y)), y]
    right = (logits.argmax(axis=1) == y).astype(np.float64)
    return right, losses


def accuracy_and_loss(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Test accuracy (torch's float32 mean of the hits) and mean cross-entropy."""
    right, losses = per_sample(logits, y)
    acc = np.float32(np.count_nonzero(right)) / np.float32(len(y))
    return float(acc), float(losses.mean())
