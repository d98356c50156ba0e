"""The trust bundle (``trust.json``) and the revocation list (``revoked.json``): build, read, write.

``trust.json``::

    {"format": "hierfl-trust/1", "federation": "city", "created_at": "2026-12-06T03:40:00Z",
     "parties": {"cloud": {"role": "cloud", "ed25519": "<base64 of the raw 32-byte key>"},
                 "fog/north": {"role": "fog", "fog": "north", "ed25519": "..."},
                 "edge/north/n0": {"role": "edge", "fog": "north", "edge": "n0",
                                   "ed25519": "..."}}}

``revoked.json``::

    {"format": "hierfl-revoked/1", "federation": "city",
     "revoked": [{"party": "edge/north/n0", "at": "<ISO 8601 UTC>", "reason": "..."}]}

``created_at`` is when that version of the bundle was written (``add-edge`` writes a new one).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from hierfl.errors import ConfigError
from hierfl.provision.project import Party

__all__ = [
    "REVOKED_FORMAT",
    "TRUST_FORMAT",
    "dumps",
    "iso_now",
    "read_json",
    "revocation_list",
    "trust_bundle",
    "trust_entry",
]

TRUST_FORMAT = "hierfl-trust/1"
REVOKED_FORMAT = "hierfl-revoked/1"


def iso_now() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def trust_entry(party: Party, ed25519_b64: str) -> dict[str, str]:
    """The ``parties`` entry of one party."""
    entry = {"role": party.role}
    if party.fog is not None:
        entry["fog"] = party.fog
    if party.edge is not None:
        entry["edge"] = party.edge
    entry["ed25519"] = ed25519_b64
    return entry


def trust_bundle(
    federation: str, parties: dict[str, dict[str, str]], *, created_at: str | None = None
) -> dict[str, Any]:
    """A ``trust.json`` document.

    Args:
        federation: the federation id.
        parties: party id -> :func:`trust_entry`.
        created_at: the timestamp to record (default: now).

    Returns:
        The document.
    """
    return {
        "format": TRUST_FORMAT,
        "federation": federation,
        "created_at": created_at or iso_now(),
        "parties": parties,
    }


def revocation_list(federation: str, revoked: list[dict[str, str]]) -> dict[str, Any]:
    """A ``revoked.json`` document with the given entries (``party``, ``at``, ``reason``)."""
    return {"format": REVOKED_FORMAT, "federation": federation, "revoked": revoked}


def dumps(doc: dict[str, Any]) -> bytes:
    """Serialize a document the way every copy of it is written (UTF-8 JSON, newline)."""
    return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def read_json(path: Path, fmt: str) -> dict[str, Any]:
    """Read a JSON document and check its ``format``.

    Args:
        path: the file.
        fmt: the expected ``format`` value.

    Returns:
        The document.

    Raises:
        ConfigError: if it cannot be read, is not JSON or has another format.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise ConfigError(f"{path} is not a {fmt} document")
    return doc
