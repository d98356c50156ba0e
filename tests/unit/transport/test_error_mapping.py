"""Every third-party transport exception is mapped to a TransportError at the boundary."""

from __future__ import annotations

import inspect

import aiokafka.errors
import aiomqtt
import pytest

from hierfl.errors import (
    BrokerUnavailableError,
    DisconnectedError,
    PublishTimeoutError,
    TransportError,
)
from hierfl.transport.kafka import _REFUSED as _kafka_refused
from hierfl.transport.kafka import map_kafka_errors
from hierfl.transport.mqtt import map_mqtt_errors


def _kafka_errors() -> list[type[Exception]]:
    return [c for _, c in inspect.getmembers(aiokafka.errors, inspect.isclass)
            if issubclass(c, aiokafka.errors.KafkaError)
            and c is not aiokafka.errors.BrokerResponseError]  # abstract: str() fails


def _instantiate(cls: type[Exception]) -> Exception:
    try:
        return cls("boom")
    except TypeError:
        return cls()


@pytest.mark.parametrize("cls", _kafka_errors(), ids=lambda c: c.__name__)
def test_every_kafka_error_is_mapped(cls):
    with pytest.raises(TransportError) as info, map_kafka_errors("send"):
        raise _instantiate(cls)
    assert isinstance(info.value.__cause__, cls)
    # Only credential / authorization refusals are fatal; every other Kafka error is retried
    assert info.value.retriable is not (cls.__name__ in _kafka_refused)


def test_kafka_connection_errors_are_unavailable():
    with pytest.raises(BrokerUnavailableError), map_kafka_errors("connect"):
        raise aiokafka.errors.KafkaConnectionError("refused")
    with pytest.raises(PublishTimeoutError), map_kafka_errors("send"):
        raise aiokafka.errors.KafkaTimeoutError()


@pytest.mark.parametrize("exc", [OSError("x"), ConnectionResetError(), TimeoutError()])
@pytest.mark.parametrize("mapper", [map_kafka_errors, map_mqtt_errors])
def test_os_errors_and_timeouts_are_mapped(mapper, exc):
    with pytest.raises(TransportError), mapper("send"):
        raise exc


def test_mqtt_errors_are_mapped():
    classes = [c for _, c in inspect.getmembers(aiomqtt, inspect.isclass)
               if issubclass(c, aiomqtt.MqttError)]
    assert aiomqtt.MqttError in classes
    for cls in classes:
        exc = cls(1, "x") if cls is aiomqtt.MqttCodeError else _instantiate(cls)
        with pytest.raises(DisconnectedError), map_mqtt_errors("receive"):
            raise exc
        with pytest.raises(BrokerUnavailableError), map_mqtt_errors("connect"):
            raise exc


def test_hierfl_errors_and_others_pass_through():
    with pytest.raises(DisconnectedError), map_mqtt_errors("x"):
        raise DisconnectedError("already mapped")
    with pytest.raises(ValueError, match="bug"), map_kafka_errors("x"):
        raise ValueError("bug")
