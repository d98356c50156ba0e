"""One startup kit per party: its TOML, signing key, TLS client material and trust files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from hierfl.provision import kafka, pki
from hierfl.provision._files import write_atomic, write_private
from hierfl.provision.project import Party, ProjectSpec

__all__ = ["KitMaterial", "kit_toml", "write_kit"]


@dataclass(frozen=True, slots=True)
class KitMaterial:
    """The secrets and files that go into one kit.

    Attributes:
        signing_key: the party's Ed25519 key.
        client: its TLS client key and certificate (``None`` without TLS).
        ca_pem: the CA certificate (``None`` without TLS).
        sasl_password: its Kafka SCRAM password (cloud and fogs with TLS).
    """

    signing_key: ed25519.Ed25519PrivateKey
    client: pki.Issued | None = None
    ca_pem: bytes | None = None
    sasl_password: str | None = None


def _s(value: str) -> str:
    # A JSON string is a valid TOML basic string for everything we write (ids, URLs, names).
    return json.dumps(value)


def kit_toml(spec: ProjectSpec, party: Party, *, tls: bool) -> str:
    """The TOML of a party's kit; its paths are relative to the kit folder.

    Args:
        spec: the project.
        party: the kit's party.
        tls: whether the kit holds TLS client material.

    Returns:
        The file's text.
    """
    lines = [f"# Startup kit of {party.id} in hierfl federation {spec.federation!r}.",
             f"federation = {_s(spec.federation)}"]
    if party.fog is not None:
        lines.append(f"fog_id = {_s(party.fog)}")
    if party.edge is not None:
        lines.append(f"edge_id = {_s(party.edge)}")
    if party.role == "cloud":
        lines.append(f"fogs = [{', '.join(_s(f) for f in spec.fogs)}]")
        lines.append(f"min_fogs = {spec.min_fogs or len(spec.fogs)}")
    lines += [
        "",
        "[security]",
        'signing = "required"',
        'key_file = "signing.key"',
        'trust_bundle = "trust.json"',
        'revocation_list = "revoked.json"',
    ]
    if party.role == "fog":
        lines.append('state_dir = "state"  # replay counters')
    files = ['ca_file = "ca.crt"', 'cert_file = "client.crt"', 'key_file = "client.key"']
    if party.role in ("fog", "edge"):
        lines += ["", "[mqtt]", f"url = {_s(spec.mqtt_url)}", *(files if tls else [])]
    if party.role in ("fog", "cloud"):
        lines += ["", "[kafka]", f"bootstrap = {_s(spec.kafka_bootstrap)}"]
        if tls:
            lines += ['security_protocol = "SSL"', *files]
    return "\n".join(lines) + "\n"


_TOML_NAME = {"cloud": "cloud.toml", "fog": "fog.toml", "edge": "edge.toml"}


def write_kit(
    kit: Path,
    spec: ProjectSpec,
    party: Party,
    material: KitMaterial,
    *,
    trust: bytes,
    revoked: bytes,
) -> None:
    """Create a party's kit folder and write everything into it.

    Args:
        kit: the kit folder (must not exist yet).
        spec: the project.
        party: the party.
        material: its keys and certificates.
        trust: the bytes of ``trust.json``.
        revoked: the bytes of ``revoked.json``.
    """
    kit.mkdir(mode=0o700)
    tls = material.client is not None
    write_atomic(kit / _TOML_NAME[party.role], kit_toml(spec, party, tls=tls).encode())
    write_private(kit / "signing.key", pki.private_pem(material.signing_key))
    write_atomic(kit / "trust.json", trust)
    write_atomic(kit / "revoked.json", revoked)
    if party.role == "fog":
        (kit / "state").mkdir(mode=0o700)
    if material.client is None or material.ca_pem is None:
        return
    key_pem = pki.private_pem(material.client.key)
    crt_pem = pki.cert_pem(material.client.cert)
    write_private(kit / "client.key", key_pem)
    write_atomic(kit / "client.crt", crt_pem)
    write_atomic(kit / "ca.crt", material.ca_pem)
    if party.role in ("fog", "cloud"):
        write_private(kit / "client.pem", key_pem + crt_pem)
        props = kafka.client_properties(bootstrap=spec.kafka_bootstrap)
        write_atomic(kit / "kafka-ssl.properties", props.encode())
        if material.sasl_password is not None:
            sasl = kafka.client_properties(
                bootstrap=spec.kafka_bootstrap, sasl_user=party.id,
                sasl_password=material.sasl_password,
            )
            write_private(kit / "kafka-sasl.properties", sasl.encode())
