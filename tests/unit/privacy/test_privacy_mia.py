"""Membership-inference attacks: AUC on known score distributions, the DP bound, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hierfl.errors import NonFiniteError, ShapeMismatchError, ValidationError
from hierfl.privacy.mia import (
    dp_auc_bound,
    entropy_attack,
    loss_threshold_attack,
    modified_entropy,
    roc_auc,
    score_attack,
)


def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    m = rng.integers(0, 5, size=37).astype(float)  # many ties
    n = rng.integers(0, 5, size=23).astype(float)
    pairs = (m[:, None] > n[None, :]).mean() + 0.5 * (m[:, None] == n[None, :]).mean()
    assert roc_auc(m, n) == pytest.approx(pairs)
    assert roc_auc([1.0, 2.0], [0.0]) == 1.0
    assert roc_auc([0.0], [1.0, 2.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5


def test_identical_distributions_give_auc_one_half() -> None:
    rng = np.random.default_rng(1)
    aucs = [loss_threshold_attack(rng.exponential(size=2000), rng.exponential(size=2000)).auc
            for _ in range(5)]
    assert np.mean(aucs) == pytest.approx(0.5, abs=0.015)
    r = loss_threshold_attack(rng.exponential(size=4000), rng.exponential(size=4000))
    assert r.advantage < 0.06
    assert r.tpr_at_low_fpr < 0.04


def test_planted_gap_gives_high_auc() -> None:
    rng = np.random.default_rng(2)
    members = rng.exponential(0.1, size=1000)  # training records: low loss
    nonmembers = rng.exponential(1.0, size=1000)
    r = loss_threshold_attack(members, nonmembers)
    # P(Exp(10) < Exp(1)) = 10 / 11
    assert r.auc == pytest.approx(10 / 11, abs=0.02)
    assert r.advantage > 0.6
    assert r.members == 1000 and r.nonmembers == 1000
    # shifted normals: AUC = Phi(d / sqrt(2))
    d = 1.0
    r2 = score_attack(rng.normal(d, 1, 5000), rng.normal(0, 1, 5000))
    assert r2.auc == pytest.approx(0.5 * (1 + math.erf(d / 2)), abs=0.01)


def test_tpr_at_low_fpr_reads_the_roc_curve() -> None:
    members = np.arange(100, 200, dtype=float)  # all above every non-member
    nonmembers = np.arange(0, 100, dtype=float)
    r = score_attack(members, nonmembers, low_fpr=0.01)
    assert r.auc == 1.0 and r.advantage == 1.0 and r.tpr_at_low_fpr == 1.0
    r = score_attack(nonmembers, members, low_fpr=0.01)
    assert r.auc == 0.0 and r.tpr_at_low_fpr == 0.0


def test_modified_entropy_orders_confident_correct_below_wrong() -> None:
    probs = np.array([[0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3], [0.01, 0.98, 0.01]])
    labels = np.array([0, 0, 0])
    me = modified_entropy(probs, labels)
    assert me[0] < me[1] < me[2]
    assert np.all(me >= 0)
    # closed form for the first row
    want = -(1 - 0.98) * np.log(0.98) - 2 * 0.01 * np.log(0.99)
    assert me[0] == pytest.approx(want)
    # a one-hot correct prediction has Mentr 0, no NaN from log(0)
    assert modified_entropy(np.array([[1.0, 0.0]]), np.array([0]))[0] == pytest.approx(0.0)


def test_entropy_attack_separates_confident_members() -> None:
    rng = np.random.default_rng(3)

    def probs(n: int, conf: float) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n)
        logits = rng.normal(size=(n, 10))
        logits[np.arange(n), labels] += conf
        p = np.exp(logits - logits.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True), labels

    pm, ym = probs(800, 6.0)
    pn, yn = probs(800, 1.0)
    assert entropy_attack(pm, ym, pn, yn).auc > 0.95
    pm2, ym2 = probs(3000, 2.0)
    pn2, yn2 = probs(3000, 2.0)
    assert entropy_attack(pm2, ym2, pn2, yn2).auc == pytest.approx(0.5, abs=0.03)


def test_dp_auc_bound() -> None:
    assert dp_auc_bound(0.0) == pytest.approx(0.5, abs=1e-6)
    assert dp_auc_bound(math.inf) == 1.0
    b1, b3, b8 = dp_auc_bound(1.0, 1e-5), dp_auc_bound(3.0, 1e-5), dp_auc_bound(8.0, 1e-5)
    assert 0.5 < b1 < b3 < b8 <= 1.0
    # delta = 0: the region's envelope meets at FPR = 1 / (1 + e^eps); AUC = 1 - 1 / (1 + e^eps)
    # integrated: 0.5 + (e^eps - 1) / (2 (e^eps + 1))
    e = math.exp(1.0)
    assert dp_auc_bound(1.0) == pytest.approx(0.5 + (e - 1) / (2 * (e + 1)), abs=1e-6)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (([], [1.0]), ValidationError),
        (([1.0], []), ValidationError),
        (([[1.0, 2.0]], [1.0]), ShapeMismatchError),
        (([1.0, float("nan")], [1.0]), NonFiniteError),
        (([1.0], [float("inf")]), NonFiniteError),
        ((["a"], [1.0]), ValidationError),
    ],
)
def test_bad_scores_raise_typed_errors(args: tuple, error: type[Exception]) -> None:
    with pytest.raises(error):
        loss_threshold_attack(*args)
    with pytest.raises(error):
        roc_auc(*args)


@pytest.mark.parametrize(
    ("probs", "labels", "error"),
    [
        (np.ones((3, 2)) / 2, np.array([0, 1]), ShapeMismatchError),
        (np.ones(4) / 4, np.array([0]), ShapeMismatchError),
        (np.array([[2.0, -1.0]]), np.array([0]), ValidationError),  # logits, not probabilities
        (np.array([[0.5, 0.5]]), np.array([2]), ValidationError),
        (np.array([[0.5, 0.5]]), np.array([0.0]), ValidationError),
        (np.array([[np.nan, 0.5]]), np.array([0]), NonFiniteError),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), ValidationError),
    ],
)
def test_bad_probabilities_raise_typed_errors(
    probs: np.ndarray, labels: np.ndarray, error: type[Exception]
) -> None:
    with pytest.raises(error):
        modified_entropy(probs, labels)


def test_bad_parameters_raise_typed_errors() -> None:
    with pytest.raises(ValidationError):
        score_attack([1.0], [0.0], low_fpr=0.0)
    with pytest.raises(ValidationError):
        dp_auc_bound(-1.0)
    with pytest.raises(ValidationError):
        dp_auc_bound(1.0, delta=1.0)
