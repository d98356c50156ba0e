"""Where everything of a provisioned federation lives under its output folder.

::

    <out>/provision.json          what was provisioned (the project, tls); add-edge updates it
    <out>/trust.json              the trust bundle (every kit holds a copy)
    <out>/revoked.json            the revocation list (every kit holds a copy)
    <out>/ca/ca.crt, ca.key       the federation CA; ca.key (0600) never leaves this folder
    <out>/kits/cloud/             cloud.toml signing.key client.crt client.key ca.crt ...
    <out>/kits/fog-<F>/           fog.toml ... state/
    <out>/kits/edge-<F>-<E>/      edge.toml ...
    <out>/brokers/mosquitto/      mosquitto.conf acl server.crt server.key ca.crt
    <out>/brokers/kafka/          server.properties server.{crt,key,pem} ca.crt acls.sh
                                  scram-users.sh (0600) revocations.sh clients/
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hierfl.errors import ConfigError
from hierfl.provision.project import Party, ProjectSpec, parse_party, project_from_dict

__all__ = ["STATE_FORMAT", "Provisioned", "open_provisioned"]

STATE_FORMAT = "hierfl-provision/1"
_TOML = {"cloud": "cloud.toml", "fog": "fog.toml", "edge": "edge.toml"}


@dataclass(frozen=True, slots=True)
class Provisioned:
    """A provisioned federation folder and the paths of what is in it.

    Attributes:
        out: the output folder.
        spec: the project, with every edge enrolled so far.
        tls: whether TLS material (CA, certificates, broker files) was made.
    """

    out: Path
    spec: ProjectSpec
    tls: bool

    @property
    def state_file(self) -> Path:
        """``provision.json``."""
        return self.out / "provision.json"

    @property
    def trust_bundle(self) -> Path:
        """The central ``trust.json``."""
        return self.out / "trust.json"

    @property
    def revocation_list(self) -> Path:
        """The central ``revoked.json``."""
        return self.out / "revoked.json"

    @property
    def ca_dir(self) -> Path:
        """Folder of the CA certificate and its private key."""
        return self.out / "ca"

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (PEM)."""
        return self.ca_dir / "ca.crt"

    @property
    def kits_dir(self) -> Path:
        """Folder holding one startup kit per party."""
        return self.out / "kits"

    @property
    def mosquitto_dir(self) -> Path:
        """mosquitto configuration, ACL, server certificate and key."""
        return self.out / "brokers" / "mosquitto"

    @property
    def kafka_dir(self) -> Path:
        """Kafka broker TLS material, client properties, ACL and SCRAM commands."""
        return self.out / "brokers" / "kafka"

    def kit(self, party_id: str) -> Path:
        """The startup kit folder of a party (``cloud``, ``fog/<F>``, ``edge/<F>/<E>``)."""
        return self.kits_dir / parse_party(party_id).kit_name

    @property
    def cloud_kit(self) -> Path:
        """The cloud's kit."""
        return self.kit("cloud")

    def fog_kit(self, fog: str) -> Path:
        """Fog ``fog``'s kit."""
        return self.kit(f"fog/{fog}")

    def edge_kit(self, fog: str, edge: str) -> Path:
        """Edge ``edge`` of fog ``fog``: its kit."""
        return self.kit(f"edge/{fog}/{edge}")

    def kit_config(self, party_id: str) -> Path:
        """The TOML of a party's kit (``cloud.toml``, ``fog.toml`` or ``edge.toml``)."""
        return self.kit(party_id) / _TOML[parse_party(party_id).role]

    @property
    def kits(self) -> dict[str, Path]:
        """Party id -> kit folder, for every party."""
        return {p.id: self.kits_dir / p.kit_name for p in self.spec.parties}

    @property
    def parties(self) -> tuple[Party, ...]:
        """Every party."""
        return self.spec.parties

    def state(self) -> dict[str, Any]:
        """The ``provision.json`` document of this folder."""
        return {"format": STATE_FORMAT, "tls": self.tls, "project": self.spec.to_dict()}


def open_provisioned(out: Path) -> Provisioned:
    """Open a folder written by :func:`hierfl.provision.provision`.

    Args:
        out: the output folder.

    Returns:
        What it holds.

    Raises:
        ConfigError: if it holds no (readable) ``provision.json``.
    """
    path = Path(out) / "provision.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{out} is not a provisioned folder (no provision.json)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path} is not a {STATE_FORMAT} document")
    spec = project_from_dict(doc["project"], source=str(path))
    return Provisioned(Path(out), spec, bool(doc.get("tls", True)))
