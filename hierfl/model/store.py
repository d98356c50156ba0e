"""Versioned model checkpoints on disk: safetensors weights + JSON metadata, no pickle.

Each version ``v`` is two files in the store directory::

    v00000042.safetensors    named tensors (loadable as a torch state_dict)
    v00000042.json           version, parent, round, fogs, metrics, layout, sha256, ...

The JSON file is written last, atomically (temp file + rename): a version exists once its
JSON exists and the weights' sha256 matches. A torn write is therefore invisible, and
:meth:`ModelStore.latest` skips a corrupt version with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from hierfl.errors import StoreError
from hierfl.model.flatten import flatten, unflatten
from hierfl.types import Float32Vector
from hierfl.wire.frames import LayoutEntry

__all__ = ["Checkpoint", "ModelStore", "load_weights_file"]

log = logging.getLogger(__name__)
_NAME = re.compile(r"^v(\d{8})\.json$")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One stored model version."""

    version: int
    weights: Float32Vector
    layout: tuple[LayoutEntry, ...]
    meta: dict[str, Any] = field(default_factory=dict)


def _sha256(vec: Float32Vector) -> str:
    return hashlib.sha256(np.ascontiguousarray(vec, dtype="<f4").tobytes()).hexdigest()


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
    """A directory of model versions.

    Args:
        root: the directory (created if missing).
        keep: keep only the newest ``keep`` versions (None keeps all).
    """

    def __init__(self, root: str | Path, *, keep: int | None = None) -> None:
        self.root = Path(root)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)

    def _paths(self, version: int) -> tuple[Path, Path]:
        stem = f"v{version:08d}"
        return self.root / f"{stem}.safetensors", self.root / f"{stem}.json"

    def versions(self) -> list[int]:
        """Stored versions, ascending (by their metadata files)."""
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _NAME.match(p.name)))

    def save(
        self,
        version: int,
        weights: Float32Vector,
        layout: tuple[LayoutEntry, ...],
        meta: dict[str, Any],
    ) -> Checkpoint:
        """Write version ``version`` atomically and return it.

        Raises:
            StoreError: if the version exists already or cannot be written.
        """
        st, js = self._paths(version)
        if js.exists():
            raise StoreError(f"version {version} already exists in {self.root}")
        named = {n: np.ascontiguousarray(a) for n, a in unflatten(weights, layout).items()}
        full = dict(meta)
        full.update(
            version=version,
            sha256=_sha256(weights),
            num_params=int(weights.size),
            layout=[[e.name, list(e.shape)] for e in layout],
            weights_file=st.name,
        )
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
        """Read and verify one version.

        Raises:
            StoreError: if it is missing or fails its checksum.
        """
        st, js = self._paths(version)
        try:
            meta = json.loads(js.read_text())
            named = load_file(str(st))
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read version {version}: {exc}") from exc
        layout = tuple(LayoutEntry(n, tuple(s)) for n, s in meta["layout"])
        try:
            vec = np.concatenate([named[e.name].reshape(-1) for e in layout]).astype(np.float32)
        except KeyError as exc:
            raise StoreError(f"version {version} lacks tensor {exc}") from exc
        if _sha256(vec) != meta.get("sha256"):
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
