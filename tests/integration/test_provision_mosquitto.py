"""A real mosquitto with the provisioned TLS configuration and ACL, clients on mutual TLS.

The broker runs as the current user (``user`` in ``mosquitto_tls_conf``), so the 0600 server key
it reads stays 0600; it binds 127.0.0.1 on a free port and is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from hierfl.provision import ProjectSpec, Provisioned, mosquitto_tls_conf, provision
from hierfl.sim.brokers import free_port

pytestmark = pytest.mark.integration

MOSQUITTO = Path("/usr/sbin/mosquitto")
SPEC = ProjectSpec(
    "city", {"north": ("n0", "n1")}, mqtt_hosts=("localhost", "127.0.0.1"),
    mqtt_url="mqtts://127.0.0.1:8883",
)
TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Provisioned, int]]:
    if not MOSQUITTO.exists():
        pytest.skip("mosquitto is not installed")
    tmp = tmp_path_factory.mktemp("mosq")
    prov = provision(SPEC, tmp / "out")
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(mosquitto_tls_conf(prov, port))
    log_path = tmp / "mosquitto.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(MOSQUITTO), "-c", str(conf)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mosquitto exited: {log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not listen: {log_path.read_text()}")
            time.sleep(0.05)
        yield prov, port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Client:
    """A paho client authenticated by a kit's certificate; collects what it receives."""

    def __init__(self, kit: Path, port: int, name: str) -> None:
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.ready: queue.Queue[int] = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.c.tls_set(ca_certs=str(kit / "ca.crt"), certfile=str(kit / "client.crt"),
                       keyfile=str(kit / "client.key"))
        self.c.on_message = lambda _c, _u, msg: self.inbox.put((msg.topic, msg.payload))
        self.c.on_subscribe = lambda _c, _u, mid, _rc, _p: self.ready.put(mid)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def subscribe(self, topic: str) -> None:
        _, mid = self.c.subscribe(topic, qos=1)
        assert self.ready.get(timeout=TIMEOUT_S) == mid

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(TIMEOUT_S)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@contextlib.contextmanager
def client(prov: Provisioned, port: int, party: str) -> Iterator[Client]:
    c = Client(prov.kit(party), port, party.replace("/", "-"))
    try:
        yield c
    finally:
        c.close()


def test_edge_publishes_own_update_and_reads_model(broker: tuple[Provisioned, int]) -> None:
    prov, port = broker
    with client(prov, port, "fog/north") as fog, client(prov, port, "edge/north/n0") as edge:
        fog.subscribe("hierfl/city/north/update/+")
        edge.publish("hierfl/city/north/update/n0", b"delta")
        assert fog.inbox.get(timeout=TIMEOUT_S) == ("hierfl/city/north/update/n0", b"delta")
        fog.publish("hierfl/city/north/model", b"model-v1", retain=True)
        edge.subscribe("hierfl/city/north/model")
        assert edge.inbox.get(timeout=TIMEOUT_S) == ("hierfl/city/north/model", b"model-v1")


def test_edge_cannot_publish_as_another_edge(broker: tuple[Provisioned, int]) -> None:
    prov, port = broker
    with client(prov, port, "fog/north") as fog, client(prov, port, "edge/north/n0") as edge:
        fog.subscribe("hierfl/city/north/update/+")
        # mosquitto drops the forbidden publish (still PUBACKs it); the allowed one that
        # follows on the same connection marks the point by which it would have arrived.
        edge.publish("hierfl/city/north/update/n1", b"forged")
        edge.publish("hierfl/city/north/model", b"forged-model", retain=True)
        edge.publish("hierfl/city/north/update/n0", b"mine")
        assert fog.inbox.get(timeout=TIMEOUT_S) == ("hierfl/city/north/update/n0", b"mine")
        time.sleep(0.3)
        assert fog.inbox.empty()
        fog.subscribe("hierfl/city/north/model")  # the forged retained model was not kept
        time.sleep(0.3)
        assert all(payload != b"forged-model" for _, payload in list(fog.inbox.queue))


def test_edge_cannot_read_other_updates(broker: tuple[Provisioned, int]) -> None:
    prov, port = broker
    with client(prov, port, "edge/north/n1") as spy, client(prov, port, "edge/north/n0") as edge:
        spy.subscribe("hierfl/city/north/update/+")
        spy.subscribe("hierfl/city/north/model")  # allowed: the marker below
        edge.publish("hierfl/city/north/update/n0", b"secret")
        with client(prov, port, "fog/north") as fog:
            fog.publish("hierfl/city/north/model", b"marker", retain=True)
        seen = [spy.inbox.get(timeout=TIMEOUT_S)]
        while seen[-1] != ("hierfl/city/north/model", b"marker"):
            seen.append(spy.inbox.get(timeout=TIMEOUT_S))
        time.sleep(0.3)
        seen += list(spy.inbox.queue)
        assert all(topic == "hierfl/city/north/model" for topic, _ in seen), seen


def _raw_connect(port: int, context: ssl.SSLContext) -> None:
    """TLS-connect and send an MQTT CONNECT; raise ConnectionError if no CONNACK comes."""
    body = b"\x00\x04MQTT\x04\x02\x00\x0a\x00\x04anon"
    with socket.create_connection(("127.0.0.1", port), TIMEOUT_S) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(bytes([0x10, len(body)]) + body)
        # TLS 1.3: a refused certificate may show only now, on the first read.
        if tls.recv(4)[:1] != b"\x20":
            raise ConnectionError("closed without CONNACK")


def test_client_with_certificate_is_accepted(broker: tuple[Provisioned, int]) -> None:
    prov, port = broker
    kit = prov.edge_kit("north", "n1")
    context = ssl.create_default_context(cafile=str(prov.ca_cert))
    context.load_cert_chain(kit / "client.crt", kit / "client.key")
    _raw_connect(port, context)  # the control case of the two refusals below


def test_client_without_certificate_is_refused(broker: tuple[Provisioned, int]) -> None:
    prov, port = broker
    context = ssl.create_default_context(cafile=str(prov.ca_cert))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw_connect(port, context)


def test_client_with_certificate_from_another_ca_is_refused(
    broker: tuple[Provisioned, int], tmp_path: Path
) -> None:
    prov, port = broker
    other = provision(ProjectSpec("city", {"north": ("n0",)}), tmp_path / "other")
    kit = other.edge_kit("north", "n0")
    context = ssl.create_default_context(cafile=str(prov.ca_cert))
    context.load_cert_chain(kit / "client.crt", kit / "client.key")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw_connect(port, context)
