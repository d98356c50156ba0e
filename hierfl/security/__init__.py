"""Identities and trust: party ids, the trust bundle, the revocation list, signing keys.

Frame signatures themselves live in :mod:`hierfl.wire.signing`; provisioning in
:mod:`hierfl.provision`. Threat model and controls: ``docs/security.md``.
"""

from hierfl.security.trust import (
    Party,
    TrustStore,
    cloud_party,
    edge_party,
    fog_party,
    load_signing_key,
    parse_party,
)

__all__ = [
    "Party",
    "TrustStore",
    "cloud_party",
    "edge_party",
    "fog_party",
    "load_signing_key",
    "parse_party",
]
