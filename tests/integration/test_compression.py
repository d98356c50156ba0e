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


async def test_shuffle_is_lossless_and_smaller_end_to_end(
    mqtt_broker, kafka_broker, tmp_path, unique_id
):
    """Byte-shuffled updates and model deltas: what raw learns, round by round, in fewer
    bytes on the wide (1.1 M-parameter) model (real brokers; whole frames as the observer saw
    them). On the narrow 4,810-parameter model shuffling gains nothing (docs/compression.md)."""

    async def run(name: str, codec: str) -> dict[str, Any]:
        cfg = SimConfig(
            scenario="digits", fogs=2, edges=4, rounds=3, k1=2, mode="inprocess", wide=True,
            mqtt_url=mqtt_broker.url, kafka_bootstrap=kafka_broker.bootstrap,
            out=tmp_path / name, federation=f"{unique_id}{name}", live=False,
            codec=codec, model_codec=codec,
        )
        return await run_sim_async(cfg)

    raw = await run("r", "raw")
    shuffled = await run("s", "shuffle")
    for report in (raw, shuffled):
        assert [r["accepted"] for r in report["rounds"]] == [4] * 3
        assert report["totals"]["rejected"] == {}
    # lossless: the same models, so the same predictions (one test sample of slack for the
    # order in which a fog sums its updates)
    for a, b in zip(raw["rounds"], shuffled["rounds"], strict=True):
        assert abs(a["accuracy"] - b["accuracy"]) <= 1 / 360 + 1e-9
    assert shuffled["totals"]["edge_fog_bytes"] < 0.95 * raw["totals"]["edge_fog_bytes"]
    assert shuffled["totals"]["cloud_edge_bytes"] < 0.97 * raw["totals"]["cloud_edge_bytes"]
