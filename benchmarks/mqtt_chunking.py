"""Cost of chunking a frame over an MQTT broker's packet limit (AWS IoT Core: 128 KB).

Publishes the same incompressible frame, edge -> subscriber, through loopback mosquitto:
whole on a broker without a small limit, and as chunks on one with ``max_packet_size 131072``.
Prints one JSON line per case: median and p90 publish-to-delivery time, chunks per frame;
and one for the receiver's reassembly CPU cost without a broker.

Usage::

    .venv/bin/python benchmarks/mqtt_chunking.py [--mb 1.2] [--reps 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from hierfl.config import MqttSettings
from hierfl.sim.brokers import MqttBroker
from hierfl.transport.mqtt import MqttTransport
from hierfl.wire.chunking import CHUNK_HEADER_SIZE, ChunkCollector, split_frame

AWS_LIMIT = 131_072


async def _round_trips(url: str, limit: int | None, data: bytes, reps: int) -> dict[str, object]:
    s = MqttSettings(url=url, max_packet_bytes=limit)
    times = []
    async with (
        MqttTransport(s, client_id="bench-sub") as sub,
        MqttTransport(s, client_id="bench-pub") as pub,
    ):
        await sub.subscribe("bench/update/+")
        inbound = sub.messages()
        for _ in range(reps):
            t0 = time.perf_counter()
            await pub.publish("bench/update/e", data)
            got = await anext(inbound)
            times.append(time.perf_counter() - t0)
            assert got.payload == data
        chunks = pub.chunk_stats["chunks_sent"] // reps if limit else 1
    times.sort()
    return {
        "case": f"publish+deliver, max_packet_bytes={limit}",
        "frame_bytes": len(data),
        "chunks_per_frame": chunks,
        "median_ms": round(1000 * statistics.median(times), 2),
        "p90_ms": round(1000 * times[int(0.9 * (len(times) - 1))], 2),
        "reps": reps,
    }


def _reassembly_cost(data: bytes, reps: int) -> dict[str, object]:
    frames = [split_frame(data, chunk_bytes=AWS_LIMIT - 100) for _ in range(reps)]
    c = ChunkCollector(max_frame_bytes=len(data))
    t0 = time.perf_counter()
    for records in frames:
        for r in reversed(records):  # the last chunk first
            done = c.feed("bench/update/e", r)
        assert done is not None
        assert done.frame == data
    dt = (time.perf_counter() - t0) / reps
    return {
        "case": "ChunkCollector.feed (CRC + join), no broker",
        "frame_bytes": len(data),
        "chunks_per_frame": len(frames[0]),
        "ms_per_frame": round(1000 * dt, 3),
        "mb_per_s": round(len(data) / dt / 1e6, 1),
        "chunk_header_bytes": CHUNK_HEADER_SIZE,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=1.2, help="frame size in MB (incompressible)")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    data = os.urandom(int(args.mb * 1e6))
    with MqttBroker(prefer="mosquitto") as big:
        print(json.dumps(asyncio.run(_round_trips(big.url, None, data, args.reps))))
    with MqttBroker(prefer="mosquitto", max_packet_bytes=AWS_LIMIT) as small:
        print(json.dumps(asyncio.run(_round_trips(small.url, AWS_LIMIT, data, args.reps))))
    print(json.dumps(_reassembly_cost(data, args.reps)))


if __name__ == "__main__":
    main()
