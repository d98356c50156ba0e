"""benchmarks/inprocess_pool.py: a real in-process federation per pool size, each in a fresh
process with its pool replaced; one JSON line per run and a summary per size."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

BENCH = "inprocess_pool"


def test_runs_each_size_and_summarises(bench: ModuleType, capsys, tmp_path) -> None:
    out = tmp_path / "pool.jsonl"
    assert bench.main(["--sizes", "default,1", "--repeats", "1", "--rounds", "2",
                       "--append", str(out)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    runs = [x for x in lines if x["bench"] == "inprocess_pool"]
    assert [r["pool"] for r in runs] == ["default", "1"]
    for r in runs:
        assert r["rc"] == 0, r.get("error")
        assert r["scenario"] == "digits-20" and r["rounds"] == 2
        assert 0 < r["median_round_s"] < r["wall_s"] and 0 < r["final_acc"] <= 1
    summaries = {x["pool"]: x for x in lines if x["bench"] == "inprocess_pool_summary"}
    assert set(summaries) == {"default", "1"} and summaries["1"]["runs"] == 1
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines


def test_a_bad_size_is_refused(bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "0"])
