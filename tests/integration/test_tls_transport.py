"""MqttTransport over real TLS: mosquitto with a TLS listener that requires client certificates.

The broker runs with ``require_certificate true`` and ``use_identity_as_username true``, as a
production broker for hierfl would (brokers/mosquitto.conf); certificates come from a throwaway
CA made by the test. Kafka over TLS is not tested against a broker: Tansu cannot serve TLS (see
tests/unit/transport/test_tls_settings.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from hierfl.config import MqttSettings
from hierfl.errors import BrokerUnavailableError
from hierfl.transport.mqtt import MqttTransport
from tests.integration.own_mosquitto import MOSQUITTO, own_mosquitto
from tests.unit.transport.test_tls_settings import Pki, make_pki

pytestmark = pytest.mark.integration



@dataclass(frozen=True)
class TlsBroker:
    port: int
    pki: Pki
    other_ca: Pki  # a CA the broker does not know

    def settings(self, *, host: str = "127.0.0.1", client: bool = True, **kw: object
                 ) -> MqttSettings:
        files: dict[str, object] = {"ca_file": self.pki.ca}
        if client:
            files |= {"cert_file": self.pki.client_cert, "key_file": self.pki.client_key}
        return MqttSettings.model_validate(
            {"url": f"mqtts://{host}:{self.port}", "connect_timeout_s": 20.0, **files, **kw}
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.skip("mosquitto is not installed")
    folder = tmp_path_factory.mktemp("tls-broker")
    pki = make_pki(folder / "pki")
    other = make_pki(folder / "other", ca_name="someone else's CA")
    port = _free_port()
    conf = (
        f"per_listener_settings false\n"
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        "tls_version tlsv1.2\n"  # the least the broker accepts; clients may use 1.3
        "require_certificate true\nuse_identity_as_username true\n"
        "allow_anonymous false\npersistence false\nset_tcp_nodelay true\n"
        # As root mosquitto would switch to user 'mosquitto', which cannot read tmp_path.
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    with own_mosquitto(folder, conf, port):
        yield TlsBroker(port, pki, other)


async def _round_trip(broker: TlsBroker, topic: str, payload: bytes, **kw: object) -> bytes:
    settings = broker.settings(**kw)
    async with (MqttTransport(settings, client_id=f"{topic}-sub") as sub,
                MqttTransport(settings, client_id=f"{topic}-pub") as pub):
        sock = pub._client._client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        await sub.subscribe(topic)
        await pub.publish(topic, payload)
        async with asyncio.timeout(10):
            async for inbound in sub.messages():
                assert inbound.topic == topic
                return inbound.payload
    raise AssertionError("no message")


async def test_mutual_tls_round_trip(tls_broker: TlsBroker, unique_id: str) -> None:
    payload = os.urandom(3000)
    assert await _round_trip(tls_broker, f"{unique_id}/update", payload) == payload


async def test_chunked_round_trip_over_tls(tls_broker: TlsBroker, unique_id: str) -> None:
    payload = os.urandom(50_000)
    got = await _round_trip(tls_broker, f"{unique_id}/model", payload, max_packet_bytes=4096)
    assert got == payload


async def test_tls_server_name_checks_another_name(tls_broker: TlsBroker, unique_id: str
                                                   ) -> None:
    # The certificate names localhost and 127.0.0.1; dialling 127.0.0.1, check "localhost"
    settings = tls_broker.settings(tls_server_name="localhost")
    async with MqttTransport(settings, client_id=unique_id):
        pass
    wrong = tls_broker.settings(tls_server_name="broker.example")
    with pytest.raises(BrokerUnavailableError, match="TLS"):
        async with MqttTransport(wrong, client_id=unique_id):
            pass


async def test_wrong_ca_fails_fast(tls_broker: TlsBroker, unique_id: str) -> None:
    settings = tls_broker.settings(ca_file=tls_broker.other_ca.ca)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as info:
        async with asyncio.timeout(10), MqttTransport(settings, client_id=unique_id):
            pass
    assert time.monotonic() - started < 5  # not the 20 s connect timeout
    assert "TLS" in str(info.value)
    assert settings.url in str(info.value)


async def test_connecting_without_client_certificate_is_refused(
    tls_broker: TlsBroker, unique_id: str
) -> None:
    settings = tls_broker.settings(client=False)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as info:
        async with asyncio.timeout(10), MqttTransport(settings, client_id=unique_id):
            pass
    assert time.monotonic() - started < 5  # not the 20 s connect timeout
    assert settings.url in str(info.value)
    assert "client certificate" in str(info.value) or "TLS" in str(info.value)


async def test_plain_mqtt_to_a_tls_listener_is_refused(tls_broker: TlsBroker, unique_id: str
                                                       ) -> None:
    settings = MqttSettings(url=f"mqtt://127.0.0.1:{tls_broker.port}", connect_timeout_s=3.0)
    with pytest.raises(BrokerUnavailableError):
        async with asyncio.timeout(10), MqttTransport(settings, client_id=unique_id):
            pass
