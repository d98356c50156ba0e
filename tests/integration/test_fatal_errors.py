"""Fatal broker errors end the process with a message naming the URL and the setting; transient
ones are retried, at most ``connect_attempts`` times in a row; failed connects leak nothing.

Real brokers: a mosquitto with ``allow_anonymous false`` and a password file (bad password ->
CONNACK "Not authorised"), a port nobody listens on, and the session's Tansu (Kafka) with a
federation whose topics do not exist and ``create_topics = false``. The suite runs with
``filterwarnings = error``, so an "Unclosed AIOKafkaProducer" (or any ResourceWarning) fails it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hierfl.config import FogSettings, KafkaSettings, MqttSettings
from hierfl.errors import BrokerRefusedError, BrokerUnavailableError
from hierfl.fog.service import FogService
from hierfl.sim.brokers import KafkaBroker, MqttBroker
from hierfl.transport.kafka import KafkaConsumerTransport, KafkaProducerTransport, ensure_topics
from hierfl.transport.mqtt import MqttTransport
from tests.integration.own_mosquitto import MOSQUITTO, own_mosquitto

pytestmark = pytest.mark.integration

_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def password_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """mqtt:// URL of a mosquitto that admits only user ``hierfl`` with password ``right``."""
    if not (os.access(MOSQUITTO, os.X_OK) and os.access(_PASSWD, os.X_OK)):
        pytest.skip("mosquitto / mosquitto_passwd are not installed")
    folder = tmp_path_factory.mktemp("auth-broker")
    passwd = folder / "passwd"
    subprocess.run([_PASSWD, "-b", "-c", str(passwd), "hierfl", "right"], check=True,
                   capture_output=True)
    passwd.chmod(0o600)
    port = _free_port()
    conf = (
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        "persistence false\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    with own_mosquitto(folder, conf, port):
        yield f"mqtt://127.0.0.1:{port}"


def _fog(fed: str, *, mqtt: dict[str, Any], kafka: dict[str, Any], **kw: Any) -> FogSettings:
    return FogSettings.load(
        fog_id="north", federation=fed, security={"signing": "off"}, resume_wait_s=0.1,
        mqtt={"reconnect_base_s": 0.05, "reconnect_max_s": 0.2, **mqtt}, kafka=kafka, **kw,
    )


async def _run_to_error(service: FogService, limit_s: float = 60.0) -> BrokerRefusedError:
    with pytest.raises(BrokerRefusedError) as info:
        async with asyncio.timeout(limit_s):
            await service.run()
    gc.collect()  # an unclosed aiokafka client warns from __del__: make it happen here
    return info.value


async def test_bad_mqtt_password_is_fatal_at_once(
    password_broker: str, kafka_broker: KafkaBroker, unique_id: str
) -> None:
    settings = _fog(unique_id, mqtt={"url": password_broker, "username": "hierfl",
                                     "password": "wrong"},
                    kafka={"bootstrap": kafka_broker.bootstrap})
    start = time.monotonic()
    err = await _run_to_error(FogService(settings))
    assert time.monotonic() - start < 20  # no retries: refused credentials do not heal
    assert password_broker in str(err)
    assert "mqtt.password" in str(err)
    assert not err.retriable


async def test_right_mqtt_password_connects(
    password_broker: str, kafka_broker: KafkaBroker, unique_id: str
) -> None:
    settings = _fog(unique_id, mqtt={"url": password_broker, "username": "hierfl",
                                     "password": "right"},
                    kafka={"bootstrap": kafka_broker.bootstrap})
    service = FogService(settings)
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(30):
            await service.ready.wait()
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)


