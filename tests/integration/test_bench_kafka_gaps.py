"""benchmarks/kafka_gaps.py on the real broker: many producers on one partition, one reader
following the tail. hierfl's reader delivers every frame; the plain reader's figures are
consistent with a re-read of the log (whether Tansu races in a given run is chance: the
deterministic race is in tests/unit/transport/test_kafka_gaps.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = ROOT / "benchmarks" / "kafka_gaps.py"
    spec = importlib.util.spec_from_file_location("bench_kafka_gaps", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_kafka_gaps"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_every_frame_reaches_hierfls_reader(bench: ModuleType, kafka_broker, capsys) -> None:
    assert bench.main(["--producers", "8", "--records", "60", "--tail-wait", "3",
                       "--bootstrap", kafka_broker.bootstrap]) == 0
    raw, ours = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert raw["reader"] == "aiokafka" and ours["reader"] == "hierfl"
    assert raw["end_offset"] == 8 * 60 and raw["missing_from_log"] == 0
    # what the plain reader missed is exactly what it jumped over
    assert raw["live_received"] + raw["lost_live"] == 8 * 60
    assert ours["frames_delivered"] == 8 * 20 and ours["frames_lost"] == 0
    assert ours["chunk_errors"] == 0 and ours["gaps_skipped"] == 0


def test_chunk_size_below_the_settings_floor_is_refused(bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--chunk-bytes", "1000"])
