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

Group commit (:meth:`Spool.put_batch`): the fog writes the updates that arrived in a burst
into ONE batch file (``v<version>-s<seq>-b<n>-n<count>.hfb``) and makes it durable with one
``fsync`` of the file and one of the directory, instead of one file and one ``fsync`` per
update (3.5 ms each on the disk measured in docs/scale.md). One file, not one per update:
``fsync`` works on one file, so ``k`` files need ``k`` of them (only ``syncfs`` covers many,
and it flushes every other writer on the file system too). The file is written under a
``.tmp`` name and renamed once its bytes are on disk, so a crash before the ``fsync`` leaves
only a torn ``.tmp`` (removed when the spool is opened) and no update of that burst comes
back: the fog counts an update as accepted only after its batch is durable. Batch format
(no pickle): ``HFLSPB1\n``, a big-endian u32 count, then per update a u16 edge id length,
a u32 frame length, the CRC-32 of edge id and frame, the edge id (ASCII) and the frame bytes.
Single-update files (``v<version>-s<seq>-<edge>.hfl``, :meth:`Spool.put`, the layout before
group commit) are still read back and replayed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hierfl.errors import StoreError
from hierfl.offload import threaded

__all__ = ["MAX_BATCH", "Spool", "SpoolRecord"]

log = logging.getLogger(__name__)
_NAME = re.compile(r"^v(\d+)-s(\d+)-([A-Za-z0-9_-]{1,64})\.hfl$")
_FORWARDED = re.compile(r"^forwarded-v(\d+)\.agg$")
_BATCH = re.compile(r"^v(\d+)-s(\d+)-b(\d+)-n(\d+)\.hfb$")
_EDGE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAGIC = b"HFLSPB1\n"
_COUNT = struct.Struct(">I")
_ENTRY = struct.Struct(">HII")  # edge id length, frame length, CRC-32 of both
#: the most updates one batch file holds (the fog starts another batch past it)
MAX_BATCH = 1024


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One stored update, as the restart replay reads it.

    Attributes:
        version: the global version of the round that accepted it.
        seq: that round's fog round number.
        edge: the edge id.
        path: the file holding it (a batch file holds several records).
        index: its place in a batch file; None for a single-update ``.hfl`` file.
        data: the frame bytes as received; None when unreadable (``error`` says why).
        error: why the record could not be read, or None.
    """

    version: int
    seq: int
    edge: str
    path: Path
    index: int | None
    data: bytes | None
    error: StoreError | None = None


def encode_batch(items: Sequence[tuple[str, bytes]]) -> bytes:
    """The batch file bytes for ``(edge, frame)`` pairs (see the module docstring).

    Raises:
        StoreError: an edge id that a spool file name could not carry, or too many items.
    """
    if len(items) > MAX_BATCH:
        raise StoreError(f"a spool batch holds at most {MAX_BATCH} updates, got {len(items)}")
    parts = [_MAGIC, _COUNT.pack(len(items))]
    for edge, data in items:
        if not _EDGE.match(edge):
            raise StoreError(f"edge id {edge!r} cannot be spooled")
        e = edge.encode("ascii")
        parts += [_ENTRY.pack(len(e), len(data), zlib.crc32(data, zlib.crc32(e))), e, data]
    return b"".join(parts)


def decode_batch(blob: bytes) -> list[tuple[str, bytes] | StoreError]:
    """The ``(edge, frame)`` pairs of a batch file, in order; a damaged entry comes back as
    a :class:`StoreError` in its place (the entries before it stay readable).

    Raises:
        StoreError: the file is not a batch file, or its layout is broken (nothing past the
            break can be located).
    """
    if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + _COUNT.size:
        raise StoreError("not a spool batch file")
    (count,) = _COUNT.unpack_from(blob, len(_MAGIC))
    if count > MAX_BATCH:
        raise StoreError(f"spool batch claims {count} updates (at most {MAX_BATCH})")
    pos = len(_MAGIC) + _COUNT.size
    out: list[tuple[str, bytes] | StoreError] = []
    for i in range(count):
        if pos + _ENTRY.size > len(blob):
            raise StoreError(f"spool batch truncated at entry {i} of {count}")
        elen, dlen, crc = _ENTRY.unpack_from(blob, pos)
        pos += _ENTRY.size
        if pos + elen + dlen > len(blob):
            raise StoreError(f"spool batch truncated at entry {i} of {count}")
        e, data = blob[pos:pos + elen], blob[pos + elen:pos + elen + dlen]
        pos += elen + dlen
        edge = e.decode("ascii", errors="replace")
        if zlib.crc32(data, zlib.crc32(e)) != crc or not _EDGE.match(edge):
            out.append(StoreError(f"spool batch entry {i}: checksum mismatch"))
        else:
            out.append((edge, data))
    if pos != len(blob):
        raise StoreError(f"spool batch has {len(blob) - pos} bytes past its {count} entries")
    return out


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
        batches = 0
        for p in self.root.iterdir():
            if p.suffix == ".tmp":
                p.unlink(missing_ok=True)
            elif m := _BATCH.match(p.name):
                batches = max(batches, int(m.group(3)))
        self._next_batch = batches + 1  # batch numbers order replay within a round

    @threaded
    def put(self, version: int, seq: int, edge: str, data: bytes) -> Path:
        """Store one accepted frame durably (fsync + atomic rename); return its path."""
        path = self.root / f"v{version}-s{seq}-{edge}.hfl"
        self._write(path, data)
        return path

    @threaded
    def put_batch(self, version: int, seq: int, items: Sequence[tuple[str, bytes]]) -> Path:
        """Store a burst of accepted frames ``(edge, frame bytes)`` of round ``(version,
        seq)`` durably, in one batch file: one ``fsync`` of the file, one of the directory.

        Returns:
            The batch file's path (for :meth:`keep_only`).

        Raises:
            StoreError: an edge id a file cannot carry, or more than :data:`MAX_BATCH`.
            OSError: the write failed (nothing of the burst is stored then).
        """
        data = encode_batch(items)
        n, self._next_batch = self._next_batch, self._next_batch + 1
        path = self.root / f"v{version}-s{seq}-b{n}-n{len(items)}.hfb"
        self._write(path, data)
        self._sync_dir()
        return path

    @threaded
    def keep_only(self, path: Path, keep: Sequence[int]) -> Path | None:
        """Rewrite the batch file ``path`` with only its entries at ``keep`` (the updates the
        round then took; it refused the others), or remove it when none is kept.

        The new file replaces the old one only once its bytes are on disk: a crash in
        between leaves the old file (whose refused entries a restart judges again).

        Returns:
            The new file's path, or None when nothing was kept.

        Raises:
            StoreError: ``path`` is not a readable batch file.
        """
        m = _BATCH.match(path.name)
        if m is None:
            raise StoreError(f"{path.name} is not a spool batch file")
        if not keep:
            path.unlink(missing_ok=True)
            return None
        try:
            entries = decode_batch(path.read_bytes())
        except OSError as exc:
            raise StoreError(f"cannot read spool batch {path.name}: {exc}") from exc
        wanted = set(keep)
        kept = [e for i, e in enumerate(entries)
                if i in wanted and not isinstance(e, StoreError)]
        new = path.with_name(f"v{m.group(1)}-s{m.group(2)}-b{m.group(3)}-n{len(kept)}.hfb")
        if new != path:
            self._write(new, encode_batch(kept))
            path.unlink(missing_ok=True)
        return new

    def depth(self) -> int:
        """Updates stored (read from the file names only: cheap enough for a gauge)."""
        n = 0
        for p in self.root.iterdir():
            if _NAME.match(p.name):
                n += 1
            elif m := _BATCH.match(p.name):
                n += int(m.group(4))
        return n

    def _sync_dir(self) -> None:
        """fsync the spool directory: the renames into it survive a power loss."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @threaded
    def put_forwarded(self, version: int, data: bytes) -> None:
        """Store the aggregate for global ``version`` (encoded) before it is sent; older
        ones are removed."""
        self._write(self.root / f"forwarded-v{version}.agg", data)
        self.drop_forwarded(before=version)

    @threaded
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

    @threaded
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

    def _files(self) -> list[tuple[int, int, int, Path, int]]:
        """Update files as ``(version, seq, order, path, updates)`` in replay order: oldest
        round first, single-update files (order 0) before batches, batches as written."""
        out = []
        for p in self.root.iterdir():
            if m := _NAME.match(p.name):
                out.append((int(m.group(1)), int(m.group(2)), 0, p, 1))
            elif m := _BATCH.match(p.name):
                out.append((int(m.group(1)), int(m.group(2)), int(m.group(3)), p,
                            int(m.group(4))))
        return sorted(out)

    def records(self) -> Iterator[SpoolRecord]:
        """Every stored update, in replay order (one batch file in memory at a time).

        Read-only, like :meth:`entries`. An unreadable file or entry comes back with
        ``data`` None and ``error`` set; a file removed meanwhile is skipped."""
        for v, s, _, p, _n in self._files():
            single = _NAME.match(p.name)
            if single:
                try:
                    yield SpoolRecord(v, s, single.group(3), p, None, p.read_bytes())
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    yield SpoolRecord(v, s, single.group(3), p, None, None,
                                      StoreError(f"cannot read {p.name}: {exc}"))
                continue
            try:
                entries = decode_batch(p.read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, StoreError) as exc:
                err = exc if isinstance(exc, StoreError) else StoreError(str(exc))
                yield SpoolRecord(v, s, "", p, 0, None, err)
                continue
            for i, e in enumerate(entries):
                if isinstance(e, StoreError):
                    yield SpoolRecord(v, s, "", p, i, None, e)
                else:
                    yield SpoolRecord(v, s, e[0], p, i, e[1])

    def entries(self) -> list[tuple[int, int, str, Path]]:
        """Stored frames as ``(version, seq, edge, path)``, oldest round first (a batch
        file is listed once per update it holds).

        Read-only: a ``.tmp`` file is a write in flight (or a torn one, removed when the
        spool was opened) and is never listed nor touched here."""
        return [(r.version, r.seq, r.edge, r.path) for r in self.records()]

    @threaded
    def drop_except(self, keep: tuple[int, int] | None) -> int:
        """Remove every frame not of round ``keep`` = ``(version, seq)``; return how many."""
        n = 0
        for v, s, _, p, count in self._files():
            if (v, s) != keep:
                p.unlink(missing_ok=True)
                n += count
        return n
