"""The throwaway brokers of hierfl.sim.brokers: protocol behaviour the federation relies on, and
a lifecycle that leaves no process behind."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import aiomqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from hierfl.errors import BrokerUnavailableError, ConfigError
from hierfl.sim.brokers import KafkaBroker, MqttBroker, free_port

TIMEOUT_S = 15.0


def _mosquitto_installed() -> bool:
    try:
        MqttBroker(prefer="mosquitto")
    except ConfigError:
        return False
    return True


needs_mosquitto = pytest.mark.skipif(not _mosquitto_installed(), reason="mosquitto not installed")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- MQTT: the session broker, and the amqtt fallback ------------------------------------------


@pytest.fixture(scope="module")
def amqtt_broker() -> Iterator[MqttBroker]:
    with MqttBroker(prefer="amqtt", startup_timeout_s=60.0) as broker:
        yield broker


@pytest.fixture(params=["session", "amqtt"])
def any_mqtt(request: pytest.FixtureRequest) -> MqttBroker:
    """The session broker (mosquitto when installed) and the amqtt fallback in turn."""
    name = "mqtt_broker" if request.param == "session" else "amqtt_broker"
    broker: MqttBroker = request.getfixturevalue(name)
    return broker


async def _receive(client: aiomqtt.Client, n: int) -> list[aiomqtt.Message]:
    received: list[aiomqtt.Message] = []
    async with asyncio.timeout(TIMEOUT_S):
        async for message in client.messages:
            received.append(message)
            if len(received) == n:
                break
    return received


@pytest.mark.integration
async def test_mqtt_qos1_round_trip(any_mqtt: MqttBroker, unique_id: str) -> None:
    topic = f"hierfl/{unique_id}/fog-a/update/edge-1"
    async with (
        aiomqtt.Client(any_mqtt.host, any_mqtt.port, identifier=f"{unique_id}-sub") as sub,
        aiomqtt.Client(any_mqtt.host, any_mqtt.port, identifier=f"{unique_id}-pub") as pub,
    ):
        await sub.subscribe(topic, qos=1)
        await pub.publish(topic, b"frame-1", qos=1)

        [message] = await _receive(sub, 1)

    assert message.topic.matches(topic)
    assert message.payload == b"frame-1"
    assert message.qos == 1


@pytest.mark.integration
async def test_mqtt_persistent_session_gets_messages_sent_while_offline(
    any_mqtt: MqttBroker, unique_id: str
) -> None:
    topic = f"hierfl/{unique_id}/fog-a/update/edge-1"
    fog_id = f"{unique_id}-fog"
    async with aiomqtt.Client(
        any_mqtt.host, any_mqtt.port, identifier=fog_id, clean_session=False
    ) as fog:
        await fog.subscribe(topic, qos=1)
    async with aiomqtt.Client(any_mqtt.host, any_mqtt.port, identifier=f"{unique_id}-edge") as edge:
        for i in range(3):
            await edge.publish(topic, f"update-{i}".encode(), qos=1)

    # Same client id, clean_session=False, no new SUBSCRIBE: the broker kept the subscription
    # and queued the QoS 1 messages.
    async with aiomqtt.Client(
        any_mqtt.host, any_mqtt.port, identifier=fog_id, clean_session=False
    ) as fog:
        received = await _receive(fog, 3)
        # End the session so it does not hold messages for the rest of the test run.
        await fog.unsubscribe(topic)

    assert sorted(m.payload for m in received) == [b"update-0", b"update-1", b"update-2"]


@pytest.mark.integration
async def test_mqtt_retained_message_reaches_a_new_subscriber(
    any_mqtt: MqttBroker, unique_id: str
) -> None:
    topic = f"hierfl/{unique_id}/fog-a/model"
    async with aiomqtt.Client(any_mqtt.host, any_mqtt.port, identifier=f"{unique_id}-fog") as fog:
        await fog.publish(topic, b"model-v1", qos=1, retain=True)
        await fog.publish(topic, b"model-v2", qos=1, retain=True)

    async with aiomqtt.Client(any_mqtt.host, any_mqtt.port, identifier=f"{unique_id}-edge") as edge:
        await edge.subscribe(topic, qos=1)
        [message] = await _receive(edge, 1)
        # An empty retained payload deletes the retained message.
        await edge.publish(topic, b"", qos=1, retain=True)

    assert message.payload == b"model-v2"
    assert message.retain


@pytest.mark.integration
async def test_mqtt_carries_a_16_mib_frame(any_mqtt: MqttBroker, unique_id: str) -> None:
    topic = f"hierfl/{unique_id}/fog-a/update/edge-1"
    frame = os.urandom(1024) * (16 * 1024)
    async with (
        aiomqtt.Client(any_mqtt.host, any_mqtt.port, identifier=f"{unique_id}-sub") as sub,
        aiomqtt.Client(any_mqtt.host, any_mqtt.port, identifier=f"{unique_id}-pub") as pub,
    ):
        await sub.subscribe(topic, qos=1)
        await pub.publish(topic, frame, qos=1)

        [message] = await _receive(sub, 1)

    assert message.payload == frame


# -- Kafka (Tansu) --------------------------------------------------------------------------------


async def _create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    # No enable_idempotence: Tansu 0.6 answers InitProducerId with an unknown error.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"fog-a")
    finally:
        await producer.stop()


async def _consume(consumer: AIOKafkaConsumer, n: int) -> list[bytes]:
    values: list[bytes] = []
    async with asyncio.timeout(TIMEOUT_S):
        while len(values) < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=n - len(values))
            values += [record.value for records in batches.values() for record in records]
    return values


@pytest.mark.integration
async def test_kafka_produce_acks_all_then_consume_from_an_offset(
    kafka_broker: KafkaBroker, unique_id: str
) -> None:
    topic = f"hierfl.{unique_id}.aggregates"
    await _create_topic(kafka_broker.bootstrap, topic)
    await _produce(kafka_broker.bootstrap, topic, [b"a0", b"a1", b"a2"])

    partition = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([partition])
        consumer.seek(partition, 1)
        values = await _consume(consumer, 2)
    finally:
        await consumer.stop()

    assert values == [b"a1", b"a2"]


@pytest.mark.integration
async def test_kafka_committed_offsets_resume_without_a_group_join(
    kafka_broker: KafkaBroker, unique_id: str
) -> None:
    """The fast recipe: assign() plus a group_id commits and resumes, with no JoinGroup."""
    topic = f"hierfl.{unique_id}.aggregates"
    partition = TopicPartition(topic, 0)
    await _create_topic(kafka_broker.bootstrap, topic)
    await _produce(kafka_broker.bootstrap, topic, [b"a0", b"a1", b"a2", b"a3"])

    async def consume_and_commit(n: int) -> list[bytes]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_broker.bootstrap,
            group_id=f"{unique_id}-cloud",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            retry_backoff_ms=10,
        )
        await consumer.start()
        try:
            consumer.assign([partition])
            values = await _consume(consumer, n)
            await consumer.commit()
        finally:
            await consumer.stop()
        return values

    started = time.monotonic()
    first = await consume_and_commit(3)
    after_restart = await consume_and_commit(1)
    elapsed = time.monotonic() - started

    assert first == [b"a0", b"a1", b"a2"]
    assert after_restart == [b"a3"]
    assert elapsed < 5.0  # ~0.03 s; a group join would cost >= 1 s per consumer


@pytest.mark.integration
async def test_kafka_consumer_group_commits_and_resumes(
    kafka_broker: KafkaBroker, unique_id: str
) -> None:
    """subscribe() works too; with these settings each join takes ~1 s instead of 5-18 s."""
    topic = f"hierfl.{unique_id}.aggregates"
    await _create_topic(kafka_broker.bootstrap, topic)
    await _produce(kafka_broker.bootstrap, topic, [b"a0", b"a1", b"a2"])

    async def consume_and_commit(n: int) -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_broker.bootstrap,
            group_id=f"{unique_id}-cloud",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=1000,  # Tansu only: Apache Kafka's minimum is 6000
            heartbeat_interval_ms=100,
            retry_backoff_ms=10,
        )
        await consumer.start()
        try:
            values = await _consume(consumer, n)
            await consumer.commit()
        finally:
            await consumer.stop()
        return values

    first = await consume_and_commit(2)
    after_restart = await consume_and_commit(1)

    assert first == [b"a0", b"a1"]
    assert after_restart == [b"a2"]


# -- lifecycle ----------------------------------------------------------------------------------


# Each factory takes the constructor's keyword arguments (port=...).
BROKERS = [
    pytest.param(partial(MqttBroker, prefer="mosquitto"), id="mosquitto", marks=needs_mosquitto),
    pytest.param(partial(MqttBroker, prefer="amqtt"), id="amqtt"),
    pytest.param(KafkaBroker, id="tansu"),
]


@pytest.mark.integration
@pytest.mark.parametrize("make", BROKERS)
def test_stop_leaves_no_process(make: Callable[..., MqttBroker | KafkaBroker]) -> None:
    broker = make()

    with broker:
        pid = broker.pid
        assert broker.log_path is not None
        log_dir = broker.log_path.parent
        assert pid is not None
        assert _pid_alive(pid)
        assert broker.running
    broker.stop()  # idempotent

    assert not _pid_alive(pid)
    assert broker.pid is None
    assert not broker.running
    assert not log_dir.exists()


@pytest.mark.integration
@pytest.mark.parametrize("make", BROKERS)
def test_forgotten_broker_is_terminated_when_collected(
    make: Callable[..., MqttBroker | KafkaBroker],
) -> None:
    broker = make().start()
    pid = broker.pid
    assert pid is not None

    del broker
    gc.collect()

    # No ResourceWarning either: the suite runs with filterwarnings=error.
    assert not _pid_alive(pid)


@pytest.mark.integration
@pytest.mark.parametrize("make", BROKERS)
def test_port_in_use_raises_broker_unavailable_with_log_tail(
    make: Callable[..., MqttBroker | KafkaBroker],
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))  # bound, not listening: the broker's bind() fails
        port = blocker.getsockname()[1]
        broker = make(port=port)

        with pytest.raises(
            BrokerUnavailableError, match=r"(?is)exited with status.*log tail"
        ) as info:
            broker.start()

    assert "in use" in str(info.value).lower()
    assert broker.pid is None


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_invalid_preference_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="prefer"):
        MqttBroker(prefer="rabbitmq")  # type: ignore[arg-type]


def test_missing_tansu_binary_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an executable"):
        KafkaBroker(binary=tmp_path / "tansu")
