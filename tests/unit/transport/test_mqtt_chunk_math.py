"""MQTT packet-size arithmetic and chunk sub-topics (no broker needed)."""

from __future__ import annotations

import importlib.util

import paho.mqtt.client as paho
import pytest

from hierfl.config import MqttSettings
from hierfl.errors import ConfigError
from hierfl.sim.brokers import MqttBroker
from hierfl.transport.mqtt import (
    MqttTransport,
    _split_chunk_topic,
    chunk_topic,
    publish_packet_size,
)


@pytest.mark.parametrize("size", [0, 1, 100, 127 - 9, 128, 16_000, 16_384, 131_062, 3_000_000])
@pytest.mark.parametrize("qos", [0, 1])
def test_packet_size_matches_what_paho_writes(size: int, qos: int) -> None:
    # Prepare: capture the PUBLISH packet paho builds instead of sending it
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    packets: list[bytes] = []
    client._sock = object()  # type: ignore[assignment]
    client._packet_queue = lambda _c, packet, *_a: packets.append(bytes(packet)) or 0  # type: ignore[method-assign]
    topic = "hierfl/fed/fog/update/édge"
    # Execute
    try:
        client._send_publish(1, topic.encode(), b"x" * size, qos)
    finally:
        client._sock = None
    # Assert
    assert publish_packet_size(topic, size, qos=qos) == len(packets[0])


def test_chunk_topics_round_trip() -> None:
    t = "hierfl/f/g/model"
    assert chunk_topic(t, 7) == "hierfl/f/g/model/~chunk/7"
    assert _split_chunk_topic(chunk_topic(t, 7)) == (t, 7)
    for other in (t, f"{t}/~chunk/", f"{t}/~chunk/x", f"{t}/~chunk/1/2", "/~chunk/1",
                  f"{t}/~chunk/{'9' * 11}", f"{t}/~chunk/١"):
        assert _split_chunk_topic(other) == (other, None)


async def test_limit_too_small_for_the_topic_is_a_config_error() -> None:
    settings = MqttSettings(url="mqtt://127.0.0.1:9", max_packet_bytes=4096)
    mqtt = MqttTransport(settings, client_id="never-connects")
    with pytest.raises(ConfigError, match="max_packet_bytes"):
        await mqtt.publish("t/" + "x" * 3500, b"y" * 5000)


@pytest.mark.parametrize("value", [0, 4095, 268_435_461])
def test_max_packet_bytes_is_validated(value: int) -> None:
    with pytest.raises(ValueError, match="max_packet_bytes"):
        MqttSettings(max_packet_bytes=value)


def test_test_broker_packet_limit_is_validated() -> None:
    with pytest.raises(ConfigError, match=">= 1024"):
        MqttBroker(max_packet_bytes=1000)
    if importlib.util.find_spec("amqtt") is not None:
        with pytest.raises(ConfigError, match="needs mosquitto"):
            MqttBroker(prefer="amqtt", max_packet_bytes=131_072)
