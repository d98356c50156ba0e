"""The digits scenario's data without importing scikit-learn, checked against scikit-learn.

hierfl.sim.datasets reads the bundled digits file and splits it itself (0.7 s of start-up
saved); these tests fail if either step stops matching what scikit-learn does.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hierfl.sim.datasets import (
    digits_data,
    dirichlet_partition,
    load_digits_file,
    stratified_split,
)

sklearn_datasets = pytest.importorskip("sklearn.datasets")
model_selection = pytest.importorskip("sklearn.model_selection")


def test_digits_file_is_load_digits() -> None:
    data, target = load_digits_file()
    ref = sklearn_datasets.load_digits()
    assert data.dtype == ref.data.dtype and data.shape == (1797, 64)
    assert np.array_equal(data, ref.data)
    assert np.array_equal(target, ref.target)


@pytest.mark.parametrize(("n", "classes", "test_size", "state"), [
    (1797, 10, 0.25, 0), (1797, 10, 0.25, 7), (301, 3, 0.3, 1), (40, 4, 0.5, 3),
    (97, 7, 0.2, 11),
])
def test_stratified_split_is_train_test_split(n: int, classes: int, test_size: float,
                                              state: int) -> None:
    rng = np.random.default_rng(n + state)
    y = rng.integers(0, classes, size=n)
    y[:classes * 2] = np.repeat(np.arange(classes), 2)  # every class at least twice
    idx = np.arange(n)
    ref_train, ref_test = model_selection.train_test_split(
        idx, test_size=test_size, stratify=y, random_state=state)
    train, test = stratified_split(y, test_size=test_size, random_state=state)
    assert np.array_equal(train, ref_train)
    assert np.array_equal(test, ref_test)


def test_digits_partition_is_the_scikit_learn_one() -> None:
    ref = sklearn_datasets.load_digits()
    x = (ref.data / 16.0).astype(np.float32)
    y = ref.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = model_selection.train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=0)
    got = digits_data(20, 0)
    assert np.array_equal(got.x_test, x_te) and np.array_equal(got.y_test, y_te)
    parts = dirichlet_partition(y_tr, 20, 0.5, np.random.default_rng(0))
    assert len(got.parts) == len(parts) == 20
    for (gx, gy), i in zip(got.parts, parts, strict=True):
        assert np.array_equal(gx, x_tr[i]) and np.array_equal(gy, y_tr[i])


def test_too_few_per_class_is_refused() -> None:
    with pytest.raises(ValueError, match="too few"):
        stratified_split(np.array([0, 0, 1, 2, 2]), test_size=0.4, random_state=0)


def test_digits_data_does_not_import_sklearn() -> None:
    code = ("import sys; from hierfl.sim.datasets import digits_data; d = digits_data(20, 0); "
            "assert len(d.parts) == 20; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] == 'sklearn'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
