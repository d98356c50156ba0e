"""benchmarks/floor.py: the CPU floor of a round (what the scenario's own work costs)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

BENCH = "floor"


def test_measures_training_and_wire_per_round(bench: ModuleType) -> None:
    rec = bench.measure("digits-20", edges=3, rounds=2)
    assert rec["params"] == 4810 and rec["edges"] == 3
    assert len(rec["train_cpu_s_per_round_all"]) == 2
    assert all(x > 0 for x in rec["train_cpu_s_per_round_all"])
    assert rec["wire_cpu_s_per_round"] > 0
    # each edge's update is a signed frame of its 4810-value delta (raw float32 before zstd)
    assert 3 * 1000 < rec["uplink_bytes_per_round"] < 3 * (4810 * 4 + 2000)
    cores = rec["cores"]
    assert rec["train_floor_s"] == pytest.approx(rec["train_cpu_s_per_round"] / cores, abs=1e-4)
    assert rec["round_floor_s"] == pytest.approx(
        (rec["train_cpu_s_per_round"] + rec["wire_cpu_s_per_round"]) / cores, abs=1e-4)


def test_target_from_the_last_compare_summary(bench: ModuleType, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        {"bench": "config", "date": "x"},
        {"bench": "summary", "scenario": "digits-20",
         "systems": {"flower-sim": {"median_round_s": 0.5}}},
        "not json",
        {"bench": "summary", "scenario": "digits-20",  # a later run of the file wins
         "systems": {"flower-sim": {"median_round_s": 0.2}}},
    ]
    path = tmp_path / "compare.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    assert bench._flower_rounds(path) == {"digits-20": 0.2}
    assert bench.main(["--scenario", "digits-20", "--edges", "2", "--rounds", "1",
                       "--compare", str(path)]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["target_round_s"] == pytest.approx(0.1)
    assert rec["floor_over_target"] == pytest.approx(rec["round_floor_s"] / 0.1, abs=1e-3)
