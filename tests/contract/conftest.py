"""Harnesses that hand the contract tests the same links over every broker.

MQTT: the in-memory broker (a fresh one per test), the session's mosquitto (``mqtt_broker``)
and an amqtt started once per test module. Kafka: the in-memory cluster and the session's
Tansu (``kafka_broker``). Real-broker parameters carry ``pytest.mark.integration``; brokers
start lazily, so ``-m "not integration"`` starts none.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hierfl.config import KafkaSettings
from hierfl.errors import ConfigError
from hierfl.sim.brokers import MqttBroker
from hierfl.transport.memory import MemoryKafkaBroker, MemoryMqttBroker
from tests.contract.harness import KAFKA_CHUNK_BYTES, KafkaHarness, MqttHarness


@pytest.fixture(scope="module")
def amqtt_broker() -> Iterator[MqttBroker]:
    """An amqtt broker for this test module (stopped at its end)."""
    try:
        broker = MqttBroker(prefer="amqtt", startup_timeout_s=60.0)
    except ConfigError as exc:
        pytest.skip(f"amqtt is not installed: {exc}")
    with broker:
        yield broker


@pytest.fixture(params=[
    "memory",
    pytest.param("mosquitto", marks=pytest.mark.integration),
    pytest.param("amqtt", marks=pytest.mark.integration),
])
def mqtt(request: pytest.FixtureRequest) -> MqttHarness:
    """The same MQTT harness over the memory broker, mosquitto and amqtt."""
    if request.param == "memory":
        return MqttHarness("memory", memory=MemoryMqttBroker())
    if request.param == "mosquitto":
        broker: MqttBroker = request.getfixturevalue("mqtt_broker")
        if broker.kind != "mosquitto":
            pytest.skip("the session broker is not mosquitto (HIERFL_TEST_MQTT_BROKER)")
    else:
        broker = request.getfixturevalue("amqtt_broker")
    return MqttHarness(request.param, url=broker.url)


@pytest.fixture(params=["memory", pytest.param("tansu", marks=pytest.mark.integration)])
def kafka(request: pytest.FixtureRequest) -> KafkaHarness:
    """The same Kafka harness over the memory cluster and Tansu."""
    if request.param == "memory":
        return KafkaHarness("memory", KafkaSettings(chunk_bytes=KAFKA_CHUNK_BYTES),
                            memory=MemoryKafkaBroker())
    broker = request.getfixturevalue("kafka_broker")
    return KafkaHarness("tansu", KafkaSettings(bootstrap=broker.bootstrap,
                                               chunk_bytes=KAFKA_CHUNK_BYTES))
