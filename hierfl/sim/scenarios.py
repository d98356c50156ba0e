"""Built-in tasks: the shared ``digits`` benchmark scenario and the ``sensors`` smart-city task.

``digits`` is the shared digits scenario (docs/benchmarks.md): scikit-learn's bundled digits
(offline), a stratified 75/25 split, a per-class Dirichlet(0.5) partition over the edges,
an MLP 64-64-10 (``wide``: 64-1024-1024-10), 2 local epochs of SGD lr 0.05, batch 16.

``sensors`` is synthetic: each fog is a city district whose air-quality sensors see their
own pollution regime (regional drift), and the task is to classify readings as
good / moderate / unhealthy. Districts differ in feature offsets and label mix, which is
what makes fog-level (regional) aggregation visible.

Data files. ``hierfl sim`` computes a scenario's data once and writes it with
:func:`write_data` (``<out>/data.npz``: plain arrays, no pickle); the tasks are given its path
as the task option ``data`` and read their partition from it (:func:`load_data`), so an edge
process needs neither scikit-learn nor the partitioning code, and the arrays are the very
bytes the sim computed. :func:`preload` loads the file in the sim's edge zygote
(:mod:`hierfl.sim.zygote`) before it forks, so that every edge shares one copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hierfl.edge.trainer import SupervisedTask

__all__ = [
    "Dataset",
    "digits_data",
    "digits_model",
    "digits_task",
    "dirichlet_partition",
    "evaluate",
    "load_data",
    "preload",
    "scenario_data",
    "scenario_model",
    "sensors_data",
    "sensors_model",
    "sensors_task",
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


def digits_model(wide: bool = False) -> torch.nn.Module:
    """MLP 64-64-10 (or 64-1024-1024-10 when ``wide``), seeded with ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    if wide:
        return torch.nn.Sequential(
            torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
            torch.nn.ReLU(), torch.nn.Linear(1024, 10),
        )
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def digits_task(
    *, edge_id: str, fog_id: str, index: int, num_edges: int = 20, wide: bool = False,
    seed: int = 0, lr: float = 0.05, batch_size: int = 16, prox_mu: float = 0.0,
    label_flip: bool = False, data: str | None = None, **_: Any,
) -> SupervisedTask:
    """The EdgeTask of edge number ``index`` in the digits scenario.

    ``data``: a file :func:`write_data` wrote (the sim's ``<out>/data.npz``); without it the
    data is computed here (scikit-learn).
    """
    dataset = load_data(str(data)) if data else digits_data(num_edges, seed)
    x, y = dataset.parts[index]
    if label_flip:
        y = 9 - y
    return SupervisedTask(
        lambda: digits_model(wide), torch.from_numpy(x), torch.from_numpy(y),
        batch_size=batch_size, lr=lr, seed=1000 + index, prox_mu=prox_mu,
    )


# --- sensors ----------------------------------------------------------------------------------

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


def sensors_model() -> torch.nn.Module:
    """A small MLP for 12 sensor features -> 3 air-quality classes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(_FEATURES, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 3))


def sensors_task(
    *, edge_id: str, fog_id: str, index: int, num_edges: int = 20, num_fogs: int = 4,
    seed: int = 0, lr: float = 0.05, batch_size: int = 16, prox_mu: float = 0.0,
    label_flip: bool = False, data: str | None = None, **_: Any,
) -> SupervisedTask:
    """The EdgeTask of sensor ``index`` in the sensors scenario (``data``: see digits_task)."""
    dataset = load_data(str(data)) if data else sensors_data(num_edges, num_fogs, seed)
    x, y = dataset.parts[index]
    if label_flip:
        y = 2 - y
    return SupervisedTask(sensors_model, torch.from_numpy(x), torch.from_numpy(y),
                          batch_size=batch_size, lr=lr, seed=1000 + index, prox_mu=prox_mu)


def scenario_model(name: str, *, wide: bool = False) -> torch.nn.Module:
    """The model of a built-in scenario."""
    return sensors_model() if name == "sensors" else digits_model(wide)


def scenario_data(name: str, num_edges: int, num_fogs: int, seed: int) -> Dataset:
    """The data of a built-in scenario."""
    if name == "sensors":
        return sensors_data(num_edges, num_fogs, seed)
    return digits_data(num_edges, seed)


def evaluate(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of ``model``."""
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x))
        loss = float(torch.nn.functional.cross_entropy(out, torch.from_numpy(y)))
        acc = float((out.argmax(1) == torch.from_numpy(y)).float().mean())
    return acc, loss
