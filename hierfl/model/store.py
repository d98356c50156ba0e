"""Versioned model checkpoints on disk: safetensors weights + JSON metadata, no pickle.

Each version ``v`` is two files in the store directory::

    v00000042.safetensors    named tensors (loadable as a torch state_dict)
    v00000042.json           version, parent, round, fogs, metrics, layout, sha256, ...

The JSON file is written last, atomically (temp file + rename): a version exists once its
JSON exists and the weights' sha256 matches. A torn write is therefore invisible, and
:meth:`ModelStore.latest` skips a corrupt version with a warning.

Records are hash-chained: each JSON holds ``parent_sha256`` (the parent's weights sha256),
``parent_record`` (the parent's ``record_hash``) and ``record_hash``, the sha256 of the
record's canonical JSON (:func:`record_hash`) without that field. The parent of ``v`` is
``v - 1`` when the store holds it; with ``keep`` pruning the oldest versions away, the chain
starts at the oldest version present. :mod:`hierfl.model.lineage` audits a whole store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from hierfl.errors import StoreError
from hierfl.model.flatten import flatten, unflatten
from hierfl.offload import threaded
from hierfl.types import Float32Vector
from hierfl.wire.frames import LayoutEntry

__all__ = [
    "Checkpoint",
    "ModelStore",
    "canonical_json",
    "load_weights_file",
    "record_hash",
    "weights_sha256",
]

log = logging.getLogger(__name__)
_NAME = re.compile(r"^v(\d{8})\.json$")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One stored model version."""

    version: int
    weights: Float32Vector
    layout: tuple[LayoutEntry, ...]
    meta: dict[str, Any] = field(default_factory=dict)


def weights_sha256(vec: Float32Vector) -> str:
    """The sha256 hex of a flat float32 vector's little-endian bytes."""
    return hashlib.sha256(np.ascontiguousarray(vec, dtype="<f4").tobytes()).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj``: sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_hash(record: dict[str, Any]) -> str:
    """The sha256 hex of ``record``'s canonical JSON, its own ``record_hash`` and
    ``record_sig`` left out."""
    body = {k: v for k, v in record.items() if k not in ("record_hash", "record_sig")}
    return hashlib.sha256(canonical_json(body)).hexdigest()


#: Signs a record hash: ``(sha256 bytes) -> (signer party id, 64-byte Ed25519 signature)``.
RecordSigner = Callable[[bytes], tuple[str, bytes]]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_weights_file(path: str | Path) -> tuple[Float32Vector, tuple[LayoutEntry, ...]]:
    """Read initial weights from ``.npz`` (no pickle) or ``.safetensors``.

    Raises:
        StoreError: if the file is missing, of another type, or unreadable.
    """
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"weights file {p} does not exist")
    try:
        if p.suffix == ".npz":
            # SAFETY: allow_pickle stays False: a weights file must never run code.
            with np.load(p, allow_pickle=False) as z:
                named = {k: z[k] for k in z.files}
        elif p.suffix == ".safetensors":
            named = dict(load_file(str(p)))
        else:
            raise StoreError(f"{p}: expected a .npz or .safetensors file")
    except StoreError:
        raise
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read weights from {p}: {exc}") from exc
    return flatten(named)


