"""A small population federation (hierfl.sim.population) over real brokers: 50 lightweight
edges, each with its own MQTT session and signing key, hosted by one process per fog (2 fogs),
complete global rounds; the figures the scale benchmark reports are filled in."""

from __future__ import annotations

import numpy as np
import pytest

from hierfl.edge.vector import VectorModel
from hierfl.sim.population import PARAMS, PopulationTask, run_population

pytestmark = pytest.mark.integration


def test_population_task_learns():
    task = PopulationTask(index=3, region=1)
    model = task.build_model()
    assert isinstance(model, VectorModel) and model.weights.size == PARAMS
    first = task.train(model, 1).metrics["train_loss"]
    later = task.train(model, 20).metrics["train_loss"]
    assert later < first and np.isfinite(model.weights).all()


def test_fifty_edges_on_two_fogs_complete_rounds(tmp_path):
    result = run_population(50, 2, 1, tmp_path / "pop", timeout_s=120)
    assert result["edges"] == 50 and result["fogs"] == 2
    assert len(result["round_s"]) == 1 and result["round_s"][0] > 0
    rss = result["peak_rss_mb"]
    assert rss["mosquitto"] > 0 and rss["cloud"] > 0 and rss["fog_max"] > 0
    assert rss["population_total"] > 0
    # every edge's update reached its fog: a fog round needs all of its edges (min_updates)
    logs = (tmp_path / "pop" / "logs").glob("*.log")
    assert not any("Traceback" in p.read_text() for p in logs)
