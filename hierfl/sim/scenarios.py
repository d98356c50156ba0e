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

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hierfl.edge.trainer import SupervisedTask
from hierfl.sim.datasets import (
    _FEATURES,
    Dataset,
    digits_data,
    dirichlet_partition,
    load_data,
    preload,
    scenario_data,
    sensors_data,
    write_data,
)

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
    "write_initial_model",
]


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
    data is computed here.
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


def write_initial_model(path: str | Path, name: str, *, wide: bool = False) -> None:
    """Write the scenario's initial model (seeded, see :func:`digits_model`) as an ``.npz`` of
    its named float tensors, what ``hierfl cloud``'s ``initial_model`` reads."""
    from hierfl.model.flatten import unflatten  # noqa: PLC0415
    from hierfl.model.torch_adapter import model_layout, model_to_vector  # noqa: PLC0415

    m = scenario_model(name, wide=wide)
    np.savez(path, **unflatten(model_to_vector(m), model_layout(m)))  # type: ignore[arg-type]


def evaluate(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of ``model``."""
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x))
        loss = float(torch.nn.functional.cross_entropy(out, torch.from_numpy(y)))
        acc = float((out.argmax(1) == torch.from_numpy(y)).float().mean())
    return acc, loss
