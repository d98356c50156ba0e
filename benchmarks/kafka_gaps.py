"""Offset gaps on a Kafka-compatible broker: does a live reader ever skip a record?

Several producers write to one partition at once, each record acknowledged before its next
(as hierfl's fogs send their chunks), while one reader follows the log's tail. Offsets in a
partition without compaction or transactions are contiguous, so every record is expected at
``previous + 1``. Two readers are measured on the same run:

- ``aiokafka``: a plain ``AIOKafkaConsumer`` (``getmany``): ``live_gaps`` counts the records
  it went past (an offset arrived before its predecessor) and ``lost_live`` the records it
  never delivered although a re-read of the log from its start finds them
  (``missing_from_log``: produced, acknowledged and not in the log at all);
- ``hierfl``: :class:`hierfl.transport.kafka.KafkaConsumerTransport` reading the same kind of
  traffic as chunked frames (``--chunks`` chunks of ``--chunk-bytes`` bytes per frame):
  ``frames_lost`` (sent, acknowledged, never delivered whole), ``chunk_errors`` (a frame
  refused because a chunk was missing) and its ``gaps_refetched`` / ``gaps_skipped``.

By default the broker is Tansu (memory engine), as ``hierfl sim`` starts it; ``--bootstrap``
points both readers at another broker. Nothing is asserted: the output is one JSON line
per reader.

Usage::

    .venv/bin/python benchmarks/kafka_gaps.py                       # 16 producers x 300
    .venv/bin/python benchmarks/kafka_gaps.py --producers 8 --records 500 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from hierfl.config import KafkaSettings
from hierfl.transport import kafka as kafka_transport
from hierfl.transport.kafka import (
    KafkaConsumerTransport,
    KafkaProducerTransport,
    ensure_topics,
)


async def _raw(bootstrap: str, topic: str, producers: int, records: int,
               size: int, tail_wait: float) -> dict[str, Any]:
    """Plain aiokafka on both sides: records past which the live reader jumped."""
    await ensure_topics(KafkaSettings(bootstrap=bootstrap), [topic])
    tp = TopicPartition(topic, 0)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                              auto_offset_reset="earliest", fetch_max_wait_ms=10,
                              max_partition_fetch_bytes=max(size + 65536, 1 << 20))
    await reader.start()
    try:
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        live: set[bytes] = set()
        gaps = 0
        total = producers * records

        async def follow() -> None:
            nonlocal gaps
            last = -1
            while len(live) < total:
                batch = await reader.getmany(timeout_ms=1000)
                for recs in batch.values():
                    for r in recs:
                        if r.offset != last + 1:
                            gaps += 1
                        last = r.offset
                        live.add(r.value[:16])

        async def produce(i: int) -> None:
            p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                                 max_request_size=size + 4096)
            await p.start()
            try:
                for k in range(records):
                    value = f"p{i:03d}n{k:07d}".encode().ljust(16, b"_")
                    await p.send_and_wait(topic, value + bytes(size - 16),
                                          key=f"p{i}".encode())
            finally:
                await p.stop()

        started = time.monotonic()
        reading = asyncio.create_task(follow())
        await asyncio.gather(*(produce(i) for i in range(producers)))
        # records it skipped never come: the count below says how many
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reading, tail_wait)
        secs = time.monotonic() - started
        await reader.seek_to_beginning(tp)
        end = (await reader.end_offsets([tp]))[tp]
        logged: set[bytes] = set()
        seen = 0
        while seen < end:
            batch = await reader.getmany(timeout_ms=2000)
            if not batch:
                break
            for recs in batch.values():
                seen += len(recs)
                logged.update(r.value[:16] for r in recs)
    finally:
        await reader.stop()
    return {"reader": "aiokafka", "producers": producers, "records_each": records,
            "size": size, "secs": round(secs, 2), "end_offset": end,
            "live_received": len(live), "live_gaps": gaps, "lost_live": len(logged - live),
            "missing_from_log": total - len(logged)}


async def _hierfl(bootstrap: str, topic: str, producers: int, frames: int, chunks: int,
                  size: int, tail_wait: float) -> dict[str, Any]:
    """hierfl's transports: chunked frames from several producers, one reader."""
    ks = KafkaSettings(bootstrap=bootstrap, chunk_bytes=size, fetch_max_wait_ms=10)
    await ensure_topics(ks, [topic])
    total = producers * frames
    got: set[bytes] = set()
    chunk_errors = 0
    async with KafkaConsumerTransport(ks, topic, client_id="gaps-reader",
                                      start="earliest") as reader:
        async def follow() -> None:
            nonlocal chunk_errors
            async for inbound in reader.messages():
                if inbound.error is not None:
                    chunk_errors += 1
                    continue
                got.add(inbound.payload[:16])
                if len(got) == total:
                    return

        async def produce(i: int) -> None:
            async with KafkaProducerTransport(ks, client_id=f"gaps-p{i}") as p:
                for k in range(frames):
                    head = f"p{i:03d}n{k:07d}".encode().ljust(16, b"_")
                    # a frame of exactly ``chunks`` chunks: the chunk header is 40 bytes
                    body = bytes(chunks * (size - 40) - 16)
                    await p.send_frame(topic, key=f"p{i}".encode(), frame=head + body)

        started = time.monotonic()
        reading = asyncio.create_task(follow())
        await asyncio.gather(*(produce(i) for i in range(producers)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reading, tail_wait)  # frames lost never come
        secs = time.monotonic() - started
        return {"reader": "hierfl", "producers": producers, "frames_each": frames,
                "chunks_per_frame": chunks, "chunk_bytes": size, "secs": round(secs, 2),
                "frames_delivered": len(got), "frames_lost": total - len(got),
                "chunk_errors": chunk_errors, "gaps_refetched": reader.gaps_refetched,
                "gaps_skipped": reader.gaps_skipped, "gap_wait_s": kafka_transport.GAP_WAIT_S}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--producers", type=int, default=16)
    ap.add_argument("--records", type=int, default=300,
                    help="records per producer (aiokafka reader); frames per producer "
                         "(hierfl reader) is this divided by --chunks")
    ap.add_argument("--size", type=int, default=100, help="record (chunk) size, bytes")
    ap.add_argument("--chunks", type=int, default=3, help="chunks per frame (hierfl reader)")
    ap.add_argument("--chunk-bytes", type=int, default=4096,
                    help="chunk record size of the hierfl reader's frames (at least 4096)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--gap-wait", type=float, default=None,
                    help="seconds the hierfl reader refetches a gap (default: "
                         "hierfl.transport.kafka.GAP_WAIT_S; 0: pass over it at once, as "
                         "before the refetch existed)")
    ap.add_argument("--tail-wait", type=float, default=10.0,
                    help="seconds each reader may still wait for records once every "
                         "producer is done (what it has not delivered by then is lost)")
    ap.add_argument("--bootstrap", help="an already running broker (default: start Tansu)")
    args = ap.parse_args(argv)
    if args.size < 100:
        ap.error("--size must be at least 100 bytes")
    if args.chunk_bytes < 4096:
        ap.error("--chunk-bytes must be at least 4096 (kafka.chunk_bytes)")
    if args.gap_wait is not None:
        kafka_transport.GAP_WAIT_S = args.gap_wait
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from hierfl.sim.brokers import KafkaBroker  # noqa: PLC0415

        broker = KafkaBroker()
        broker.start()
        bootstrap = broker.bootstrap
    try:
        for n in range(args.repeats):
            for out in (
                asyncio.run(_raw(bootstrap, f"gaps-raw-{n}-{time.time_ns()}", args.producers,
                                 args.records, args.size, args.tail_wait)),
                asyncio.run(_hierfl(bootstrap, f"gaps-hierfl-{n}-{time.time_ns()}",
                                    args.producers, max(1, args.records // args.chunks),
                                    args.chunks, args.chunk_bytes, args.tail_wait)),
            ):
                out["broker"] = "tansu" if broker is not None else bootstrap
                print(json.dumps(out), flush=True)
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
