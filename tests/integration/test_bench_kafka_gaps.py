"""benchmarks/kafka_gaps.py on the real broker: many producers on one partition, one reader
following the tail. hierfl's reader delivers every frame; the plain reader's figures are
consistent with a re-read of the log (whether Tansu races in a given run is chance: the
deterministic race is in tests/unit/transport/test_kafka_gaps.py)."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

BENCH = "kafka_gaps"


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
