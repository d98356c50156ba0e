"""The built-in scenarios' data, without torch: what ``hierfl sim``'s own process computes
(scikit-learn's bundled file for ``digits``) and writes for the edges, and reads back to evaluate.

:mod:`hierfl.sim.scenarios` re-exports all of it beside the models and tasks (torch); this
module is split out so that the sim's process, which writes the data file and evaluates the
global models (:mod:`hierfl.sim.npeval`), never imports torch (about 2 s of CPU at start-up).
See :mod:`hierfl.sim.scenarios` for the scenarios themselves and the data files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Dataset",
    "digits_data",
    "dirichlet_partition",
    "load_data",
    "load_digits_file",
    "preload",
    "scenario_data",
    "sensors_data",
    "stratified_split",
    "write_data",
]


@dataclass(frozen=True)
class Dataset:
    """A scenario's train partitions (one per edge) and its held-out test set."""

    parts: list[tuple[np.ndarray, np.ndarray]]
    x_test: np.ndarray
    y_test: np.ndarray


def dirichlet_partition(
    y: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 10
) -> list[np.ndarray]:
    """Per-class Dirichlet split of sample indices; redrawn until every client has ``min_size``.

    Args:
        y: labels.
        n_clients: number of partitions.
        alpha: Dirichlet concentration (smaller = more skewed).
        rng: the generator (redraws continue from it).
        min_size: smallest partition accepted.

    Returns:
        One index array per client.
    """
    classes = np.unique(y)
    for _ in range(10_000):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in classes:
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.array(sorted(p), dtype=np.int64) for p in parts]
    raise RuntimeError("could not draw a partition with the minimum size")


def write_data(path: str | Path, data: Dataset) -> None:
    """Write ``data`` as an .npz of plain arrays: ``x_test``, ``y_test``, ``x_<i>``, ``y_<i>``."""
    arrays = {"x_test": data.x_test, "y_test": data.y_test}
    for i, (x, y) in enumerate(data.parts):
        arrays[f"x_{i}"], arrays[f"y_{i}"] = x, y
    np.savez(path, **arrays)  # type: ignore[arg-type]


@lru_cache(maxsize=4)
def load_data(path: str) -> Dataset:
    """The :class:`Dataset` :func:`write_data` wrote (read with ``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    n = sum(1 for k in arrays if k.startswith("x_") and k != "x_test")
    return Dataset([(arrays[f"x_{i}"], arrays[f"y_{i}"]) for i in range(n)],
                   arrays["x_test"], arrays["y_test"])


def preload(options: dict[str, Any]) -> None:
    """Load the data file a task's ``options`` name (the zygote calls this before forking)."""
    if options.get("data"):
        load_data(str(options["data"]))


@lru_cache(maxsize=4)
def digits_data(n_clients: int = 20, seed: int = 0) -> Dataset:
    """The digits-20 data and partition (docs/benchmarks.md), for ``n_clients`` edges.

    scikit-learn's bundled digits, split 75/25 stratified as
    ``train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)`` splits them, then
    Dirichlet(0.5) over the edges. Neither step imports scikit-learn (0.7 s of start-up here):
    the file is read where scikit-learn installed it (:func:`load_digits_file`), and
    :func:`stratified_split` is that split's algorithm, index for index
    (tests/unit/sim/test_sim_datasets.py compares both with scikit-learn's own).
    """
    data, target = load_digits_file()
    x = (data / 16.0).astype(np.float32)
    y = target.astype(np.int64)
    train, test = stratified_split(y, test_size=0.25, random_state=0)
    x_tr, x_te, y_tr, y_te = x[train], x[test], y[train], y[test]
    idx = dirichlet_partition(y_tr, n_clients, 0.5, np.random.default_rng(seed))
    return Dataset([(x_tr[i], y_tr[i]) for i in idx], x_te, y_te)


def load_digits_file() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as ``(data, target)``: what ``load_digits(return_X_y=True)``
    returns (float64 pixels 0-16, int targets), read from the package's data file without
    importing scikit-learn; scikit-learn's own loader when the file is not where it was."""
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the digits scenario needs scikit-learn (pip install 'hierfl[sim]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # another layout: scikit-learn's loader (slower import, same data)
        from sklearn.datasets import load_digits  # noqa: PLC0415

        data, target = load_digits(return_X_y=True)
        return np.asarray(data), np.asarray(target)
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def stratified_split(y: np.ndarray, *, test_size: float,
                     random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` indices: scikit-learn's ``train_test_split(..., stratify=y,
    random_state=random_state)`` (one ``StratifiedShuffleSplit``), the same draws from the
    same ``RandomState`` in the same order, so the same indices."""
    n = len(y)
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(classes) > min(n_train, n_test) or class_counts.min() < 2:
        raise ValueError("too few samples per class for a stratified split")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(random_state)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        perm = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(perm[: n_i[i]])
        test.extend(perm[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int,
                      rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's ``_approximate_mode`` (per-class draws of a stratified split; ties
    broken by ``rng``)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


_FEATURES = 12  # PM2.5, PM10, NO2, O3, CO, temp, humidity, wind, traffic, hour sin/cos, weekday


@lru_cache(maxsize=4)
def sensors_data(n_clients: int = 20, n_fogs: int = 4, seed: int = 0) -> Dataset:
    """Synthetic air-quality readings with per-district drift; one district per fog."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(_FEATURES, 3)).astype(np.float32)
    district_shift = rng.normal(scale=1.0, size=(n_fogs, _FEATURES)).astype(np.float32)
    district_bias = rng.normal(scale=0.8, size=(n_fogs, 3)).astype(np.float32)

    def draw(district: int, n: int, r: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = r.normal(size=(n, _FEATURES)).astype(np.float32) + district_shift[district]
        logits = x @ w + district_bias[district]
        y = np.argmax(logits + r.gumbel(size=logits.shape) * 0.5, axis=1).astype(np.int64)
        return x, y

    parts = []
    per_fog = -(-n_clients // n_fogs)
    for i in range(n_clients):
        r = np.random.default_rng(seed * 7919 + i + 1)
        parts.append(draw(i // per_fog, int(r.integers(40, 160)), r))
    tests = [draw(d, 200, np.random.default_rng(seed + 10_000 + d)) for d in range(n_fogs)]
    return Dataset(parts, np.concatenate([t[0] for t in tests]),
                   np.concatenate([t[1] for t in tests]))


def scenario_data(name: str, num_edges: int, num_fogs: int, seed: int) -> Dataset:
    """The data of a built-in scenario."""
    if name == "sensors":
        return sensors_data(num_edges, num_fogs, seed)
    return digits_data(num_edges, seed)