class ModelStore:
    """A directory of model versions, their records hash-chained (see the module docstring).

    Args:
        root: the directory (created if missing, unless ``create`` is False).
        keep: keep only the newest ``keep`` versions (None keeps all); the chain then starts
            at the oldest version left.
        create: create ``root`` if missing; False for read-only tools such as an audit.

    Raises:
        StoreError: if ``create`` is False and ``root`` is not a directory.
    """

    def __init__(self, root: str | Path, *, keep: int | None = None, create: bool = True) -> None:
        self.root = Path(root)
        self.keep = keep
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise StoreError(f"model store {self.root} does not exist")

    def _paths(self, version: int) -> tuple[Path, Path]:
        stem = f"v{version:08d}"
        return self.root / f"{stem}.safetensors", self.root / f"{stem}.json"

    def versions(self) -> list[int]:
        """Stored versions, ascending (by their metadata files)."""
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _NAME.match(p.name)))

    def read_record(self, version: int) -> dict[str, Any]:
        """The JSON record of ``version`` as stored, unverified.

        Raises:
            StoreError: if it is missing or not a JSON object.
        """
        js = self._paths(version)[1]
        try:
            record = json.loads(js.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read the record of version {version}: {exc}") from exc
        if not isinstance(record, dict):
            raise StoreError(f"the record of version {version} is not a JSON object")
        return record

    def read_weights(self, version: int, record: dict[str, Any]) -> Float32Vector:
        """The flat weights of ``version``, in the order of ``record``'s layout, unverified.

        Raises:
            StoreError: if the file is unreadable or lacks a tensor of the layout.
        """
        st = self._paths(version)[0]
        try:
            named = load_file(str(st))
            layout = [LayoutEntry(n, tuple(s)) for n, s in record["layout"]]
            parts = [named[e.name].reshape(-1) for e in layout]
        except KeyError as exc:
            raise StoreError(f"version {version} lacks tensor {exc}") from exc
        except (OSError, ValueError, TypeError) as exc:
            raise StoreError(f"cannot read the weights of version {version}: {exc}") from exc
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(parts).astype(np.float32)

    def _parent_links(self, version: int) -> tuple[str | None, str | None]:
        """``(parent_sha256, parent_record)`` for a new ``version``."""
        if not self._paths(version - 1)[1].exists():
            return None, None
        try:
            parent = self.read_record(version - 1)
        except StoreError as exc:
            # The audit will flag the break; refusing to save would stall the federation.
            log.warning("version %d starts a new chain: %s", version, exc)
            return None, None
        return parent.get("sha256"), parent.get("record_hash")

    @threaded
    def save(
        self,
        version: int,
        weights: Float32Vector,
        layout: tuple[LayoutEntry, ...],
        meta: dict[str, Any],
        *,
        sign: RecordSigner | None = None,
    ) -> Checkpoint:
        """Write version ``version`` atomically, chained to ``version - 1``, and return it.

        With ``sign`` (the cloud's key), the record also holds ``record_sig``: a signature of
        ``record_hash``. A hash chain alone can be rewritten whole by whoever may write the
        store; signed records cannot be rewritten without the cloud's key.

        The record is ``meta`` plus ``version``, ``sha256``, ``num_params``, ``layout``,
        ``weights_file``, ``parent_sha256``, ``parent_record`` and ``record_hash``. The
        parent is ``version - 1`` if this store holds it, else none (the first version, or
        the oldest one left after pruning).

        Raises:
            StoreError: if the version exists already, ``meta`` is not JSON-serialisable,
                or it cannot be written.
        """
        st, js = self._paths(version)
        if js.exists():
            raise StoreError(f"version {version} already exists in {self.root}")
        named = {n: np.ascontiguousarray(a) for n, a in unflatten(weights, layout).items()}
        parent_sha, parent_rec = self._parent_links(version)
        full = dict(meta)
        full.update(
            version=version,
            sha256=weights_sha256(weights),
            num_params=int(weights.size),
            layout=[[e.name, list(e.shape)] for e in layout],
            weights_file=st.name,
            parent_sha256=parent_sha,
            parent_record=parent_rec,
        )
        full.pop("record_hash", None)
        full.pop("record_sig", None)
        try:
            # Hash what a reader will parse (int keys become strings, tuples lists, ...).
            full = json.loads(json.dumps(full))
        except (TypeError, ValueError) as exc:
            raise StoreError(f"metadata of version {version} is not JSON: {exc}") from exc
        full["record_hash"] = record_hash(full)
        if sign is not None:
            signer, sig = sign(bytes.fromhex(full["record_hash"]))
            full["record_sig"] = {"signer": signer, "sig": sig.hex()}
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".safetensors.tmp")
            os.close(fd)
            save_file(named, tmp, metadata={"hierfl_version": str(version)})
            Path(tmp).replace(st)
            _atomic_write(js, json.dumps(full, indent=2, sort_keys=True).encode())
        except OSError as exc:
            raise StoreError(f"cannot write version {version}: {exc}") from exc
        self._prune()
        return Checkpoint(version, weights.copy(), layout, full)

    def load(self, version: int) -> Checkpoint:
        """Read and verify one version: its weights' sha256 and its record hash.

        A record written before records were chained (no ``record_hash``) still loads; only
        ``hierfl audit verify`` flags it.

        Raises:
            StoreError: if it is missing, fails its sha256 check, or its record was edited.
        """
        meta = self.read_record(version)
        if "record_hash" in meta and record_hash(meta) != meta["record_hash"]:
            raise StoreError(f"version {version}: its record was edited (record_hash mismatch)")
        try:
            layout = tuple(LayoutEntry(n, tuple(s)) for n, s in meta["layout"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"version {version}: malformed layout in its record") from exc
        vec = self.read_weights(version, meta)
        if weights_sha256(vec) != meta.get("sha256"):
            raise StoreError(f"version {version} fails its sha256 check")
        return Checkpoint(version, vec, layout, meta)

    def latest(self) -> Checkpoint | None:
        """The newest readable version, or None for an empty store."""
        for v in reversed(self.versions()):
            try:
                return self.load(v)
            except StoreError as exc:
                log.warning("skipping checkpoint: %s", exc)
        return None

    def _prune(self) -> None:
        if self.keep is None:
            return
        for v in self.versions()[: -self.keep]:
            for p in self._paths(v):
                p.unlink(missing_ok=True)
