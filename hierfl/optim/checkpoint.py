"""A server optimiser's state saved beside the cloud's model versions (npz, no pickle).

Version ``v``'s state is ``<store_dir>/optim/v<v:08d>.npz``, written atomically *before* the
version's record; the record's ``server_opt`` entry names the file and its sha256::

    "server_opt": {"name": "fedadam", "step": 12, "file": "optim/v00000012.npz",
                   "sha256": "...", "config": {...}}

so a version exists with the optimiser state it was produced with, and a restart resumes from
the newest version's state. Older state files than the newest ``keep`` are removed.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from hierfl.errors import StoreError
from hierfl.model.store import _atomic_write
from hierfl.offload import threaded
from hierfl.optim.server import ServerOptimizer

__all__ = ["restore_control", "restore_state", "save_control", "save_state"]

log = logging.getLogger(__name__)
_DIR = "optim"


@threaded
def save_state(store_dir: Path, version: int, opt: ServerOptimizer,
               keep: int = 3) -> dict[str, Any]:
    """Write ``opt``'s state for ``version``; return the record's ``server_opt`` entry.

    Raises:
        StoreError: if it cannot be written.
    """
    rel = f"{_DIR}/v{version:08d}.npz"
    data = _write_npz(store_dir, rel, opt.state(), "v", keep,
                      f"the server optimiser state of v{version}")
    return {"name": opt.config.name, "step": opt.t, "file": rel,
            "sha256": hashlib.sha256(data).hexdigest(), "config": opt.config.to_json()}


def restore_state(store_dir: Path, meta: dict[str, Any], opt: ServerOptimizer) -> bool:
    """Load into ``opt`` the state a version's record names (its ``server_opt`` entry).

    Returns:
        True when restored; False when the record has no state of this optimiser (a store
        from a run without it, or with another optimiser: ``opt`` starts fresh, logged).

    Raises:
        StoreError: the named state file is missing, altered (sha256) or malformed.
    """
    entry = meta.get("server_opt")
    if not isinstance(entry, dict):
        return False
    if entry.get("name") != opt.config.name:
        log.warning("cloud: the checkpoint's server optimiser is %s, now %s: starting fresh",
                    entry.get("name"), opt.config.name)
        return False
    arrays = _read_npz(store_dir, entry, "server optimiser state")
    opt.load_state(arrays)
    return True


@threaded
def save_control(store_dir: Path, version: int, control: np.ndarray,
                 keep: int = 3) -> dict[str, Any]:
    """Write SCAFFOLD's cloud control variate ``c`` of ``version``
    (``<store_dir>/optim/c<v:08d>.npz``); return the record's ``scaffold`` entry.

    Raises:
        StoreError: if it cannot be written.
    """
    rel = f"{_DIR}/c{version:08d}.npz"
    data = _write_npz(store_dir, rel, {"c": np.asarray(control, dtype=np.float32)}, "c", keep,
                      f"the SCAFFOLD control variate of v{version}")
    return {"file": rel, "sha256": hashlib.sha256(data).hexdigest()}


def restore_control(store_dir: Path, meta: dict[str, Any], size: int) -> np.ndarray | None:
    """The control variate a version's record names (its ``scaffold`` entry), or None.

    Raises:
        StoreError: the named file is missing, altered, malformed or of another size.
    """
    entry = meta.get("scaffold")
    if not isinstance(entry, dict):
        return None
    arrays = _read_npz(store_dir, entry, "SCAFFOLD control variate")
    path = Path(store_dir) / str(entry.get("file", ""))
    try:
        c = np.asarray(arrays["c"], dtype=np.float32).reshape(-1)
    except (KeyError, ValueError) as exc:
        raise StoreError(f"SCAFFOLD control variate {path} is malformed: {exc}") from exc
    if c.size != size or not np.isfinite(c).all():
        raise StoreError(f"SCAFFOLD control variate {path}: {c.size} values or not finite")
    return c


def _write_npz(store_dir: Path, rel: str, arrays: dict[str, Any], prefix: str, keep: int,
               what: str) -> bytes:
    """Write ``arrays`` as npz to ``<store_dir>/<rel>`` atomically (the model store's writer),
    keep the newest ``keep`` files named ``<prefix>*.npz``; return the bytes written."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    folder = Path(store_dir) / _DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(Path(store_dir) / rel, data)
    except OSError as exc:
        raise StoreError(f"cannot write {what}: {exc}") from exc
    for p in sorted(folder.glob(f"{prefix}*.npz"))[:-keep]:
        p.unlink(missing_ok=True)
    return data


def _read_npz(store_dir: Path, entry: dict[str, Any], what: str) -> dict[str, np.ndarray]:
    """The arrays of the npz file a record's ``entry`` names, checked against its sha256.

    Raises:
        StoreError: the file is missing, altered or malformed.
    """
    path = Path(store_dir) / str(entry.get("file", ""))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{what} {path} is unreadable: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise StoreError(f"{what} {path} fails its sha256 check")
    try:
        # SAFETY: allow_pickle stays False: a state file must never run code.
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise StoreError(f"{what} {path} is malformed: {exc}") from exc
