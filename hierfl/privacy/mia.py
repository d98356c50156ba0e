"""Membership inference on a final model: what an attacker learns, to make epsilon concrete.

Two attacks that need no shadow models, only the model's outputs on records whose membership
the attacker wants to decide:

* **loss threshold** [Yeom et al., 2018, arxiv.org/abs/1709.01604]: a record is called a
  member when its loss is below a threshold (training records tend to have lower loss).
  :func:`loss_threshold_attack` scores ``-loss``.
* **modified entropy** [Song & Mittal, 2021, arxiv.org/abs/2003.10595, "Mentr"]: a
  confidence-based score that also uses the label, so that a confident *wrong* prediction
  counts against membership: ``Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``,
  lower for members. :func:`entropy_attack` scores ``-Mentr``.

Each attack is reported over every threshold at once: the ROC curve's AUC (0.5 = guessing,
1.0 = the attacker tells every member from every non-member), the membership advantage
``max(TPR - FPR)`` (Yeom et al.'s measure) and the TPR at a low FPR (Carlini et al., 2022,
arxiv.org/abs/2112.03570: what the attacker gets when it may rarely be wrong).

:func:`dp_auc_bound` is the other side: the largest AUC *any* attack can reach against one
record of an (epsilon, delta)-DP mechanism (the ROC curve of a test between neighbours is
bounded by ``TPR <= e^eps FPR + delta`` and ``1 - FPR <= e^eps (1 - TPR) + delta``
[Kairouz, Oh, Viswanath, 2015]). Measured AUCs of these average-case attacks sit far below it;
the bound is what DP promises against the strongest attacker.

numpy only: fog and cloud can run it on a model they evaluate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hierfl.errors import NonFiniteError, ShapeMismatchError, ValidationError

__all__ = [
    "AttackResult",
    "dp_auc_bound",
    "entropy_attack",
    "loss_threshold_attack",
    "modified_entropy",
    "roc_auc",
    "score_attack",
]

_LOG_FLOOR = 1e-30  # log(0) guard for probabilities that round to 0 or 1 in float32


@dataclass(frozen=True, slots=True)
class AttackResult:
    """One attack's success over all thresholds.

    Attributes:
        auc: area under the ROC curve (0.5 = chance).
        advantage: max over thresholds of TPR - FPR (Yeom et al.'s membership advantage).
        tpr_at_low_fpr: the highest TPR with FPR <= ``low_fpr``.
        low_fpr: the FPR that ``tpr_at_low_fpr`` is read at.
        members: number of member records scored.
        nonmembers: number of non-member records scored.
    """

    auc: float
    advantage: float
    tpr_at_low_fpr: float
    low_fpr: float
    members: int
    nonmembers: int

    def as_dict(self) -> dict[str, float | int]:
        """The fields as a JSON-ready dict."""
        return {"auc": self.auc, "advantage": self.advantage,
                "tpr_at_low_fpr": self.tpr_at_low_fpr, "low_fpr": self.low_fpr,
                "members": self.members, "nonmembers": self.nonmembers}


def _vector(name: str, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{name}: not numbers ({exc})") from exc
    if a.ndim != 1:
        raise ShapeMismatchError(f"{name}: expected a 1-d array of scores, got shape {a.shape}")
    if a.size == 0:
        raise ValidationError(f"{name}: empty (an attack needs members and non-members)")
    if not np.all(np.isfinite(a)):
        raise NonFiniteError(f"{name}: holds NaN or Inf")
    return a


def roc_auc(member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike) -> float:
    """Area under the ROC curve of "score is higher for members" (Mann-Whitney U / (m n)).

    Ties count one half, so identical score distributions give 0.5 in expectation.

    Args:
        member_scores: 1-d scores of the training records (higher = "member").
        nonmember_scores: 1-d scores of held-out records.

    Returns:
        AUC in [0, 1].

    Raises:
        ShapeMismatchError: an input is not 1-d.
        ValidationError: an input is empty or not numeric.
        NonFiniteError: an input holds NaN or Inf.
    """
    m = _vector("member_scores", member_scores)
    n = _vector("nonmember_scores", nonmember_scores)
    both = np.concatenate([m, n])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size, dtype=np.float64)
    sorted_vals = both[order]
    # average ranks over ties (1-based)
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], both.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[: m.size].sum() - m.size * (m.size + 1) / 2.0
    return float(u / (m.size * n.size))


def score_attack(
    member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike, *, low_fpr: float = 0.01
) -> AttackResult:
    """AUC, membership advantage and TPR at ``low_fpr`` of one attack's scores.

    Args:
        member_scores: 1-d scores of the training records (higher = "member").
        nonmember_scores: 1-d scores of held-out records.
        low_fpr: the false-positive rate to read the TPR at, in (0, 1).

    Raises:
        ShapeMismatchError, ValidationError, NonFiniteError: bad input (see :func:`roc_auc`).
    """
    if not 0.0 < low_fpr < 1.0:
        raise ValidationError(f"low_fpr must be in (0, 1), got {low_fpr}")
    m = _vector("member_scores", member_scores)
    n = _vector("nonmember_scores", nonmember_scores)
    thresholds = np.unique(np.concatenate([m, n]))
    # predict "member" when score >= t; sweep every distinct score (and none: t = +inf)
    ms, ns = np.sort(m), np.sort(n)
    tpr = 1.0 - np.searchsorted(ms, thresholds, side="left") / m.size
    fpr = 1.0 - np.searchsorted(ns, thresholds, side="left") / n.size
    tpr, fpr = np.r_[tpr, 0.0], np.r_[fpr, 0.0]
    ok = fpr <= low_fpr
    return AttackResult(
        auc=roc_auc(m, n),
        advantage=float(np.max(tpr - fpr)),
        tpr_at_low_fpr=float(tpr[ok].max()),
        low_fpr=float(low_fpr),
        members=int(m.size),
        nonmembers=int(n.size),
    )


def loss_threshold_attack(
    member_losses: npt.ArrayLike, nonmember_losses: npt.ArrayLike, *, low_fpr: float = 0.01
) -> AttackResult:
    """Yeom et al.'s loss-threshold attack: lower loss = member.

    Args:
        member_losses: per-record losses of the model on its training records.
        nonmember_losses: per-record losses on held-out records of the same distribution.
        low_fpr: see :func:`score_attack`.

    Raises:
        ShapeMismatchError, ValidationError, NonFiniteError: bad input.
    """
    m = _vector("member_losses", member_losses)
    n = _vector("nonmember_losses", nonmember_losses)
    return score_attack(-m, -n, low_fpr=low_fpr)


def modified_entropy(probs: npt.ArrayLike, labels: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Song & Mittal's modified prediction entropy per record (lower = more member-like).

    Args:
        probs: (records, classes) predicted probabilities, each row summing to 1.
        labels: (records,) integer true labels in [0, classes).

    Returns:
        (records,) Mentr values, >= 0.

    Raises:
        ShapeMismatchError: shapes do not match.
        ValidationError: empty input, labels out of range, probabilities outside [0, 1] or
            rows not summing to 1 (logits passed by mistake).
        NonFiniteError: NaN or Inf.
    """
    try:
        p = np.asarray(probs, dtype=np.float64)
        y = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"probs/labels: not numbers ({exc})") from exc
    if p.ndim != 2 or y.ndim != 1 or p.shape[0] != y.shape[0]:
        raise ShapeMismatchError(
            f"expected probs (records, classes) and labels (records,), got {p.shape} and "
            f"{y.shape}"
        )
    if p.shape[0] == 0 or p.shape[1] < 2:
        raise ValidationError(f"probs: need >= 1 record and >= 2 classes, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise NonFiniteError("probs: holds NaN or Inf")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValidationError(f"labels: expected integers, got {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValidationError(f"labels: out of range [0, {p.shape[1]})")
    if p.min() < -1e-6 or p.max() > 1 + 1e-6 or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValidationError("probs: rows must be probabilities summing to 1 (softmax first)")
    p = np.clip(p, 0.0, 1.0)
    rows = np.arange(p.shape[0])
    py = p[rows, y]
    log_p = np.log(np.maximum(p, _LOG_FLOOR))
    log_1mp = np.log(np.maximum(1.0 - p, _LOG_FLOOR))
    true_term = -(1.0 - py) * log_p[rows, y]
    others = -p * log_1mp
    others[rows, y] = 0.0
    return np.asarray(true_term + others.sum(1), dtype=np.float64)


def entropy_attack(
    member_probs: npt.ArrayLike,
    member_labels: npt.ArrayLike,
    nonmember_probs: npt.ArrayLike,
    nonmember_labels: npt.ArrayLike,
    *,
    low_fpr: float = 0.01,
) -> AttackResult:
    """Song & Mittal's modified-entropy attack: lower Mentr = member.

    Args:
        member_probs: (records, classes) softmax outputs on training records.
        member_labels: their labels.
        nonmember_probs: softmax outputs on held-out records.
        nonmember_labels: their labels.
        low_fpr: see :func:`score_attack`.

    Raises:
        ShapeMismatchError, ValidationError, NonFiniteError: bad input
        (see :func:`modified_entropy`).
    """
    return score_attack(-modified_entropy(member_probs, member_labels),
                        -modified_entropy(nonmember_probs, nonmember_labels), low_fpr=low_fpr)


def dp_auc_bound(epsilon: float, delta: float = 0.0, *, points: int = 10_001) -> float:
    """The largest ROC AUC any membership test can reach against an (epsilon, delta)-DP release.

    Integrates the upper envelope of the DP hypothesis-testing region
    ``TPR <= min(1, e^eps FPR + delta, 1 - e^-eps (1 - delta - FPR))`` over FPR in [0, 1].

    Args:
        epsilon: >= 0 (``inf`` gives 1.0).
        delta: in [0, 1).
        points: integration grid size.

    Returns:
        The bound, in [0.5, 1]; 0.5 at epsilon = delta = 0.

    Raises:
        ValidationError: epsilon < 0 or NaN, delta outside [0, 1).
    """
    if math.isnan(epsilon) or epsilon < 0:
        raise ValidationError(f"epsilon must be >= 0, got {epsilon}")
    if not 0.0 <= delta < 1.0:
        raise ValidationError(f"delta must be in [0, 1), got {delta}")
    if math.isinf(epsilon) or epsilon > 700:
        return 1.0
    fpr = np.linspace(0.0, 1.0, points)
    e = math.exp(epsilon)
    tpr = np.minimum.reduce([
        np.ones_like(fpr),
        e * fpr + delta,
        1.0 - (1.0 - delta - fpr) / e,
    ])
    return float(np.trapezoid(tpr, fpr))
