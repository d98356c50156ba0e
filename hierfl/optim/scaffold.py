"""SCAFFOLD (Karimireddy et al. 2020) across the hierarchy: the numpy maths of each tier.

Control variates: ``c_i`` at each edge, ``c_f`` at each fog (the mean of its edges' ``c_i``),
``c`` at the cloud (the mean over every edge). An edge trains from model ``x`` with every SGD
step corrected by ``c - c_i`` (``y <- y - lr * (grad(y) + c - c_i)``), then updates its control
variate with option II of the paper::

    c_i+ = c_i - c + (x - y) / (K * lr)        K: the local SGD steps taken

and sends ``Delta c_i = c_i+ - c_i`` beside its model delta. A fog sums, over its fog rounds,
the plain (unweighted) mean of its edges' ``Delta c_i`` and forwards that ``Delta c_f``; the
cloud adds ``sum_f n_f * Delta c_f / sum_f n_f`` to ``c`` (``n_f``: the fog's contributing
edges), i.e. the mean of every contributing edge's control change: ``c = mean_i c_i`` when
every edge takes part, as in the paper with full participation. ``c`` rides with the global
model. Wire format and byte cost: docs/wire-format.md, docs/learning.md.
"""

from __future__ import annotations

import numpy as np

from hierfl.errors import StateError
from hierfl.types import Float32Vector

__all__ = ["EdgeControl", "cloud_control", "edge_control", "fog_control"]


def edge_control(c_i: Float32Vector, c: Float32Vector, x: Float32Vector, y: Float32Vector,
                 steps: int, lr: float) -> tuple[Float32Vector, Float32Vector]:
    """Option II's new ``c_i`` and its change ``Delta c_i``.

    Args:
        c_i: the edge's control variate before this training.
        c: the cloud's control variate the edge was sent.
        x: the model the edge trained from.
        y: the model it trained to.
        steps: local SGD steps taken (K).
        lr: the local learning rate.

    Raises:
        StateError: when the sizes differ or no step was taken.
    """
    if not (c_i.size == c.size == x.size == y.size):
        raise StateError("SCAFFOLD: control variates and models of different sizes")
    if steps < 1 or lr <= 0:
        raise StateError(f"SCAFFOLD: {steps} local steps at lr {lr}")
    new = (c_i.astype(np.float64) - c + (x.astype(np.float64) - y) / (steps * lr))
    new32 = new.astype(np.float32)
    return new32, (new - c_i).astype(np.float32)


def fog_control(deltas: list[Float32Vector]) -> Float32Vector:
    """One fog round's ``Delta c_f``: the plain mean of its edges' ``Delta c_i``.

    Raises:
        StateError: for no deltas.
    """
    if not deltas:
        raise StateError("SCAFFOLD: no control deltas to combine")
    return np.mean(np.stack(deltas).astype(np.float64), axis=0).astype(np.float32)


def cloud_control(c: Float32Vector, deltas: list[Float32Vector], edges: list[int]) -> Float32Vector:
    """The cloud's new ``c``: ``c + sum_f n_f Delta c_f / sum_f n_f``.

    Args:
        c: the current control variate.
        deltas: each reporting fog's ``Delta c_f``.
        edges: each fog's number of contributing edges ``n_f``.

    Raises:
        StateError: for no deltas or counts that do not match them.
    """
    if not deltas or len(deltas) != len(edges) or sum(edges) <= 0:
        raise StateError("SCAFFOLD: fog control deltas and edge counts do not match")
    n = np.asarray(edges, dtype=np.float64)
    step = (n[:, None] * np.stack(deltas).astype(np.float64)).sum(0) / n.sum()
    return (c.astype(np.float64) + step).astype(np.float32)


class EdgeControl:
    """An edge's SCAFFOLD state ``c_i`` (zeros at first; in memory: a restarted edge starts
    again from zeros) and its part around one training.

    The task must expose ``scaffold_correction`` (set here to ``c - c_i``), ``last_steps``
    and ``lr`` (:class:`~hierfl.edge.trainer.SupervisedTask` does); another task trains
    without SCAFFOLD and sends no control change.
    """

    def __init__(self) -> None:
        self.c_i: Float32Vector | None = None

    def before(self, task: object, c: Float32Vector | None) -> bool:
        """Set the task's correction for a model carrying ``c``; whether SCAFFOLD is on."""
        if c is None or not all(hasattr(task, a) for a in ("scaffold_correction", "lr",
                                                           "last_steps")):
            return False
        if self.c_i is None or self.c_i.size != c.size:
            self.c_i = np.zeros(c.size, dtype=np.float32)
        task.scaffold_correction = (c - self.c_i).astype(np.float32)  # type: ignore[attr-defined]
        return True

    def after(self, task: object, c: Float32Vector, x: Float32Vector,
              y: Float32Vector) -> Float32Vector:
        """The training ended at ``y`` from ``x``: update ``c_i``; return ``Delta c_i``."""
        task.scaffold_correction = None  # type: ignore[attr-defined]
        assert self.c_i is not None
        self.c_i, delta = edge_control(self.c_i, c, x, y, int(task.last_steps),  # type: ignore[attr-defined]
                                       float(task.lr))  # type: ignore[attr-defined]
        return delta
