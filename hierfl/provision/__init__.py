"""Startup kits for a federation (``hierfl provision``): CA, certificates, signing keys, ACLs.

Usage::

    from hierfl.provision import ProjectSpec, provision

    spec = ProjectSpec(federation="city", fogs={"north": ("n0", "n1")})
    prov = provision(spec, Path("fed"))
    prov.edge_kit("north", "n0")          # fed/kits/edge-north-n0
"""

from __future__ import annotations

from hierfl.provision.layout import Provisioned, open_provisioned
from hierfl.provision.mosquitto import mosquitto_tls_conf
from hierfl.provision.project import Party, ProjectSpec, load_project, parse_party
from hierfl.provision.provisioner import add_edge, provision, revoke

__all__ = [
    "Party",
    "ProjectSpec",
    "Provisioned",
    "add_edge",
    "load_project",
    "mosquitto_tls_conf",
    "open_provisioned",
    "parse_party",
    "provision",
    "revoke",
]
