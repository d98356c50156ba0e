"""provision(): key file modes, certificate chain and SANs, trust files, ACLs, add-edge, revoke."""

from __future__ import annotations

import base64
import ipaddress
import json
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from hierfl.errors import ConfigError
from hierfl.provision import ProjectSpec, Provisioned, add_edge, open_provisioned, provision, revoke
from hierfl.provision.cli import provision_app

SPEC = ProjectSpec(
    "city",
    {"north": ("n0", "n1"), "south": ("s0",)},
    mqtt_hosts=("mqtt.example.org", "127.0.0.1"),
    kafka_hosts=("kafka.example.org", "10.0.0.7"),
    mqtt_url="mqtts://mqtt.example.org:8883",
    kafka_bootstrap="kafka.example.org:9093",
)
KEY_NAMES = {"signing.key", "client.key", "client.pem", "server.key", "server.pem", "ca.key",
             "scram-users.sh", "kafka-sasl.properties", "acl"}


@pytest.fixture(scope="module")
def prov(tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    return provision(SPEC, tmp_path_factory.mktemp("prov") / "out")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_secret_is_0600(prov: Provisioned) -> None:
    secrets = [p for p in prov.out.rglob("*") if p.name in KEY_NAMES]
    assert len(secrets) > 20
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # and nothing else holds a private key
    for path in prov.out.rglob("*"):
        if path.is_file() and path not in secrets:
            assert b"PRIVATE KEY" not in path.read_bytes(), path
    assert not list(prov.kits_dir.rglob("ca.key"))


def test_kits_and_client_certs(prov: Provisioned) -> None:
    ca = _cert(prov.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert set(prov.kits) == {p.id for p in SPEC.parties}
    for party, kit in prov.kits.items():
        cert = _cert(kit / "client.crt")
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == party
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
        key = serialization.load_pem_private_key((kit / "client.key").read_bytes(), None)
        assert key.public_key() == cert.public_key()
        assert (kit / "ca.crt").read_bytes() == prov.ca_cert.read_bytes()
        for name in ("trust.json", "revoked.json"):
            assert (kit / name).read_bytes() == (prov.out / name).read_bytes()


def test_server_certs_have_sans(prov: Provisioned) -> None:
    ca = _cert(prov.ca_cert)
    for folder, dns, ip in (
        (prov.mosquitto_dir, "mqtt.example.org", "127.0.0.1"),
        (prov.kafka_dir, "kafka.example.org", "10.0.0.7"),
    ):
        cert = _cert(folder / "server.crt")
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [dns]
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(ip)]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in eku


def test_trust_bundle_matches_signing_keys(prov: Provisioned) -> None:
    doc = json.loads(prov.trust_bundle.read_text())
    assert doc["format"] == "hierfl-trust/1"
    assert doc["federation"] == "city"
    assert doc["created_at"].endswith("Z")
    parties = doc["parties"]
    assert parties["cloud"]["role"] == "cloud" and set(parties["cloud"]) == {"role", "ed25519"}
    assert {k: v for k, v in parties["fog/south"].items() if k != "ed25519"} == {
        "role": "fog", "fog": "south"}
    assert {k: v for k, v in parties["edge/north/n1"].items() if k != "ed25519"} == {
        "role": "edge", "fog": "north", "edge": "n1"}
    for party, kit in prov.kits.items():
        key = serialization.load_pem_private_key((kit / "signing.key").read_bytes(), None)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        assert base64.b64decode(parties[party]["ed25519"]) == raw
    revoked = json.loads(prov.revocation_list.read_text())
    assert revoked == {"format": "hierfl-revoked/1", "federation": "city", "revoked": []}


def test_kit_tomls(prov: Provisioned) -> None:
    edge = tomllib.loads(prov.kit_config("edge/north/n0").read_text())
    assert edge["federation"] == "city" and edge["fog_id"] == "north" and edge["edge_id"] == "n0"
    assert edge["security"] == {"signing": "required", "key_file": "signing.key",
                                "trust_bundle": "trust.json", "revocation_list": "revoked.json"}
    assert edge["mqtt"] == {"url": "mqtts://mqtt.example.org:8883", "ca_file": "ca.crt",
                            "cert_file": "client.crt", "key_file": "client.key"}
    assert "kafka" not in edge
    fog = tomllib.loads(prov.kit_config("fog/north").read_text())
    assert fog["security"]["state_dir"] == "state" and (prov.fog_kit("north") / "state").is_dir()
    assert fog["kafka"]["security_protocol"] == "SSL"
    assert fog["kafka"]["bootstrap"] == "kafka.example.org:9093"
    cloud = tomllib.loads(prov.kit_config("cloud").read_text())
    assert cloud["fogs"] == ["north", "south"] and cloud["min_fogs"] == 2
    assert "mqtt" not in cloud


def test_mosquitto_acl(prov: Provisioned) -> None:
    blocks = (prov.mosquitto_dir / "acl").read_text().split("\n\n")
    edge = next(b for b in blocks if b.startswith("user edge/north/n0\n")).splitlines()[1:]
    assert sorted(edge) == sorted([
        "topic write hierfl/city/north/update/n0",
        "topic write hierfl/city/north/update/n0/~chunk/+",
        "topic write hierfl/city/north/status/n0",
        "topic read hierfl/city/north/model",
        "topic read hierfl/city/north/model/~chunk/+",
        "topic read hierfl/city/north/delta",
        "topic read hierfl/city/north/delta/~chunk/+",
    ])
    fog = next(b for b in blocks if b.startswith("user fog/south\n")).splitlines()[1:]
    assert "topic read hierfl/city/south/update/+" in fog
    assert "topic read hierfl/city/south/update/+/~chunk/+" in fog
    assert "topic read hierfl/city/south/status/+" in fog
    assert "topic readwrite hierfl/city/south/model" in fog
    assert "topic write hierfl/city/south/delta" in fog
    assert "topic write hierfl/city/south/stats" in fog
    assert all("/north/" not in line for line in fog)
    assert "user cloud" not in "\n".join(blocks)
    conf = (prov.mosquitto_dir / "mosquitto.conf").read_text()
    for line in ("listener 8883", "require_certificate true", "use_identity_as_username true",
                 "allow_anonymous false"):
        assert line in conf


def test_kafka_material(prov: Provisioned) -> None:
    acls = (prov.kafka_dir / "acls.sh").read_text()
    assert ("--allow-principal User:cloud --operation Read --operation Describe "
            "--group hierfl-cloud-city") in acls
    assert ("--allow-principal User:fog/north --operation Write --operation Describe "
            "--topic hierfl.city.aggregates") in acls
    scram = (prov.kafka_dir / "scram-users.sh").read_text()
    assert scram.count("SCRAM-SHA-512=[password=") == 3  # cloud + 2 fogs, no edges
    sasl = (prov.cloud_kit / "kafka-sasl.properties").read_text()
    password = sasl.split('password="')[1].split('"')[0]
    assert len(password) >= 32 and password in scram


def test_refuses_to_overwrite(prov: Provisioned, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="already provisioned"):
        provision(SPEC, prov.out)
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        provision(SPEC, tmp_path, force=True)
    assert (tmp_path / "mine.txt").exists()


def test_force_replaces(tmp_path: Path) -> None:
    first = provision(SPEC, tmp_path / "o", tls=False)
    old = first.trust_bundle.read_bytes()
    second = provision(SPEC, tmp_path / "o", tls=False, force=True)
    assert second.trust_bundle.read_bytes() != old


def test_without_tls(tmp_path: Path) -> None:
    prov = provision(SPEC, tmp_path / "o", tls=False)
    kit = prov.edge_kit("north", "n0")
    assert sorted(p.name for p in kit.iterdir()) == [
        "edge.toml", "revoked.json", "signing.key", "trust.json"]
    assert not prov.ca_dir.exists() and not prov.mosquitto_dir.exists()
    assert tomllib.loads((kit / "edge.toml").read_text())["mqtt"] == {
        "url": "mqtts://mqtt.example.org:8883"}


def test_add_edge_updates_every_copy(tmp_path: Path) -> None:
    prov = provision(SPEC, tmp_path / "o")
    new = add_edge(prov.out, "south", "s9")
    assert open_provisioned(prov.out).spec.fogs["south"] == ("s0", "s9")
    doc = json.loads(new.trust_bundle.read_text())
    assert doc["parties"]["edge/south/s9"]["fog"] == "south"
    central = new.trust_bundle.read_bytes()
    for kit in new.kits.values():
        assert (kit / "trust.json").read_bytes() == central
    kit = new.edge_kit("south", "s9")
    _cert(kit / "client.crt").verify_directly_issued_by(_cert(new.ca_cert))
    assert stat.S_IMODE((kit / "signing.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((kit / "client.key").stat().st_mode) == 0o600
    assert "user edge/south/s9\ntopic write hierfl/city/south/update/s9\n" in (
        new.mosquitto_dir / "acl").read_text()
    with pytest.raises(ConfigError, match="already enrolled"):
        add_edge(prov.out, "south", "s9")
    with pytest.raises(ConfigError, match="not part of"):
        add_edge(prov.out, "west", "w0")


def test_revoke_updates_every_copy(tmp_path: Path) -> None:
    prov = provision(SPEC, tmp_path / "o")
    assert revoke(prov.out, "edge/north/n0", reason="stolen")
    assert not revoke(prov.out, "edge/north/n0")
    doc = json.loads(prov.revocation_list.read_text())
    assert [(e["party"], e["reason"]) for e in doc["revoked"]] == [("edge/north/n0", "stolen")]
    for kit in prov.kits.values():
        assert (kit / "revoked.json").read_bytes() == prov.revocation_list.read_bytes()
    acl = (prov.mosquitto_dir / "acl").read_text()
    assert "user edge/north/n0\n" not in acl and "user edge/north/n1\n" in acl
    assert revoke(prov.out, "fog/south")
    assert "User:fog/south" not in (prov.kafka_dir / "acls.sh").read_text()
    assert "--remove --allow-principal User:fog/south" in (
        prov.kafka_dir / "revocations.sh").read_text()
    with pytest.raises(ConfigError, match="not a party"):
        revoke(prov.out, "edge/north/zz")
    assert not list(prov.out.rglob(".*.tmp"))


def test_cli(tmp_path: Path) -> None:
    project = tmp_path / "project.toml"
    project.write_text("federation = 'city'\n[fogs.north]\nedges = 2\n")
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(provision_app, ["init", "--project", str(project), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "PRIVATE" not in result.output
    assert (out / "kits" / "edge-north-e001" / "edge.toml").exists()
    result = runner.invoke(provision_app, ["init", "--project", str(project), "--out", str(out)])
    assert result.exit_code == 2 and "--force" in result.output
    result = runner.invoke(provision_app, ["add-edge", "--out", str(out), "--fog", "north",
                                           "--edge", "late"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(provision_app, ["revoke", "--out", str(out), "edge/north/late",
                                           "--reason", "lost"])
    assert result.exit_code == 0, result.output
    assert "edge/north/late" in (out / "kits" / "fog-north" / "revoked.json").read_text()
    result = runner.invoke(provision_app, ["init", "--project", str(tmp_path / "x.toml"),
                                           "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "cannot read project file" in result.output


def test_replaced_files_keep_their_owner(tmp_path: Path) -> None:
    """The broker's ACL given to the broker's user stays readable by it after a rewrite."""
    import os

    from hierfl.provision._files import write_atomic

    if os.getuid() != 0:
        pytest.skip("changing a file's owner needs root")  # CI runs as root
    path = tmp_path / "acl"
    write_atomic(path, b"one", mode=0o600)
    os.chown(path, 12345, 12345)
    write_atomic(path, b"two", mode=0o600)
    assert path.read_bytes() == b"two"
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (12345, 12345)
    assert st.st_mode & 0o077 == 0
