"""A fog's on-disk spool of accepted update frames, so a crash loses nothing accepted.

An update is written (atomically) once the fog accepts it and removed once its content is
durable elsewhere: folded into a fog model published retained on MQTT, or forwarded to
Kafka inside an aggregate. After a restart the fog replays the spool into the resumed
round; frames for another round are refused there as stale and dropped. Files hold the
frame bytes exactly as received (wire format v1, no pickle).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

__all__ = ["Spool"]

log = logging.getLogger(__name__)
_NAME = re.compile(r"^v(\d+)-s(\d+)-([A-Za-z0-9_-]{1,64})\.hfl$")


class Spool:
    """Accepted frames of the open fog round, one file each.

    Args:
        root: the spool directory (created if missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, version: int, seq: int, edge: str, data: bytes) -> None:
        """Store one accepted frame durably (fsync + atomic rename)."""
        path = self.root / f"v{version}-s{seq}-{edge}.hfl"
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def entries(self) -> list[tuple[int, int, str, Path]]:
        """Stored frames as ``(version, seq, edge, path)``, oldest round first."""
        out = []
        for p in self.root.iterdir():
            m = _NAME.match(p.name)
            if m:
                out.append((int(m.group(1)), int(m.group(2)), m.group(3), p))
            elif p.suffix == ".tmp":
                p.unlink(missing_ok=True)  # a torn write from a crash
        return sorted(out)

    def drop_except(self, keep: tuple[int, int] | None) -> int:
        """Remove every frame not of round ``keep`` = ``(version, seq)``; return how many."""
        n = 0
        for v, s, _, p in self.entries():
            if (v, s) != keep:
                p.unlink(missing_ok=True)
                n += 1
        return n
