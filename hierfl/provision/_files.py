"""File writing for provisioning: atomic replacement, and private files created 0600."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["write_atomic", "write_private"]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never reuse (and never follow a link at) a path someone else created; the mode is
    # set at creation, so the data is never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically: write a temporary file beside it, then rename.

    A reader (a running fog re-reading ``revoked.json``) sees the old or the new file, never a
    partial one. A file replaced keeps its owner and group when this process may set them (an
    operator who gave the broker's ACL to the ``mosquitto`` user keeps it readable by the
    broker after ``add-edge`` or ``revoke``).

    Args:
        path: the file to write.
        data: its new content.
        mode: permission bits of the new file (before the umask).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        _write_new(tmp, data, mode)
        try:
            old = path.stat()
        except FileNotFoundError:
            old = None
        if old is not None and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
            with contextlib.suppress(PermissionError):
                os.chown(tmp, old.st_uid, old.st_gid)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Write a private key or another secret: created with mode 0600, replaced atomically.

    WARNING: never chmod a secret after writing it, and never log ``data``.

    Args:
        path: the file to write.
        data: the secret.
    """
    write_atomic(path, data, mode=0o600)
