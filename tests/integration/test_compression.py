"""Compressed federation end to end: top-k + int8 with error feedback over real brokers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hierfl.sim.runner import SimConfig, run_sim_async

pytestmark = pytest.mark.integration

ROUNDS = 6


async def _federate(mqtt_broker: Any, kafka_broker: Any, out: Path, fed: str, codec: str
                    ) -> dict[str, Any]:
    cfg = SimConfig(
        scenario="digits", fogs=2, edges=6, rounds=ROUNDS, k1=2, mode="inprocess",
        mqtt_url=mqtt_broker.url, kafka_bootstrap=kafka_broker.bootstrap, out=out,
        federation=fed, live=False, lr=0.2, codec=codec, error_feedback=True,
    )
    return await run_sim_async(cfg)


async def test_topk_int8_with_error_feedback_converges_close_to_raw(
    mqtt_broker, kafka_broker, tmp_path, unique_id
):
    # Execute: the same federation, float32 updates and 5% top-k + int8 with error feedback
    raw = await _federate(mqtt_broker, kafka_broker, tmp_path / "raw", f"{unique_id}r", "raw")
    small = await _federate(mqtt_broker, kafka_broker, tmp_path / "topk", f"{unique_id}c",
                            "topk+int8:fraction=0.05")
    # Assert: every edge's update arrived and was accepted, every round
    for report in (raw, small):
        assert [r["accepted"] for r in report["rounds"]] == [6] * ROUNDS
        assert report["totals"]["rejected"] == {}
    # ... at a fraction of the bytes (measured on the broker, whole frames) ...
    per_update = {name: rep["totals"]["edge_fog_bytes"] / rep["totals"]["updates"]
                  for name, rep in (("raw", raw), ("topk", small))}
    assert per_update["topk"] * 10 < per_update["raw"]
    # ... and it learns: well above chance (0.1), close to the float32 run
    assert small["final_accuracy"] > 0.75
    assert small["final_accuracy"] > raw["final_accuracy"] - 0.08
