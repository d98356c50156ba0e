"""MqttBroker(tls=...): mosquitto from a provisioned TLS configuration (mutual TLS, the ACL),
ready only once a CONNECT over TLS with a client certificate succeeds."""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from hierfl.config import MqttSettings
from hierfl.errors import ConfigError, HierflError
from hierfl.provision import ProjectSpec, Provisioned, mosquitto_tls_conf, provision
from hierfl.sim import brokers
from hierfl.sim.brokers import MqttBroker, MqttTls
from hierfl.transport.mqtt import MqttTransport

TIMEOUT_S = 10.0


def _mosquitto_installed() -> bool:
    try:
        MqttBroker(prefer="mosquitto")
    except ConfigError:
        return False
    return True


needs_mosquitto = pytest.mark.skipif(not _mosquitto_installed(), reason="mosquitto not installed")


@pytest.fixture(scope="module")
def prov(tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    spec = ProjectSpec("tlsfed", {"north": ("n0",)}, mqtt_hosts=("127.0.0.1", "localhost"),
                       mqtt_url="mqtts://127.0.0.1:8883")
    return provision(spec, tmp_path_factory.mktemp("tls") / "pki", tls=True)


def _tls(prov: Provisioned, party: str = "fog/north") -> MqttTls:
    kit = prov.kit(party)
    return MqttTls(functools.partial(mosquitto_tls_conf, prov), ca_file=prov.ca_cert,
                   cert_file=kit / "client.crt", key_file=kit / "client.key")


@pytest.fixture(scope="module")
def tls_broker(prov: Provisioned) -> Iterator[MqttBroker]:
    if not _mosquitto_installed():
        pytest.skip("mosquitto not installed")
    with MqttBroker(tls=_tls(prov), startup_timeout_s=30.0) as broker:
        yield broker


def _settings(broker: MqttBroker, kit: Path | None, ca: Path) -> MqttSettings:
    files = {} if kit is None else {"cert_file": kit / "client.crt", "key_file": kit / "client.key"}
    return MqttSettings(url=broker.url, ca_file=ca, connect_timeout_s=5, **files)


@pytest.mark.integration
@needs_mosquitto
def test_tls_broker_serves_mqtts_with_the_provisioned_conf(tls_broker: MqttBroker) -> None:
    assert tls_broker.kind == "mosquitto"
    assert tls_broker.url == f"mqtts://127.0.0.1:{tls_broker.port}"
    assert tls_broker.running
    # The queue settings of the plain sim broker were added to the TLS configuration.
    assert tls_broker._workdir is not None
    conf = (tls_broker._workdir / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf
    assert "max_queued_bytes 0" in conf
    assert conf.count("max_queued_messages") == 1


@pytest.mark.integration
@needs_mosquitto
def test_plain_mqtt_and_tls_without_a_client_certificate_are_refused(
    tls_broker: MqttBroker, prov: Provisioned
) -> None:
    # A plain MQTT CONNECT gets no CONNACK from a TLS listener.
    with pytest.raises((OSError, brokers._ProbeError)):
        brokers._mqtt_connect(tls_broker.host, tls_broker.port, 2.0)
    # TLS that verifies the broker but shows no client certificate fails the handshake.
    ctx = ssl.create_default_context(cafile=str(prov.ca_cert))
    with (pytest.raises((OSError, brokers._ProbeError)),
          socket.create_connection((tls_broker.host, tls_broker.port), timeout=2.0) as raw,
          ctx.wrap_socket(raw, server_hostname=tls_broker.host) as sock):
        brokers._connect_exchange(sock, b"\x00\x04MQTT\x04\x02\x00\x0a\x00\x01x")


@pytest.mark.integration
@needs_mosquitto
async def test_kit_clients_talk_within_their_acl(
    tls_broker: MqttBroker, prov: Provisioned, unique_id: str
) -> None:
    fog = _settings(tls_broker, prov.kit("fog/north"), prov.ca_cert)
    edge = _settings(tls_broker, prov.kit("edge/north/n0"), prov.ca_cert)
    update = "hierfl/tlsfed/north/update/n0"
    async with (MqttTransport(fog, client_id=f"{unique_id}-fog") as f,
                MqttTransport(edge, client_id=f"{unique_id}-edge") as e):
        await f.subscribe("hierfl/tlsfed/north/update/+")
        await e.publish(update, b"delta", qos=1)
        async with asyncio.timeout(TIMEOUT_S):
            async for inbound in f.messages():
                assert (inbound.topic, bytes(inbound.payload)) == (update, b"delta")
                break


@pytest.mark.integration
@needs_mosquitto
def test_a_certificate_from_another_ca_fails_fast(tmp_path: Path, prov: Provisioned) -> None:
    other = provision(ProjectSpec("other", {"f": ("e",)}), tmp_path / "other", tls=True)
    tls = MqttTls(functools.partial(mosquitto_tls_conf, prov), ca_file=other.ca_cert,
                  cert_file=other.kit("fog/f") / "client.crt",
                  key_file=other.kit("fog/f") / "client.key")
    with pytest.raises(HierflError, match="does not verify"):
        MqttBroker(tls=tls, startup_timeout_s=20.0).start()


def test_tls_needs_mosquitto(monkeypatch: pytest.MonkeyPatch, prov: Provisioned) -> None:
    with pytest.raises(ConfigError, match="needs mosquitto"):
        MqttBroker(prefer="amqtt", tls=_tls(prov))
    monkeypatch.setattr(brokers.shutil, "which", lambda _name: None)
    monkeypatch.setattr(brokers, "_MOSQUITTO_PATHS", ())
    with pytest.raises(ConfigError, match=r"MQTT over TLS .* needs mosquitto"):
        MqttBroker(tls=_tls(prov))


def test_queue_settings_are_added_only_where_missing() -> None:
    conf = "listener 1 127.0.0.1\nmax_queued_messages 5\n# max_packet_size 7\n"
    out = brokers._with_queue_settings(conf, 100_000, 2048)
    assert out.count("max_queued_messages") == 1
    assert "max_packet_size 2048" in out
    assert "max_inflight_messages 100" in out
