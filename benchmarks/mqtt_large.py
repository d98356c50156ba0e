"""CPU per large MQTT message through :class:`hierfl.transport.mqtt.MqttTransport`, with and
without the zero-copy paho I/O (hierfl/transport/_paho_io.py); print JSON.

A publisher process sends ``--count`` payloads of ``--size`` bytes (QoS 1, each awaiting its
PUBACK, as the tiers do) to one subscriber process through a mosquitto (else amqtt) broker
on loopback; each side reports its own process CPU time per message (``time.process_time``:
what the message cost that process, whatever else the machine does). ``paho-as-is`` runs the
same with paho's own I/O (the class swap and the parser wrapper left out); the two modes
alternate ``--repeat`` times. One JSON line per run.

Usage: python benchmarks/mqtt_large.py [--size 4500000] [--count 20] [--repeat 3]
       [--results FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paho.mqtt import _packet

from hierfl.config import MqttSettings
from hierfl.sim.brokers import MqttBroker
from hierfl.transport import _paho_io, mqtt
from hierfl.transport.mqtt import MqttTransport


def _plain_paho() -> None:
    """Leave paho's I/O as it is in this process (the comparison's baseline)."""
    mqtt.speed_up = lambda client: False  # type: ignore[assignment]
    if _paho_io._original_decode_publish is not None:
        _packet.decode_publish = _paho_io._original_decode_publish


def _settings(port: int) -> MqttSettings:
    return MqttSettings(url=f"mqtt://127.0.0.1:{port}")


async def _sub(port: int, count: int, ready, done) -> None:
    async with MqttTransport(_settings(port), client_id=f"bench-sub-{os.getpid()}") as t:
        await t.subscribe("bench/large")
        ready.set()
        n, started = 0, 0.0
        async for _ in t.messages():
            if n == 0:
                started = time.process_time()  # from the first message in: steady state
            n += 1
            if n == count:
                break
        done.put(time.process_time() - started)


def _sub_main(port: int, count: int, plain: bool, ready, done) -> None:
    if plain:
        _plain_paho()
    asyncio.run(_sub(port, count, ready, done))


async def _pub(port: int, size: int, count: int) -> float:
    payload = os.urandom(size)
    async with MqttTransport(_settings(port), client_id=f"bench-pub-{os.getpid()}") as t:
        started = time.process_time()
        for _ in range(count):
            await t.publish("bench/large", payload)
        return time.process_time() - started


def _pub_main(port: int, size: int, count: int, plain: bool, out) -> None:
    if plain:
        _plain_paho()
    out.put(asyncio.run(_pub(port, size, count)))


def run_once(port: int, size: int, count: int, plain: bool) -> dict[str, object]:
    ctx = mp.get_context("spawn")  # fresh interpreters: nothing patched or not by accident
    ready, done, pub_out = ctx.Event(), ctx.Queue(), ctx.Queue()
    sub = ctx.Process(target=_sub_main, args=(port, count, plain, ready, done))
    sub.start()
    if not ready.wait(60):
        raise RuntimeError("the subscriber did not start")
    time.sleep(0.2)
    pub = ctx.Process(target=_pub_main, args=(port, size, count, plain, pub_out))
    pub.start()
    pub_cpu = pub_out.get(timeout=120)
    sub_cpu = done.get(timeout=120)
    pub.join(30)
    sub.join(30)
    return {"bench": "mqtt_large", "mode": "paho-as-is" if plain else "hierfl",
            "size": size, "count": count,
            "publisher_cpu_ms_per_msg": round(pub_cpu / count * 1000, 2),
            "subscriber_cpu_ms_per_msg": round(sub_cpu / max(count - 1, 1) * 1000, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4_500_000, help="payload bytes")
    ap.add_argument("--count", type=int, default=20, help="messages per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode, alternating")
    ap.add_argument("--results", type=Path, help="append the JSON lines to this file")
    args = ap.parse_args()
    with MqttBroker() as broker:
        for _ in range(args.repeat):
            for plain in (True, False):
                row = run_once(broker.port, args.size, args.count, plain)
                row["broker"] = broker.kind
                line = json.dumps(row)
                print(line, flush=True)
                if args.results:
                    with args.results.open("a") as f:
                        f.write(line + "\n")


if __name__ == "__main__":
    main()
