"""The built-in scenarios' data, without torch: what ``hierfl sim``'s own process computes
(scikit-learn for ``digits``) and writes for the edges, and reads back to evaluate.

:mod:`hierfl.sim.scenarios` re-exports all of it beside the models and tasks (torch); this
module is split out so that the sim's process, which writes the data file and evaluates the
global models (:mod:`hierfl.sim.npeval`), never imports torch (about 2 s of CPU at start-up).
See :mod:`hierfl.sim.scenarios` for the scenarios themselves and the data files.
"""

from __future__ import annotations

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
    "preload",
    "scenario_data",
    "sensors_data",
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
    """The digits-20 data and partition (docs/benchmarks.md), for ``n_clients`` edges."""
    from sklearn.datasets import load_digits  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    idx = dirichlet_partition(y_tr, n_clients, 0.5, np.random.default_rng(seed))
    return Dataset([(x_tr[i], y_tr[i]) for i in idx], x_te, y_te)


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
