"""The sim's straggler profile (hierfl.sim.stragglers) and async options (hierfl.sim.asyncfl):
parsing, which edges are slow, the modelled pass time, and the settings they produce."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from hierfl.edge.result import TrainResult
from hierfl.errors import ConfigError
from hierfl.sim.asyncfl import async_cloud, async_fog, async_task, check_async
from hierfl.sim.stragglers import TASK, SlowTask, StragglerProfile


class _Inner:
    def __init__(self) -> None:
        self.calls = 0
        self.extra = "inner attribute"

    def build_model(self) -> str:
        return "model"

    def train(self, model: Any, epochs: int) -> TrainResult:
        self.calls += 1
        return TrainResult(num_samples=7)


def test_parse_and_validate():
    p = StragglerProfile.parse("0.25:5", "0.1:3")
    assert (p.fraction, p.slowdown, p.base_s, p.skip_p, p.offline_s) == (0.25, 5, 0.5, 0.1, 3)
    assert StragglerProfile.parse("0.5:2:0.1", None).base_s == 0.1
    assert not StragglerProfile.parse(None, None).active
    for bad in (("0.25", None), ("x:5", None), ("1.5:5", None), ("0.2:0.5", None),
                (None, "2"), (None, "0.1:2:3")):
        with pytest.raises(ConfigError):
            StragglerProfile.parse(*bad)


def test_stragglers_are_spread_over_the_fogs():
    topo = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]
    slow = StragglerProfile(fraction=0.25, slowdown=5).stragglers(topo)
    assert slow == {0, 5, 10, 15, 1}  # a quarter of 20, round-robin over the fogs
    assert StragglerProfile(fraction=0.0).stragglers(topo) == set()


def test_slow_task_waits_the_modelled_time_and_delegates():
    waits: list[float] = []
    inner = _Inner()
    task = SlowTask(inner, slowdown=5.0, base_s=0.4, sleep=waits.append)
    assert task.build_model() == "model" and task.extra == "inner attribute"
    assert task.train("m", 1).num_samples == 7 and inner.calls == 1
    # max(took, 0.4) + 4 x 0.4: training took ~0, so the wait is about 2.0 s in all
    assert waits and 1.9 < waits[0] <= 2.0
    fast: list[float] = []
    SlowTask(_Inner(), slowdown=1.0, base_s=0.0, sleep=fast.append).train("m", 1)
    assert fast == []


def test_intermittent_edge_goes_offline_with_its_probability():
    waits: list[float] = []
    task = SlowTask(_Inner(), skip_p=1.0, offline_s=3.0, sleep=waits.append)
    task.train("m", 1)
    assert waits == [3.0] and task.offline == 1
    never = SlowTask(_Inner(), skip_p=0.0, offline_s=3.0, sleep=waits.append)
    never.train("m", 1)
    assert never.offline == 0


def _cfg(**kw: Any) -> SimpleNamespace:
    base = {"aggregation": "sync", "buffer_size": None, "max_staleness": 0, "cloud_buffer": 0,
            "stragglers": None, "intermittent": None, "fogs": 4, "seed": 0}
    return SimpleNamespace(**{**base, **kw})


def test_sim_options_map_to_settings():
    assert async_fog(_cfg(), 5) == {} and async_cloud(_cfg()) == {}  # sync: as before
    fog = async_fog(_cfg(aggregation="buffered", max_staleness=2), 5)
    assert fog == {"aggregation": "buffered", "buffer_size": 3, "max_staleness": 2}
    assert async_cloud(_cfg(aggregation="buffered", max_staleness=2)) == {"max_staleness": 2}
    assert async_cloud(_cfg(cloud_buffer=2))["buffer_size"] == 2
    plain = async_task(_cfg(), 0, "m:t", {"index": 0}, [[0, 1]])
    assert plain == {"task": "m:t", "task_options": {"index": 0}}
    wrapped = async_task(_cfg(stragglers="0.5:4"), 0, "m:t", {"index": 0}, [[0, 1]])
    assert wrapped["task"] == TASK and wrapped["task_options"]["inner"] == "m:t"
    assert wrapped["task_options"]["slowdown"] == 4.0
    for bad, why in (({"aggregation": "async"}, "aggregation"), ({"cloud_buffer": 9}, "cloud"),
                     ({"stragglers": "oops"}, "straggler"), ({"buffer_size": 0}, "buffer")):
        with pytest.raises(ValueError, match=why):
            check_async(_cfg(**bad))
