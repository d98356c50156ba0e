"""Group commit in the fog's spool: one fsync per burst, nothing half-accepted after a crash,
and the layout before group commit (one file per update) still replays."""

from __future__ import annotations

import os

import pytest

from hierfl.errors import StoreError
from hierfl.fog.spool import MAX_BATCH, Spool, decode_batch, encode_batch


@pytest.mark.parametrize("n", [1, 7, 200])
def test_one_fsync_per_burst_whatever_its_size(tmp_path, n, fsync_calls):
    spool = Spool(tmp_path)
    calls = fsync_calls
    items = [(f"e{i}", f"frame-{i}".encode() * 50) for i in range(n)]
    path = spool.put_batch(3, 2, items)
    assert calls == ["file", "dir"]  # the batch file once, then the directory once
    assert path.name == f"v3-s2-b1-n{n}.hfb"
    assert [(r.version, r.seq, r.edge, r.data) for r in spool.records()] == [
        (3, 2, e, d) for e, d in items]
    assert spool.depth() == n
    calls.clear()
    spool.put_batch(3, 2, [("x", b"y")])
    assert calls == ["file", "dir"]


def test_crash_between_write_and_fsync_replays_nothing_of_that_burst(tmp_path, monkeypatch):
    """The fsync of a burst fails (a kill there leaves the same files): none of its updates
    comes back after a restart, while an earlier durable burst does."""
    spool = Spool(tmp_path)
    spool.put_batch(1, 0, [("a", b"durable-a"), ("b", b"durable-b")])

    def crash(fd: int) -> None:
        raise OSError("killed before the fsync returned")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="killed before"):
        spool.put_batch(1, 0, [("c", b"lost-c"), ("d", b"lost-d")])
    # what a kill -9 at that point leaves behind: a torn .tmp beside the durable batch
    (tmp_path / "torn.tmp").write_bytes(encode_batch([("e", b"torn")])[:20])
    monkeypatch.undo()
    restarted = Spool(tmp_path)
    assert [(r.edge, r.data) for r in restarted.records()] == [
        ("a", b"durable-a"), ("b", b"durable-b")]
    assert not list(tmp_path.glob("*.tmp"))
    # batch numbers go on after the ones on disk: a new burst never replaces an old one
    assert restarted.put_batch(1, 0, [("c", b"again")]).name == "v1-s0-b2-n1.hfb"


def test_old_one_file_per_update_layout_still_replays_first(tmp_path):
    spool = Spool(tmp_path)
    spool.put(4, 1, "old1", b"single-1")  # the layout written before group commit
    spool.put(4, 0, "old0", b"single-0")
    spool.put_batch(4, 1, [("new", b"batched")])
    got = [(r.version, r.seq, r.edge, r.index, r.data) for r in spool.records()]
    assert got == [(4, 0, "old0", None, b"single-0"), (4, 1, "old1", None, b"single-1"),
                   (4, 1, "new", 0, b"batched")]
    assert [(v, s, e) for v, s, e, _ in spool.entries()] == [(4, 0, "old0"), (4, 1, "old1"),
                                                              (4, 1, "new")]
    assert spool.depth() == 3
    assert spool.drop_except((4, 1)) == 1
    assert spool.depth() == 2


def test_keep_only_removes_refused_entries(tmp_path):
    spool = Spool(tmp_path)
    path = spool.put_batch(2, 0, [("a", b"1"), ("b", b"2"), ("c", b"3")])
    new = spool.keep_only(path, [0, 2])
    assert new is not None and new.name == "v2-s0-b1-n2.hfb" and not path.exists()
    assert [(r.edge, r.data) for r in spool.records()] == [("a", b"1"), ("c", b"3")]
    assert spool.keep_only(new, []) is None
    assert spool.entries() == [] and spool.depth() == 0


def test_damaged_batch_entry_is_reported_not_replayed(tmp_path):
    spool = Spool(tmp_path)
    path = spool.put_batch(1, 0, [("a", b"good"), ("b", b"will-rot")])
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF  # bit rot in the last frame
    path.write_bytes(bytes(blob))
    recs = list(spool.records())
    assert (recs[0].edge, recs[0].data) == ("a", b"good")
    assert recs[1].data is None and isinstance(recs[1].error, StoreError)
    (tmp_path / "v1-s0-b9-n1.hfb").write_bytes(b"junk")  # not a batch file at all
    bad = [r for r in spool.records() if r.path.name == "v1-s0-b9-n1.hfb"]
    assert len(bad) == 1 and isinstance(bad[0].error, StoreError)


@pytest.mark.parametrize("blob", [b"", b"HFLSPB1\n", encode_batch([("a", b"x")])[:-1],
                                  encode_batch([("a", b"x")]) + b"extra",
                                  b"HFLSPB1\n" + (MAX_BATCH + 1).to_bytes(4, "big")])
def test_decode_batch_refuses_broken_layouts(blob):
    with pytest.raises(StoreError):
        decode_batch(blob)


def test_encode_batch_refuses_what_a_file_cannot_carry():
    with pytest.raises(StoreError):
        encode_batch([("../x", b"1")])
    with pytest.raises(StoreError):
        encode_batch([("e", b"")] * (MAX_BATCH + 1))

