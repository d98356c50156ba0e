"""When the fog writes the model it publishes to its spool: before the publish when updates are
folded in it (a fog resuming from it without its record would fold them again), overlapping
the publish when nothing is (a fresh global model: off the round's critical path). Either way
the write has landed when the flush returns, also when the publish fails."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hierfl.config import FogSettings
from hierfl.errors import TransportError
from hierfl.fog.service import FogService
from hierfl.fog.spool import Spool
from hierfl.wire.frames import ModelFrame

D = 8


class _Mqtt:
    def __init__(self, log: list[str], fail: bool = False) -> None:
        self.log, self.fail = log, fail

    async def publish(self, topic: str, payload: bytes, retain: bool = False,
                      **_: object) -> None:
        if self.fail:
            raise TransportError("broker gone")
        self.log.append("publish " + topic.rsplit("/", 1)[-1])


def _setup(tmp_path, monkeypatch, *, folded: frozenset[tuple[str, int]],
           fail: bool = False) -> tuple[FogService, list[str]]:
    s = FogSettings.load(federation="f", fog_id="a", security={"signing": "off"},
                         spool_dir=tmp_path / "spool", round_timeout_s=3600.0)
    fog = FogService(s)
    log: list[str] = []
    lock = threading.Lock()
    real = Spool.put_model

    def slow_put_model(self: Spool, data: bytes, record: object = None) -> None:
        with lock:
            log.append("store start")
        time.sleep(0.3)  # a slow fsync
        real(self, data, record)  # type: ignore[arg-type]
        with lock:
            log.append("stored")

    monkeypatch.setattr(Spool, "put_model", slow_put_model)
    frame = ModelFrame("f", 1, np.ones(D, np.float32), scope="fog", fog_id="a", seq=2)
    fog._mqtt = _Mqtt(log, fail)  # type: ignore[assignment]
    fog._to_publish = frame
    fog._folded = (frame, folded)
    return fog, log


async def test_a_fresh_model_is_published_while_it_is_written(tmp_path, monkeypatch):
    fog, log = _setup(tmp_path, monkeypatch, folded=frozenset())
    await fog._flush()
    # published before the (slow) write landed; the write landed before _flush returned
    assert [e for e in log if e != "store start"] == ["publish model", "publish delta",
                                                       "stored"]
    assert fog._to_publish is None
    assert Spool(tmp_path / "spool").model() is not None  # landed before _flush returned
    assert Spool(tmp_path / "spool").model_folded(1, 2) == frozenset()


async def test_a_model_with_folded_updates_is_on_disk_before_it_is_published(
    tmp_path, monkeypatch
):
    fog, log = _setup(tmp_path, monkeypatch, folded=frozenset({("e1", 1), ("e2", 1)}))
    await fog._flush()
    assert log == ["store start", "stored", "publish model", "publish delta"]
    assert Spool(tmp_path / "spool").model_folded(1, 2) == {("e1", 1), ("e2", 1)}


async def test_a_failed_publish_still_waits_for_the_write(tmp_path, monkeypatch):
    fog, log = _setup(tmp_path, monkeypatch, folded=frozenset(), fail=True)
    with pytest.raises(TransportError):
        await fog._flush()
    assert log == ["store start", "stored"]
    assert Spool(tmp_path / "spool").model() is not None
    assert fog._to_publish is not None  # published on the next connection
