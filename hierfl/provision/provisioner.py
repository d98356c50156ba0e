"""Provision a federation, enroll an edge later, revoke a party: the operations behind the CLI."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from hierfl.errors import ConfigError
from hierfl.provision import kafka, mosquitto, pki, trust
from hierfl.provision._files import write_atomic, write_private
from hierfl.provision.kits import KitMaterial, write_kit
from hierfl.provision.layout import Provisioned, open_provisioned
from hierfl.provision.project import Party, ProjectSpec, parse_party
from hierfl.security.trust import edge_party
from hierfl.topics import check_id

__all__ = ["add_edge", "provision", "revoke"]

log = logging.getLogger(__name__)


def _ports(spec: ProjectSpec) -> tuple[int, int, int]:
    """(mosquitto TLS port, Kafka SSL port, Kafka SASL_SSL port = SSL port + 1)."""
    url = urlsplit(spec.mqtt_url)
    mqtt_port = url.port or (8883 if url.scheme == "mqtts" else 1883)
    ssl_port = int(spec.kafka_bootstrap.split(",")[0].rpartition(":")[2])
    return mqtt_port, ssl_port, ssl_port + 1


def _prepare_out(out: Path, *, force: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"{out} exists and is not a folder")
        if (out / "provision.json").exists():
            if not force:
                raise ConfigError(f"{out} is already provisioned; pass --force to replace it")
            shutil.rmtree(out)
        elif any(out.iterdir()):
            # Never delete a folder that `provision` did not write, --force or not.
            raise ConfigError(f"{out} is not empty and not a provisioned folder; choose another")
    out.mkdir(parents=True, exist_ok=True)


def _write_state(prov: Provisioned) -> None:
    write_atomic(prov.state_file, (json.dumps(prov.state(), indent=1) + "\n").encode())


def _write_mosquitto_acl(prov: Provisioned, revoked: set[str]) -> None:
    if prov.tls:
        acl = mosquitto.acl_text(prov.spec, revoked=revoked)
        write_atomic(prov.mosquitto_dir / "acl", acl.encode(), mode=0o600)


def provision(
    spec: ProjectSpec, out: Path, *, tls: bool = True, force: bool = False
) -> Provisioned:
    """Generate keys, certificates, trust files, kits and broker material for a federation.

    Args:
        spec: the project.
        out: the output folder (created; see :mod:`hierfl.provision.layout`).
        tls: also make the CA, certificates and broker files; ``False`` makes only the
            signing keys, trust files and kits (fast, for runs on plain loopback brokers).
        force: replace a folder provisioned before.

    Returns:
        The paths of what was written.

    Raises:
        ConfigError: if ``out`` is provisioned already (and not ``force``), or not empty.
    """
    out = Path(out)
    _prepare_out(out, force=force)
    prov = Provisioned(out, spec, tls)
    signing = {p.id: pki.new_signing_key() for p in spec.parties}
    entries = {p.id: trust.trust_entry(p, pki.ed25519_public_b64(signing[p.id]))
               for p in spec.parties}
    trust_bytes = trust.dumps(trust.trust_bundle(spec.federation, entries))
    revoked_bytes = trust.dumps(trust.revocation_list(spec.federation, []))
    write_atomic(prov.trust_bundle, trust_bytes)
    write_atomic(prov.revocation_list, revoked_bytes)
    ca: pki.Issued | None = None
    ca_pem: bytes | None = None
    passwords: dict[str, str] = {}
    if tls:
        ca = pki.new_ca(spec.federation)
        ca_pem = pki.cert_pem(ca.cert)
        prov.ca_dir.mkdir(mode=0o700)
        write_private(prov.ca_dir / "ca.key", pki.private_pem(ca.key))
        write_atomic(prov.ca_cert, ca_pem)
        passwords = {p.id: secrets.token_urlsafe(24) for p in spec.parties if p.role != "edge"}
        _write_brokers(prov, ca, passwords)
    prov.kits_dir.mkdir()
    for party in spec.parties:
        material = KitMaterial(
            signing[party.id],
            pki.issue_client(ca, party.id) if ca is not None else None,
            ca_pem,
            passwords.get(party.id),
        )
        write_kit(prov.kit(party.id), spec, party, material, trust=trust_bytes,
                  revoked=revoked_bytes)
    _write_state(prov)
    log.info("provisioned %d parties of federation %s in %s", len(entries), spec.federation, out)
    return prov


def _write_brokers(prov: Provisioned, ca: pki.Issued, passwords: dict[str, str]) -> None:
    spec = prov.spec
    ca_pem = pki.cert_pem(ca.cert)
    mqtt_port, ssl_port, sasl_port = _ports(spec)
    mq = prov.mosquitto_dir
    mq.mkdir(parents=True, mode=0o700)
    server = pki.issue_server(ca, spec.mqtt_hosts[0], spec.mqtt_hosts)
    write_private(mq / "server.key", pki.private_pem(server.key))
    write_atomic(mq / "server.crt", pki.cert_pem(server.cert))
    write_atomic(mq / "ca.crt", ca_pem)
    write_atomic(mq / "mosquitto.conf", mosquitto.mosquitto_conf(prov, port=mqtt_port).encode())
    _write_mosquitto_acl(prov, set())
    kd = prov.kafka_dir
    kd.mkdir(parents=True, mode=0o700)
    server = pki.issue_server(ca, spec.kafka_hosts[0], spec.kafka_hosts)
    key_pem, crt_pem = pki.private_pem(server.key), pki.cert_pem(server.cert)
    write_private(kd / "server.key", key_pem)
    write_atomic(kd / "server.crt", crt_pem)
    write_private(kd / "server.pem", key_pem + crt_pem)
    write_atomic(kd / "ca.crt", ca_pem)
    props = kafka.server_properties(ssl_port=ssl_port, sasl_port=sasl_port)
    write_atomic(kd / "server.properties", props.encode())
    write_atomic(kd / "acls.sh", kafka.acl_commands(spec).encode(), mode=0o755)
    write_private(kd / "scram-users.sh", kafka.scram_commands(passwords).encode())


def _revoked(prov: Provisioned) -> dict[str, object]:
    return trust.read_json(prov.revocation_list, trust.REVOKED_FORMAT)


def _write_everywhere(prov: Provisioned, name: str, data: bytes) -> None:
    """Replace ``name`` (trust.json or revoked.json) centrally and in every kit, atomically."""
    write_atomic(prov.out / name, data)
    for kit in prov.kits.values():
        if kit.is_dir():
            write_atomic(kit / name, data)


def add_edge(out: Path, fog: str, edge: str) -> Provisioned:
    """Enroll one more edge in a provisioned federation.

    Makes its signing key (and, with TLS, a client certificate from the existing CA) and its
    kit, adds it to every copy of ``trust.json`` and regenerates the mosquitto ACL.

    Args:
        out: the provisioned folder.
        fog: the fog the edge joins (must exist).
        edge: the new edge id.

    Returns:
        The updated folder.

    Raises:
        ConfigError: if the fog is unknown, the edge exists already or an id is invalid.
    """
    prov = open_provisioned(out)
    check_id("edge", edge)
    if fog not in prov.spec.fogs:
        raise ConfigError(f"fog {fog!r} is not part of federation {prov.spec.federation!r}")
    if edge in prov.spec.fogs[fog]:
        raise ConfigError(f"edge {edge_party(fog, edge)} is already enrolled")
    fogs = dict(prov.spec.fogs)
    fogs[fog] = (*fogs[fog], edge)
    spec = ProjectSpec(
        prov.spec.federation, fogs, mqtt_hosts=prov.spec.mqtt_hosts,
        kafka_hosts=prov.spec.kafka_hosts, mqtt_url=prov.spec.mqtt_url,
        kafka_bootstrap=prov.spec.kafka_bootstrap, min_fogs=prov.spec.min_fogs,
    )
    new = Provisioned(prov.out, spec, prov.tls)
    party = Party("edge", fog, edge)
    signing = pki.new_signing_key()
    doc = trust.read_json(prov.trust_bundle, trust.TRUST_FORMAT)
    doc["parties"][party.id] = trust.trust_entry(party, pki.ed25519_public_b64(signing))
    doc["created_at"] = trust.iso_now()
    trust_bytes = trust.dumps(doc)
    material = KitMaterial(signing)
    if prov.tls:
        ca = pki.load_ca((prov.ca_dir / "ca.key").read_bytes(), prov.ca_cert.read_bytes())
        material = KitMaterial(signing, pki.issue_client(ca, party.id), pki.cert_pem(ca.cert))
    write_kit(new.kit(party.id), spec, party, material, trust=trust_bytes,
              revoked=prov.revocation_list.read_bytes())
    _write_state(new)
    _write_everywhere(new, "trust.json", trust_bytes)
    _write_mosquitto_acl(new, {str(r["party"]) for r in _revoked_entries(new)})
    log.info("enrolled %s in %s", party.id, out)
    return new


def _revoked_entries(prov: Provisioned) -> list[dict[str, str]]:
    entries = _revoked(prov)["revoked"]
    return entries if isinstance(entries, list) else []


def revoke(out: Path, party_id: str, *, reason: str = "") -> bool:
    """Revoke a party: add it to every copy of ``revoked.json`` and drop its broker rights.

    The mosquitto ACL and ``brokers/kafka/acls.sh`` are regenerated without it, and the
    commands that take back its Kafka ACLs and SCRAM user are appended to
    ``brokers/kafka/revocations.sh``.

    Args:
        out: the provisioned folder.
        party_id: ``cloud``, ``fog/<F>`` or ``edge/<F>/<E>``.
        reason: why, recorded in ``revoked.json``.

    Returns:
        ``True`` if revoked now, ``False`` if it was revoked already.

    Raises:
        ConfigError: if the party is not in the trust bundle.
    """
    prov = open_provisioned(out)
    party = parse_party(party_id)
    if party.id not in trust.read_json(prov.trust_bundle, trust.TRUST_FORMAT)["parties"]:
        raise ConfigError(f"{party.id} is not a party of federation {prov.spec.federation!r}")
    doc = _revoked(prov)
    entries = _revoked_entries(prov)
    if any(e.get("party") == party.id for e in entries):
        return False
    entries.append({"party": party.id, "at": trust.iso_now(), "reason": reason})
    doc["revoked"] = entries
    _write_everywhere(prov, "revoked.json", trust.dumps(doc))
    gone = {e["party"] for e in entries}
    _write_mosquitto_acl(prov, gone)
    if prov.tls and party.role != "edge":
        kd = prov.kafka_dir
        write_atomic(kd / "acls.sh", kafka.acl_commands(prov.spec, revoked=gone).encode(),
                     mode=0o755)
        path = kd / "revocations.sh"
        old = path.read_text() if path.exists() else "#!/bin/sh\nset -eu\n"
        text = old + kafka.remove_acl_commands(prov.spec.federation, party.id)
        write_atomic(path, text.encode(), mode=0o755)
    log.info("revoked %s in %s", party.id, out)
    return True
