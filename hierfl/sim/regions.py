"""Per-region metrics of ``hierfl sim`` (docs/learning.md): how well the model each region's
edges use does on data like that region's, so that fairness across regions is visible.

A region is a fog and its edges. Its held-out data is the scenario's test set (never trained
on), weighted to the region:

* ``sensors``: each district has its own 200 test readings; a region's weight is the share of
  its edges in each district (one district per fog in the default mapping: exactly that
  district's readings).
* ``digits``: the test set reweighted to the region's label mix, each test sample of class
  ``c`` weighing ``p_region(c) / p_test(c)`` (``p_region`` from the labels its edges hold),
  i.e. the expected accuracy and loss on a test sample drawn like the region's data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["RegionEval", "lazy_region_evaluator", "plot_regions", "region_weights", "summarise"]

#: ``weights -> {fog: (accuracy, loss)}``
RegionEval = Callable[[np.ndarray], dict[str, tuple[float, float]]]


def region_weights(scenario: str, topology: dict[str, list[int]], parts: list[Any],
                   y_test: np.ndarray, edges: int) -> dict[str, np.ndarray]:
    """Each region's weights over the test samples (summing to 1).

    Args:
        scenario: ``digits`` or ``sensors``.
        topology: fog id -> indices of its edges.
        parts: every edge's ``(x, y)`` training partition.
        y_test: the test labels.
        edges: number of edges (sensors: for the district of an edge).
    """
    n = len(y_test)
    out: dict[str, np.ndarray] = {}
    if scenario == "sensors":
        districts = len(topology)
        per_fog = -(-edges // districts)
        per_district = n // districts
        for fog, idx in topology.items():
            w = np.zeros(n)
            for i in idx:
                d = i // per_fog
                w[d * per_district:(d + 1) * per_district] += 1.0
            out[fog] = w / w.sum()
        return out
    classes = int(max(y_test.max(), *(int(p[1].max()) for p in parts))) + 1
    p_test = np.bincount(y_test, minlength=classes) / n
    for fog, idx in topology.items():
        labels = np.concatenate([parts[i][1] for i in idx])
        p_region = np.bincount(labels, minlength=classes) / len(labels)
        ratio = np.divide(p_region, p_test, out=np.zeros(classes), where=p_test > 0)
        w = ratio[y_test]
        out[fog] = w / w.sum()
    return out


def _build(cfg: Any) -> RegionEval:
    from hierfl.sim.datasets import scenario_data  # noqa: PLC0415
    from hierfl.sim.npeval import per_sample, sim_mlp  # noqa: PLC0415

    data = scenario_data(cfg.scenario, cfg.edges, cfg.fogs, cfg.seed)
    weights = region_weights(cfg.scenario, cfg.topology(), data.parts, data.y_test, cfg.edges)
    mlp = sim_mlp(cfg.out / "initial.npz")
    if mlp is not None:  # numpy (hierfl.sim.npeval): the sim's process never imports torch

        def run_np(vec: np.ndarray) -> dict[str, tuple[float, float]]:
            right, losses = per_sample(mlp.logits(vec, data.x_test), data.y_test)
            return {fog: (float(right @ w), float(losses @ w)) for fog, w in weights.items()}

        return run_np
    import torch  # noqa: PLC0415

    from hierfl.model.torch_adapter import vector_to_model  # noqa: PLC0415
    from hierfl.sim.scenarios import scenario_model  # noqa: PLC0415

    model = scenario_model(cfg.scenario, wide=cfg.wide)
    x = torch.from_numpy(data.x_test)
    y = torch.from_numpy(data.y_test)

    def run(vec: np.ndarray) -> dict[str, tuple[float, float]]:
        vector_to_model(model, vec)
        model.eval()
        with torch.no_grad():
            out = model(x)
            losses = torch.nn.functional.cross_entropy(out, y, reduction="none").numpy()
            right = (out.argmax(1) == y).numpy().astype(np.float64)
        return {fog: (float(right @ w), float(losses @ w)) for fog, w in weights.items()}

    return run


def lazy_region_evaluator(cfg: Any, lock: threading.Lock) -> RegionEval:
    """The region evaluator of ``cfg``'s scenario, built on first use under ``lock``."""
    built: list[RegionEval] = []

    def run(vec: np.ndarray) -> dict[str, tuple[float, float]]:
        with lock:
            if not built:
                built.append(_build(cfg))
        return built[0](vec)

    return run


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The report's ``regions`` section from the rounds' per-region records: each region's
    final accuracy and loss, and the spread between the best and the worst region."""
    last = next((r.get("regions") for r in reversed(rounds) if r.get("regions")), None)
    if not last:
        return None
    accs = {f: m["accuracy"] for f, m in last.items()}
    return {
        "final": last,
        "worst_accuracy": min(accs.values()),
        "best_accuracy": max(accs.values()),
        "spread": max(accs.values()) - min(accs.values()),
        "worst_region": min(accs, key=lambda f: accs[f]),
        "held_out": "the test set weighted to each region (docs/learning.md)",
    }


def plot_regions(ax: Any, records: list[Any]) -> None:
    """Each region's accuracy per round, dashed, on the accuracy axes of report.png."""
    fogs = sorted({f for r in records for f in getattr(r, "regions", {})})
    for fog in fogs:
        pts = [(r.round, r.regions[fog]["accuracy"]) for r in records if fog in r.regions]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="--", linewidth=1,
                alpha=0.7, label=f"{fog} (region)")
    if fogs:
        ax.legend(fontsize="x-small", loc="lower right")