async def test_refused_mqtt_port_is_fatal_after_the_attempts(
    kafka_broker: KafkaBroker, unique_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"mqtt://127.0.0.1:{_free_port()}"
    settings = _fog(unique_id, mqtt={"url": url, "connect_attempts": 3},
                    kafka={"bootstrap": kafka_broker.bootstrap})
    err = await _run_to_error(FogService(settings))
    assert "after 3 attempts" in str(err)
    assert url in str(err) and "mqtt.connect_attempts" in str(err)
    retries = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(retries) == 2 and all(url in r.getMessage() for r in retries)


async def test_refused_kafka_port_is_fatal_and_leaks_no_client(
    mqtt_broker: MqttBroker, unique_id: str
) -> None:
    bootstrap = f"127.0.0.1:{_free_port()}"
    settings = _fog(unique_id, mqtt={"url": mqtt_broker.url},
                    kafka={"bootstrap": bootstrap, "connect_attempts": 2,
                           "request_timeout_ms": 2000})
    err = await _run_to_error(FogService(settings))
    assert bootstrap in str(err) and "kafka.connect_attempts" in str(err)


async def test_missing_topic_without_create_topics_is_fatal(
    mqtt_broker: MqttBroker, kafka_broker: KafkaBroker, unique_id: str
) -> None:
    settings = _fog(unique_id, mqtt={"url": mqtt_broker.url},
                    kafka={"bootstrap": kafka_broker.bootstrap, "create_topics": False})
    err = await _run_to_error(FogService(settings))
    assert f"hierfl.{unique_id}." in str(err)
    assert "kafka.create_topics" in str(err) and kafka_broker.bootstrap in str(err)


def _cli(tier: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HIERFL_")} | env
    return subprocess.run([sys.executable, "-m", "hierfl", tier], env=full, text=True,
                          capture_output=True, timeout=timeout, cwd=Path(__file__).parent,
                          check=False)


def test_cli_exits_3_naming_the_url_on_a_bad_password(
    password_broker: str, kafka_broker: KafkaBroker, unique_id: str
) -> None:
    done = _cli("fog", {
        "HIERFL_FOG_ID": "north", "HIERFL_FEDERATION": unique_id,
        "HIERFL_SECURITY__SIGNING": "off", "HIERFL_MQTT__URL": password_broker,
        "HIERFL_MQTT__USERNAME": "hierfl", "HIERFL_MQTT__PASSWORD": "wrong",
        "HIERFL_KAFKA__BOOTSTRAP": kafka_broker.bootstrap,
    })
    assert done.returncode == 3, done.stderr
    assert "error:" in done.stderr and password_broker in done.stderr
    assert "Unclosed" not in done.stderr


def test_cli_exits_3_on_a_missing_topic(kafka_broker: KafkaBroker, unique_id: str,
                                        tmp_path: Path) -> None:
    done = _cli("cloud", {
        "HIERFL_FEDERATION": unique_id, "HIERFL_SECURITY__SIGNING": "off",
        "HIERFL_KAFKA__BOOTSTRAP": kafka_broker.bootstrap, "HIERFL_KAFKA__CREATE_TOPICS": "false",
        "HIERFL_STORE_DIR": str(tmp_path / "store"),
        "HIERFL_INITIAL_MODEL": str(_initial_model(tmp_path)),
    })
    assert done.returncode == 3, done.stderr
    assert "create_topics" in done.stderr and kafka_broker.bootstrap in done.stderr
    assert "Unclosed" not in done.stderr


def test_cli_exits_2_on_a_rule_that_cannot_close_a_round(unique_id: str) -> None:
    done = _cli("fog", {
        "HIERFL_FOG_ID": "north", "HIERFL_FEDERATION": unique_id,
        "HIERFL_MIN_UPDATES": "2", "HIERFL_QUORUM": "2", "HIERFL_AGGREGATOR": "median",
        "HIERFL_AGGREGATOR_PARAMS": '{"nnm_f": 1}',
    })
    assert done.returncode == 2, done.stderr
    assert "2 nnm_f + 1" in done.stderr


def _initial_model(folder: Path) -> Path:
    import numpy as np

    path = folder / "init.npz"
    np.savez(path, w=np.zeros(4, np.float32))
    return path


# --- failed connects close what they opened ----------------------------------------------------


def _leaks(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record
            if "Unclosed" in str(w.message) or issubclass(w.category, ResourceWarning)]


async def test_failed_kafka_connects_close_their_clients(unique_id: str) -> None:
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{_free_port()}", request_timeout_ms=2000)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            with pytest.raises(BrokerUnavailableError, match=settings.bootstrap):
                async with KafkaProducerTransport(settings, client_id=unique_id):
                    pass
            with pytest.raises(BrokerUnavailableError, match=settings.bootstrap):
                async with KafkaConsumerTransport(settings, "t", client_id=unique_id):
                    pass
            with pytest.raises(BrokerUnavailableError, match=settings.bootstrap):
                await ensure_topics(settings, ["t"])
        gc.collect()
    assert _leaks(record) == []


async def test_refused_mqtt_connects_close_their_sockets(password_broker: str,
                                                         unique_id: str) -> None:
    settings = MqttSettings(url=password_broker, username="hierfl",
                            password="wrong")  # type: ignore[arg-type]  # noqa: S106
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for i in range(3):
            with pytest.raises(BrokerRefusedError):
                async with MqttTransport(settings, client_id=f"{unique_id}-{i}"):
                    pass
        gc.collect()
    assert _leaks(record) == []
