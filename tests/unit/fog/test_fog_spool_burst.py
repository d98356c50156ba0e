"""The fog service admits a burst of queued updates with one spool write (group commit):
accepted only once the batch is durable, refused ones removed again, a round closed in the
middle of a burst sends the rest to the next round."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hierfl.config import FogSettings
from hierfl.fog.round import FogState
from hierfl.fog.service import FogService, _Event
from hierfl.fog.spool import Spool
from hierfl.wire.codec import encode_frame
from hierfl.wire.frames import ModelFrame, UpdateFrame

D = 8


def _fog(tmp_path, **kw) -> FogService:
    s = FogSettings.load(federation="f", fog_id="a", security={"signing": "off"},
                         spool_dir=tmp_path / "spool", round_timeout_s=3600.0, **kw)
    fog = FogService(s)
    fog.round.on_global_model(ModelFrame("f", 1, np.zeros(D, np.float32)), fog.clock())
    return fog


def _queue(fog: FogService, edges: list[str], seq: int) -> None:
    for e in edges:
        frame = UpdateFrame("f", "a", e, 1, seq, 10, np.full(D, 0.01, np.float32), {})
        raw = encode_frame(frame)
        fog._events.put_nowait(_Event("update", frame, len(raw), raw, None))



def _accepted(fog: FogService) -> int:
    return int(fog.metrics.snapshot()["counters"].get("accepted", 0))


async def _drain(fog: FogService) -> None:
    while fog._backlog or not fog._events.empty():
        ev = fog._backlog.popleft() if fog._backlog else fog._events.get_nowait()
        await fog._on_burst(fog._burst(ev))


async def test_a_burst_is_one_batch_file_and_one_fsync(tmp_path, fsync_calls):
    fog = _fog(tmp_path, min_updates=100)
    seq = fog.round.seq
    _queue(fog, [f"e{i}" for i in range(40)], seq)
    calls = fsync_calls
    await _drain(fog)
    assert calls == ["file", "dir"]
    assert _accepted(fog) == 40
    assert sorted(fog.round.pending) == sorted(f"e{i}" for i in range(40))
    assert [p.name for p in (tmp_path / "spool").glob("*.hfb")] == [f"v1-s{seq}-b1-n40.hfb"]


async def test_refused_updates_leave_the_batch_and_a_second_copy_waits(tmp_path):
    fog = _fog(tmp_path, min_updates=100)
    seq = fog.round.seq
    _queue(fog, ["a", "b", "a", "c"], seq)  # a twice: its second copy is a duplicate
    _queue(fog, ["stale"], seq - 1)  # refused by the checks: never written
    await _drain(fog)
    assert _accepted(fog) == 3
    assert fog.metrics.snapshot()["rejected"] == {"validation.duplicate": 1,
                                                  "validation.stale": 1}
    spool = Spool(tmp_path / "spool")
    assert sorted(e for _, _, e, _ in spool.entries()) == ["a", "b", "c"]


async def test_a_burst_that_closes_the_round_sends_the_rest_on(tmp_path):
    """min_updates 3, six updates queued: the third closes the round; the rest are not
    counted against the closed round nor left in its batch file."""
    fog = _fog(tmp_path, min_updates=3, k2=5)
    seq = fog.round.seq
    _queue(fog, ["a", "b", "c", "d", "e", "f"], seq)
    first = fog._events.get_nowait()
    await fog._on_burst(fog._burst(first))
    assert fog.round.seq == seq + 1 and fog.round.state is FogState.COLLECTING
    assert _accepted(fog) == 3
    # d, e, f are first in line again, to be judged against the new fog round
    assert [ev.frame.edge_id for ev in fog._backlog] == ["d", "e", "f"]
    spool = Spool(tmp_path / "spool")
    assert [(s, e) for _, s, e, _ in spool.entries()] == [(seq, "a"), (seq, "b"), (seq, "c")]


async def test_nothing_is_accepted_when_the_batch_write_fails(tmp_path, monkeypatch):
    fog = _fog(tmp_path, min_updates=100)
    _queue(fog, ["a", "b"], fog.round.seq)

    def crash(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        await _drain(fog)
    assert _accepted(fog) == 0
    assert not fog.round.pending
    monkeypatch.undo()
    assert Spool(tmp_path / "spool").entries() == []


async def test_restart_replays_old_single_files_and_batches_into_the_round(tmp_path):
    """The spool of a fog killed mid-round holds one update in the layout before group
    commit (one .hfl file) and a batch: the fog resumed at that round takes all three."""
    fog = _fog(tmp_path, min_updates=100)
    seq = fog.round.seq
    spool = Spool(tmp_path / "spool")

    def raw(edge: str) -> bytes:
        return encode_frame(UpdateFrame("f", "a", edge, 1, seq, 10,
                                        np.full(D, 0.01, np.float32), {}))

    spool.put(1, seq, "old", raw("old"))
    spool.put_batch(1, seq, [("b1", raw("b1")), ("b2", raw("b2"))])
    spool.put_batch(1, seq - 1, [("gone", raw("gone"))])  # a round folded already: dropped
    await fog._replay_spool()
    assert sorted(fog.round.pending) == ["b1", "b2", "old"]
    assert fog.metrics.snapshot()["counters"]["spool_replayed"] == 3
    assert sorted(e for _, _, e, _ in spool.entries()) == ["b1", "b2", "old"]
