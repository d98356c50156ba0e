"""Build a model store with real Ed25519 keys and signed lineage, and tamper with it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hierfl.model.store import ModelStore, record_hash
from hierfl.security.trust import TrustStore
from hierfl.wire.frames import LayoutEntry
from hierfl.wire.signing import Signer

FED = "city"
LAYOUT = (LayoutEntry("w", (4, 3)), LayoutEntry("b", (3,)))
# Fog -> its edges in the bundle; the first two of each contribute to every version.
EDGES = {"north": ("n0", "n1", "n2"), "south": ("s0", "s1", "s2")}


@dataclass
class Federation:
    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pids = ["cloud"]
        for fog, edges in EDGES.items():
            pids.append(f"fog/{fog}")
            pids += [f"edge/{fog}/{e}" for e in edges]
        self.keys = {pid: Ed25519PrivateKey.generate() for pid in pids}
        self.signers = {pid: Signer(pid, k, FED) for pid, k in self.keys.items()}

    def trust(self) -> TrustStore:
        return TrustStore.from_parties({p: k.public_key() for p, k in self.keys.items()}, FED)

    def edge_entry(self, fog: str, edge: str, base: int) -> dict[str, Any]:
        h = hashlib.sha256(f"update {fog}/{edge}@{base}".encode()).digest()
        sb = self.signers[f"edge/{fog}/{edge}"].sign("update", fog, base, 3, h)
        return {
            "edge": edge,
            "base": sb.base,
            "seq": sb.seq,
            "ctr": sb.counter,
            "h": sb.payload_hash.hex(),
            "sig": sb.signature.hex(),
        }

    def aggregate(self, fog: str, base: int, *, signer: str | None = None) -> dict[str, Any]:
        h = hashlib.sha256(f"aggregate {fog}@{base}".encode()).digest()
        sb = self.signers[signer or f"fog/{fog}"].sign("aggregate", fog, base, 1, h)
        edges = [self.edge_entry(fog, e, base) for e in EDGES[fog][:2]]
        return {"fog": fog, "sig": sb.to_json(), "edges": edges}

    def meta(self, version: int) -> dict[str, Any]:
        if version == 0:
            return {
                "parent": None,
                "round": 0,
                "fogs": {},
                "created_at": 1.7e9,
                "lineage": {"aggregates": [], "signed": True},
            }
        aggs = [self.aggregate(fog, version - 1) for fog in EDGES]
        fogs = {
            fog: {
                "num_samples": 100,
                "num_edges": 2,
                "contributors": list(EDGES[fog][:2]),
                "fog_rounds": 1,
                "metrics": {"loss": 0.5},
            }
            for fog in EDGES
        }
        return {
            "parent": version - 1,
            "round": version,
            "fogs": fogs,
            "num_samples": 200,
            "aggregator": "fedavg",
            "created_at": 1.7e9 + version,
            "lineage": {"aggregates": aggs, "signed": True},
        }


def weights(version: int) -> np.ndarray:
    return (np.arange(15, dtype=np.float32) * 0.1 + version).astype(np.float32)


def build_store(
    root: Path, versions: int = 4, fed: Federation | None = None, **kw: Any
) -> Federation:
    """An honest store of ``versions`` versions (0 .. versions - 1)."""
    fed = fed or Federation()
    store = ModelStore(root, **kw)
    for v in range(versions):
        store.save(v, weights(v), LAYOUT, fed.meta(v), sign=fed.signers["cloud"].sign_record)
    return fed


def rewrite(
    root: Path, version: int, edit: Callable[[dict[str, Any]], None], *, rehash: bool
) -> None:
    """Edit a stored record in place, recomputing its record_hash if ``rehash``."""
    path = root / f"v{version:08d}.json"
    record = json.loads(path.read_text())
    edit(record)
    if rehash:
        record["record_hash"] = record_hash(record)
    path.write_text(json.dumps(record, indent=2, sort_keys=True))
