"""The sim's identities: provisioning its topology, each tier's security and MQTT TLS
sections, the TLS mosquitto with a read-only observer, and the report's signed check."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hierfl.config import MqttSettings
from hierfl.errors import ConfigError
from hierfl.provision._files import write_private

if TYPE_CHECKING:
    from hierfl.provision import Provisioned
    from hierfl.sim.brokers import MqttTls

__all__ = [
    "OBSERVER_USER",
    "mqtt_section",
    "newest_version_signed",
    "provision_sim",
    "security_section",
    "tls_material",
]

#: TLS client-certificate CN (and MQTT username) of the sim's observer, which has no party id:
#: it may read the federation's MQTT topics (an ACL block of its own) and sign nothing.
OBSERVER_USER = "sim-observer"


def provision_sim(federation: str, fogs: dict[str, tuple[str, ...]], out: Path, *, mqtt_url: str,
                  bootstrap: str, tls: bool) -> Provisioned:
    """Keys, trust files and kits of the sim's topology (``fogs``) in ``<out>/pki``, replaced
    every run.

    Without TLS this costs about a millisecond per party; with TLS a CA, certificates and the
    mosquitto ACL are made too.
    """
    from hierfl.provision import ProjectSpec, provision  # noqa: PLC0415

    spec = ProjectSpec(
        federation=federation, fogs=fogs,
        mqtt_hosts=("127.0.0.1", "localhost"), mqtt_url=mqtt_url, kafka_bootstrap=bootstrap,
    )
    return provision(spec, out.resolve() / "pki", tls=tls, force=True)


def security_section(prov: Provisioned | None, party: str) -> dict[str, Any]:
    """The whole ``security`` section of ``party``: from its kit, or signatures off.

    Every field is given, None included: a field left out would be filled from a
    ``HIERFL_SECURITY__*`` variable of this process's environment.
    """
    sec: dict[str, Any] = {"signing": "off", "key_file": None, "trust_bundle": None,
                           "revocation_list": None, "state_dir": None}
    if prov is None:
        return sec
    kit = prov.kit(party)
    sec.update(signing="required", key_file=kit / "signing.key",
               trust_bundle=kit / "trust.json", revocation_list=kit / "revoked.json")
    if party.startswith("fog/"):
        sec["state_dir"] = kit / "state"  # replay counters
    return sec


def mqtt_section(url: str, prov: Provisioned | None, party: str) -> dict[str, Any]:
    """The ``mqtt`` connection of ``party``: with TLS, its kit's CA and client certificate."""
    if prov is None or not prov.tls:
        return {"url": url}
    kit = prov.kit(party)
    return {"url": url, "ca_file": kit / "ca.crt", "cert_file": kit / "client.crt",
            "key_file": kit / "client.key", "key_password": None, "tls_server_name": None}


def tls_material(prov: Provisioned, url: str) -> tuple[MqttTls, MqttSettings]:
    """The TLS mosquitto of a provisioned sim, and the observer's MQTT settings.

    The observer is no party of the federation: it gets a client certificate of its own
    (CN ``sim-observer``, from the provisioned CA) and a read-only ACL block for the
    federation's topics, appended to a copy of the provisioned ACL that only the sim's broker
    uses. It needs no Kafka credentials (Tansu is PLAINTEXT).
    """
    from hierfl.provision import mosquitto_tls_conf  # noqa: PLC0415
    from hierfl.provision.pki import cert_pem, issue_client, load_ca, private_pem  # noqa: PLC0415
    from hierfl.sim.brokers import MqttTls  # noqa: PLC0415
    from hierfl.topics import PREFIX  # noqa: PLC0415

    ca = load_ca((prov.ca_dir / "ca.key").read_bytes(), prov.ca_cert.read_bytes())
    issued = issue_client(ca, OBSERVER_USER)
    folder = prov.out / OBSERVER_USER
    folder.mkdir(mode=0o700)
    key, crt = folder / "client.key", folder / "client.crt"
    write_private(key, private_pem(issued.key))
    crt.write_bytes(cert_pem(issued.cert))
    acl = folder / "acl"
    provisioned_acl = (prov.mosquitto_dir / "acl").resolve()
    acl.write_text(provisioned_acl.read_text() + (
        f"\n# The sim's observer (hierfl.sim.observer): it reads, never writes.\n"
        f"user {OBSERVER_USER}\ntopic read {PREFIX}/{prov.spec.federation}/#\n"
    ))
    acl.chmod(0o600)

    def conf(port: int) -> str:
        text = mosquitto_tls_conf(prov, port)
        line = f"acl_file {provisioned_acl}"
        if line not in text:
            raise ConfigError(f"the TLS mosquitto configuration has no {line!r} to replace")
        return text.replace(line, f"acl_file {acl.resolve()}")

    observer = MqttSettings(url=url, ca_file=prov.ca_cert, cert_file=crt, key_file=key)
    return MqttTls(conf, ca_file=prov.ca_cert, cert_file=crt, key_file=key), observer


def newest_version_signed(store_dir: Path) -> bool | None:
    """``lineage.signed`` of the newest checkpoint (None: no checkpoint, or unreadable)."""
    from hierfl.errors import HierflError  # noqa: PLC0415
    from hierfl.model.store import ModelStore  # noqa: PLC0415

    try:
        store = ModelStore(store_dir, create=False)
        versions = store.versions()
        if not versions:
            return None
        lineage = store.read_record(versions[-1]).get("lineage")
    except (HierflError, OSError):
        return None
    return bool(lineage.get("signed")) if isinstance(lineage, dict) else None
