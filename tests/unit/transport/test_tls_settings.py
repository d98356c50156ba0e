"""TLS and SASL settings: validation at load, secrets kept out of reprs, and the aiokafka seam.

Tansu, the Kafka broker the tests run, cannot serve TLS or SASL (see docs/configuration.md,
``[kafka]``), so the Kafka side is tested up to aiokafka: the keyword arguments, the
``SSLContext`` they carry, and that aiokafka's clients accept them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiokafka.errors
import aiomqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hierfl.config import EdgeSettings, FogSettings, KafkaSettings, MqttSettings
from hierfl.errors import BrokerUnavailableError, ConfigError, DisconnectedError
from hierfl.transport.kafka import kafka_client_kwargs, map_kafka_errors
from hierfl.transport.mqtt import map_mqtt_errors
from hierfl.transport.tls import client_ssl_context, find_ssl_error

SECRET = "hunter2-do-not-print"  # noqa: S105 - a test value that must never be printed


# --- a small PKI --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, a server certificate and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path  # the client key, encrypted with SECRET
    ca_name: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
    sans: list[x509.GeneralName] | None = None, usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False),
            critical=True,
        ).add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    else:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path, *, ca_name: str = "hierfl test CA", client: str = "edge-1") -> Pki:
    """A CA, a server certificate for 127.0.0.1 / localhost, and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)

    def key_file(name: str, key: ec.EllipticCurvePrivateKey, password: str | None = None) -> Path:
        enc: serialization.KeySerializationEncryption = serialization.NoEncryption()
        if password is not None:
            enc = serialization.BestAvailableEncryption(password.encode())
        p = folder / name
        p.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8, enc))
        p.chmod(0o600)
        return p

    def cert_file(name: str, cert: x509.Certificate) -> Path:
        p = folder / name
        p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return p

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("localhost", server_key, ca_name, ca_key,
                   sans=[x509.DNSName("localhost"),
                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                   usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _cert(client, client_key, ca_name, ca_key,
                        usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        ca=cert_file("ca.pem", ca),
        server_cert=cert_file("server.pem", server),
        server_key=key_file("server.key", server_key),
        client_cert=cert_file("client.pem", client_cert),
        client_key=key_file("client.key", client_key),
        client_key_encrypted=key_file("client-enc.key", client_key, SECRET),
        ca_name=ca_name,
    )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper().startswith("HIERFL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _edge(**mqtt: object) -> EdgeSettings:
    return EdgeSettings.load(fog_id="g", edge_id="e", mqtt=mqtt)


# --- MQTT settings ------------------------------------------------------------------------------


def test_mqtts_url_defaults_to_port_8883() -> None:
    s = MqttSettings(url="mqtts://broker.example")
    assert (s.tls, s.host, s.port) == (True, "broker.example", 8883)
    plain = MqttSettings(url="mqtt://broker.example")
    assert (plain.tls, plain.port) == (False, 1883)
    assert MqttSettings(url="mqtts://b:9883").port == 9883


@pytest.mark.parametrize("url", ["http://b", "ssl://b:8883", "mqtts://", "mqtts://b:x"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.url"):
        _edge(url=url)


def test_mutual_tls_settings_load(pki: Pki) -> None:
    s = _edge(url="mqtts://127.0.0.1", ca_file=str(pki.ca), cert_file=str(pki.client_cert),
              key_file=str(pki.client_key), tls_server_name="localhost").mqtt
    assert (s.ca_file, s.cert_file, s.key_file) == (pki.ca, pki.client_cert, pki.client_key)
    assert s.tls_server_name == "localhost"


def test_relative_tls_paths_are_taken_from_the_config_folder(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: pytest.MonkeyPatch
) -> None:
    # Prepare: a kit folder holding the TOML and its files; run from elsewhere
    toml = pki.ca.parent / "edge.toml"
    toml.write_text('fog_id = "g"\nedge_id = "e"\n[mqtt]\nurl = "mqtts://b"\n'
                    'ca_file = "ca.pem"\ncert_file = "client.pem"\nkey_file = "client.key"\n')
    monkeypatch.chdir(tmp_path)
    # Execute
    s = EdgeSettings.load(toml)
    # Assert
    assert s.mqtt.ca_file == pki.ca
    assert s.mqtt.key_file == pki.client_key


def test_missing_tls_file_names_field_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    with pytest.raises(ConfigError) as info:
        _edge(url="mqtts://b", ca_file=str(missing))
    assert "mqtt.ca_file" in str(info.value)
    assert str(missing) in str(info.value)
    assert "HIERFL_MQTT__CA_FILE" in str(info.value)


def test_cert_without_key_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        _edge(url="mqtts://b", cert_file=str(pki.client_cert))
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        _edge(url="mqtts://b", key_file=str(pki.client_key))
    with pytest.raises(ConfigError, match="key_password is set but key_file is not"):
        _edge(url="mqtts://b", key_password=SECRET)


@pytest.mark.parametrize("field", ["ca_file", "cert_file", "tls_server_name"])
def test_tls_settings_with_a_plain_url_are_refused(pki: Pki, field: str) -> None:
    values = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
              "key_file": str(pki.client_key), "tls_server_name": "localhost"}
    kwargs = {field: values[field]}
    if field == "cert_file":
        kwargs["key_file"] = values["key_file"]
    with pytest.raises(ConfigError, match=rf"{field}.* need an mqtts:// url"):
        _edge(url="mqtt://b", **kwargs)


def test_mqtt_tls_from_environment(pki: Pki, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HIERFL_MQTT__URL", "mqtts://gw.example")
    clean_env.setenv("HIERFL_MQTT__CA_FILE", str(pki.ca))
    clean_env.setenv("HIERFL_MQTT__CERT_FILE", str(pki.client_cert))
    clean_env.setenv("HIERFL_MQTT__KEY_FILE", str(pki.client_key_encrypted))
    clean_env.setenv("HIERFL_MQTT__KEY_PASSWORD", SECRET)
    clean_env.setenv("HIERFL_MQTT__PASSWORD", SECRET)
    s = EdgeSettings.load(fog_id="g", edge_id="e")
    assert s.mqtt.key_password is not None
    assert s.mqtt.key_password.get_secret_value() == SECRET
    assert SECRET not in repr(s)
    assert SECRET not in str(s)


# --- Kafka settings -----------------------------------------------------------------------------


def _fog(**kafka: object) -> FogSettings:
    return FogSettings.load(fog_id="g", kafka=kafka)


def test_kafka_defaults_to_plaintext() -> None:
    s = KafkaSettings()
    assert s.security_protocol == "PLAINTEXT"
    assert not s.tls
    assert kafka_client_kwargs(s) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("missing", ["sasl_mechanism", "sasl_username", "sasl_password"])
def test_sasl_needs_mechanism_username_and_password(missing: str) -> None:
    sasl = {"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "fog-g",
            "sasl_password": SECRET}
    del sasl[missing]
    with pytest.raises(ConfigError, match=f"SASL_PLAINTEXT needs {missing}") as info:
        _fog(security_protocol="SASL_PLAINTEXT", **sasl)
    assert SECRET not in str(info.value)


def test_sasl_fields_need_a_sasl_protocol() -> None:
    with pytest.raises(ConfigError, match="need security_protocol SASL_PLAINTEXT or SASL_SSL"):
        _fog(security_protocol="SSL", sasl_username="u")


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_tls_files_need_a_tls_protocol(pki: Pki, protocol: str) -> None:
    sasl = {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": SECRET}
    extra = sasl if protocol.startswith("SASL") else {}
    with pytest.raises(ConfigError, match="ca_file need security_protocol SSL or SASL_SSL") as i:
        _fog(security_protocol=protocol, ca_file=str(pki.ca), **extra)
    assert SECRET not in str(i.value)


def test_kafka_cert_without_key_and_missing_files(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        _fog(security_protocol="SSL", cert_file=str(pki.client_cert))
    with pytest.raises(ConfigError, match=r"kafka\.key_file") as info:
        _fog(security_protocol="SSL", cert_file=str(pki.client_cert),
             key_file=str(tmp_path / "gone.key"))
    assert str(tmp_path / "gone.key") in str(info.value)


def test_unknown_protocol_or_mechanism_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.security_protocol"):
        _fog(security_protocol="TLS")
    with pytest.raises(ConfigError, match=r"kafka\.sasl_mechanism"):
        _fog(security_protocol="SASL_SSL", sasl_mechanism="GSSAPI", sasl_username="u",
             sasl_password=SECRET)


def test_kafka_security_from_environment(pki: Pki, clean_env: pytest.MonkeyPatch) -> None:
    # Prepare
    for key, value in {
        "SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "SCRAM-SHA-256",
        "SASL_USERNAME": "fog-g", "SASL_PASSWORD": SECRET, "CA_FILE": str(pki.ca),
    }.items():
        clean_env.setenv(f"HIERFL_KAFKA__{key}", value)
    # Execute
    s = FogSettings.load(fog_id="g").kafka
    # Assert
    assert (s.security_protocol, s.sasl_mechanism, s.sasl_username) == (
        "SASL_SSL", "SCRAM-SHA-256", "fog-g")
    assert s.sasl_password is not None
    assert s.sasl_password.get_secret_value() == SECRET
    assert s.ca_file == pki.ca
    assert SECRET not in repr(s)


def test_config_error_never_shows_a_password(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HIERFL_KAFKA__SASL_PASSWORD", SECRET)
    clean_env.setenv("HIERFL_MQTT__PASSWORD", SECRET)
    with pytest.raises(ConfigError) as info:
        FogSettings.load(fog_id="g", mqtt={"url": "mqtt://b", "key_password": SECRET})
    assert "kafka" in str(info.value)
    assert "mqtt" in str(info.value)
    assert SECRET not in str(info.value)


# --- the aiokafka seam --------------------------------------------------------------------------


def _sasl_ssl(pki: Pki, **extra: object) -> KafkaSettings:
    return _fog(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                sasl_username="fog-g", sasl_password=SECRET, ca_file=str(pki.ca),
                **extra).kafka


def test_kafka_kwargs_carry_tls_and_sasl(pki: Pki) -> None:
    kwargs = kafka_client_kwargs(_sasl_ssl(pki))
    ctx = kwargs.pop("ssl_context")
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "fog-g",
        "sasl_plain_password": SECRET,
    }
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    subjects = [dict(n[0] for n in c["subject"]) for c in ctx.get_ca_certs()]
    assert subjects == [{"commonName": pki.ca_name}]


def test_kafka_ssl_without_ca_uses_system_cas_and_client_cert(pki: Pki) -> None:
    s = _fog(security_protocol="SSL", cert_file=str(pki.client_cert),
             key_file=str(pki.client_key_encrypted), key_password=SECRET).kafka
    kwargs = kafka_client_kwargs(s)
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_kafka_sasl_plaintext_has_no_ssl_context() -> None:
    s = _fog(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
             sasl_password=SECRET).kafka
    assert "ssl_context" not in kafka_client_kwargs(s)


async def test_aiokafka_clients_accept_the_kwargs(pki: Pki) -> None:
    # Prepare
    kwargs = kafka_client_kwargs(_sasl_ssl(pki))
    # Execute: aiokafka checks the combination in its constructors
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", **kwargs)
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", **kwargs)
    admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9", **kwargs)
    try:
        # Assert
        for client in (producer.client, consumer._client, admin._client):
            assert client._security_protocol == "SASL_SSL"
            assert client._ssl_context is kwargs["ssl_context"]
            assert client._sasl_mechanism == "SCRAM-SHA-512"
            assert client._sasl_plain_password == SECRET
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()


def test_wrong_key_password_is_a_config_error(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="cannot load the client certificate") as info:
        client_ssl_context(ca_file=pki.ca, cert_file=pki.client_cert,
                           key_file=pki.client_key_encrypted,
                           key_password=None, section="mqtt")  # no passphrase given
    assert SECRET not in str(info.value)


def test_tls_server_name_overrides_the_checked_name(pki: Pki) -> None:
    ctx = client_ssl_context(ca_file=pki.ca, server_name="localhost")
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="127.0.0.1")
    assert obj.server_hostname == "localhost"


# --- TLS errors map to BrokerUnavailableError ---------------------------------------------------


def _verify_failure() -> ssl.SSLCertVerificationError:
    return ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] unknown CA")


def _raise_hidden(outer: Exception, inner: OSError, *, hide: bool) -> None:
    """Raise ``outer`` while handling ``inner``; ``hide`` as aiomqtt does (``from None``)."""
    try:
        raise inner
    except OSError as exc:
        if hide:
            raise outer from None
        raise outer from exc


def test_mqtt_tls_failure_on_connect_is_broker_unavailable() -> None:
    # aiomqtt raises MqttError(str(exc)) from None: the SSL error is only the context
    exc = aiomqtt.MqttError("certificate verify failed")
    with (pytest.raises(BrokerUnavailableError) as info,
          map_mqtt_errors("connect", url="mqtts://gw:8883")):
        _raise_hidden(exc, _verify_failure(), hide=True)
    assert "TLS" in str(info.value)
    assert "mqtts://gw:8883" in str(info.value)
    assert find_ssl_error(info.value) is not None


def test_mqtt_ssl_error_after_connect_is_a_disconnect() -> None:
    with pytest.raises(DisconnectedError), map_mqtt_errors("publish"):
        _raise_hidden(aiomqtt.MqttError("EOF"), ssl.SSLEOFError(8, "EOF"), hide=False)


def test_kafka_tls_failure_is_broker_unavailable() -> None:
    exc = aiokafka.errors.KafkaConnectionError("closed")
    with pytest.raises(BrokerUnavailableError, match="TLS"), map_kafka_errors("connect"):
        _raise_hidden(exc, _verify_failure(), hide=False)
