"""Refusals no retry can fix map to the fatal BrokerRefusedError, naming the URL and setting."""

from __future__ import annotations

import ssl

import aiokafka.errors
import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from hierfl.errors import BrokerRefusedError, BrokerUnavailableError
from hierfl.transport.kafka import map_kafka_errors
from hierfl.transport.mqtt import map_mqtt_errors

URL = "mqtt://broker.example:1883"


@pytest.mark.parametrize("rc", [4, 5, ReasonCode(PacketTypes.CONNACK, identifier=134),
                                ReasonCode(PacketTypes.CONNACK, identifier=135)])
def test_mqtt_bad_credentials_are_fatal(rc):
    with pytest.raises(BrokerRefusedError) as info, map_mqtt_errors("connect", url=URL):
        raise MqttConnectError(rc)
    assert not info.value.retriable
    assert URL in str(info.value)
    assert "mqtt.password" in str(info.value)


@pytest.mark.parametrize("rc", [3, ReasonCode(PacketTypes.CONNACK, identifier=136)])
def test_mqtt_server_unavailable_is_retried(rc):
    with pytest.raises(BrokerUnavailableError) as info, map_mqtt_errors("connect", url=URL):
        raise MqttConnectError(rc)
    assert info.value.retriable


def test_mqtt_refused_port_is_retried_and_named():
    with pytest.raises(BrokerUnavailableError) as info, map_mqtt_errors("connect", url=URL):
        raise ConnectionRefusedError(111, "Connection refused")
    assert info.value.retriable
    assert URL in str(info.value)
    assert "mqtt.url" in str(info.value)


def test_mqtt_certificate_failure_is_fatal_but_eof_is_not():
    def hidden(inner: Exception) -> None:
        try:
            raise inner
        except OSError:
            raise aiomqtt.MqttError("tls") from None

    with pytest.raises(BrokerRefusedError), map_mqtt_errors("connect", url=URL):
        hidden(ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] unknown CA"))
    with pytest.raises(BrokerUnavailableError) as info, map_mqtt_errors("connect", url=URL):
        hidden(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))
    assert info.value.retriable


@pytest.mark.parametrize("cls", [aiokafka.errors.SaslAuthenticationFailed,
                                 aiokafka.errors.UnsupportedSaslMechanismError,
                                 aiokafka.errors.TopicAuthorizationFailedError])
def test_kafka_sasl_and_acl_refusals_are_fatal(cls):
    with (pytest.raises(BrokerRefusedError) as info,
          map_kafka_errors("connect", bootstrap="kafka.example:9093")):
        raise cls("Authentication failed: Invalid username or password")
    assert "kafka.example:9093" in str(info.value)
    assert "kafka.sasl_password" in str(info.value)


def test_kafka_unreachable_is_retried_and_named():
    with (pytest.raises(BrokerUnavailableError) as info,
          map_kafka_errors("connect", bootstrap="nowhere.invalid:9092")):
        raise aiokafka.errors.KafkaConnectionError("Unable to bootstrap")
    assert info.value.retriable
    assert "nowhere.invalid:9092" in str(info.value)
    assert "kafka.bootstrap" in str(info.value)
