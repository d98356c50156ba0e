"""Every connect, disconnect and reconnect is one log line naming the broker (real brokers)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hierfl.config import KafkaSettings, MqttSettings
from hierfl.errors import BrokerUnavailableError
from hierfl.transport.kafka import KafkaConsumerTransport, KafkaProducerTransport, ensure_topics
from hierfl.transport.mqtt import MqttTransport
from hierfl.transport.reconnect import Link, reconnect_loop

pytestmark = pytest.mark.integration


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


async def test_kafka_clients_log_connect_and_disconnect_naming_the_brokers(
        kafka_broker, unique_id, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hierfl")
    settings = KafkaSettings(bootstrap=kafka_broker.bootstrap)
    topic = f"hierfl.{unique_id}.models"
    await ensure_topics(settings, [topic])
    async with KafkaProducerTransport(settings, client_id=f"p-{unique_id}"):
        pass
    async with KafkaConsumerTransport(settings, topic, client_id=f"c-{unique_id}",
                                      start="earliest"):
        pass
    bootstrap = kafka_broker.bootstrap
    assert [line for line in _lines(caplog) if unique_id in line] == [
        f"Kafka producer p-{unique_id} connected to {bootstrap}",
        f"Kafka producer p-{unique_id} disconnected from {bootstrap}",
        f"Kafka consumer c-{unique_id} connected to {bootstrap}",
        f"Kafka consumer c-{unique_id} disconnected from {bootstrap}",
    ]
    connect = next(r for r in caplog.records if r.getMessage().endswith(f"to {bootstrap}"))
    assert connect.broker == bootstrap  # type: ignore[attr-defined]  # a JSON-log field


async def test_a_reconnect_logs_disconnect_and_reconnected_naming_the_broker(
        mqtt_broker, unique_id, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hierfl")
    settings = MqttSettings(url=mqtt_broker.url)
    ready, stop = asyncio.Event(), asyncio.Event()
    sessions = 0

    async def connected() -> None:
        nonlocal sessions
        async with MqttTransport(settings, client_id=f"m-{unique_id}"):
            ready.set()
            sessions += 1
            await asyncio.sleep(0.2)  # the announcement runs while connected
            if sessions == 1:
                raise BrokerUnavailableError(f"connection to {mqtt_broker.url} lost")

    await asyncio.wait_for(reconnect_loop(
        f"edge {unique_id}", connected, links=[Link("mqtt", mqtt_broker.url, 3)],
        ready=ready, stop=stop, base_s=0.01, max_s=0.05), timeout=60)
    url = mqtt_broker.url
    mine = [line for line in _lines(caplog) if unique_id in line]
    assert mine[0] == f"MQTT m-{unique_id} connected to {url}"
    assert mine[1] == f"edge {unique_id}: connected to {url}"
    assert mine[2] == f"MQTT m-{unique_id} disconnected from {url} (connection to {url} lost)"
    assert mine[3].startswith(f"edge {unique_id}: disconnected (connection to {url} lost); "
                              "reconnecting in ")
    assert mine[4:] == [f"MQTT m-{unique_id} connected to {url}",
                        f"edge {unique_id}: reconnected to {url}",
                        f"MQTT m-{unique_id} disconnected from {url}"]
