"""A fog's on-disk spool of accepted update frames, so a crash loses nothing accepted.

An update is written (atomically) once the fog accepts it and removed once its content is
durable elsewhere: folded into a fog model published retained on MQTT, or forwarded to
Kafka inside an aggregate. After a restart the fog replays the spool into the resumed
round; frames for another round are refused there as stale and dropped. Files hold the
frame bytes exactly as received (wire format v1, no pickle).

The spool also keeps the fog model last published (``fog-model.hfm``, written before it is
published: the fog resumes from it even when the MQTT broker lost its retained copy), and
the fog's last aggregate, written before it is sent to Kafka
(``forwarded-v<version>.agg``, the signed frame bytes): a fog killed after closing its
cloud round resumes as *forwarded* and sends the same bytes again, instead of collecting
the finished round a second time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

__all__ = ["Spool"]

log = logging.getLogger(__name__)
_NAME = re.compile(r"^v(\d+)-s(\d+)-([A-Za-z0-9_-]{1,64})\.hfl$")
_FORWARDED = re.compile(r"^forwarded-v(\d+)\.agg$")


class Spool:
    """Accepted frames of the open fog round, one file each.

    Args:
        root: the spool directory (created if missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # Torn writes from a crash are removed here, once, before any writer of this
        # process exists: removing ``.tmp`` files later (e.g. while listing) could delete a
        # write in flight in a worker thread and lose an accepted update.
        for p in self.root.iterdir():
            if p.suffix == ".tmp":
                p.unlink(missing_ok=True)

    def put(self, version: int, seq: int, edge: str, data: bytes) -> Path:
        """Store one accepted frame durably (fsync + atomic rename); return its path."""
        path = self.root / f"v{version}-s{seq}-{edge}.hfl"
        self._write(path, data)
        return path

    def put_forwarded(self, version: int, data: bytes) -> None:
        """Store the aggregate for global ``version`` (encoded) before it is sent; older
        ones are removed."""
        self._write(self.root / f"forwarded-v{version}.agg", data)
        self.drop_forwarded(before=version)

    def put_model(self, data: bytes, folded: dict[str, object] | None = None) -> None:
        """Store the fog model about to be published (its encoded frame), replacing the last:
        the fog resumes from it even when the broker lost its retained copy. ``folded``
        (JSON: the model's version, seq and the updates already in it) goes beside it."""
        if folded is not None:
            self._write(self.root / "fog-model.json", json.dumps(folded).encode())
        self._write(self.root / "fog-model.hfm", data)

    def model(self) -> bytes | None:
        """The stored fog model frame, if any."""
        try:
            return (self.root / "fog-model.hfm").read_bytes()
        except OSError:
            return None

    def model_folded(self, version: int, seq: int) -> frozenset[tuple[str, int]]:
        """The updates ``(edge, base seq)`` in the stored fog model ``(version, seq)``
        (empty if the record is missing, unreadable or of another model)."""
        try:
            rec = json.loads((self.root / "fog-model.json").read_bytes())
            if (rec["version"], rec["seq"]) != (version, seq):
                return frozenset()
            return frozenset((str(e), int(b)) for e, b in rec["folded"])
        except (OSError, ValueError, KeyError, TypeError):
            return frozenset()

    def forwarded(self) -> tuple[int, bytes] | None:
        """The newest stored aggregate as ``(version, frame bytes)``, if any."""
        found = sorted((int(m.group(1)), p) for p in self.root.iterdir()
                       if (m := _FORWARDED.match(p.name)))
        if not found:
            return None
        version, path = found[-1]
        try:
            return version, path.read_bytes()
        except OSError:
            return None

    def drop_forwarded(self, *, before: int | None = None) -> None:
        """Remove stored aggregates (those of versions below ``before``, if given)."""
        for p in self.root.iterdir():
            m = _FORWARDED.match(p.name)
            if m and (before is None or int(m.group(1)) < before):
                p.unlink(missing_ok=True)

    def _write(self, path: Path, data: bytes) -> None:
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
        """Stored frames as ``(version, seq, edge, path)``, oldest round first.

        Read-only: a ``.tmp`` file is a write in flight (or a torn one, removed when the
        spool was opened) and is never listed nor touched here."""
        out = []
        for p in self.root.iterdir():
            m = _NAME.match(p.name)
            if m:
                out.append((int(m.group(1)), int(m.group(2)), m.group(3), p))
        return sorted(out)

    def drop_except(self, keep: tuple[int, int] | None) -> int:
        """Remove every frame not of round ``keep`` = ``(version, seq)``; return how many."""
        n = 0
        for v, s, _, p in self.entries():
            if (v, s) != keep:
                p.unlink(missing_ok=True)
                n += 1
        return n
