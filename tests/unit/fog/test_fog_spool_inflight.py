"""The fog's spool never deletes a write in flight, and removes torn writes when opened."""

from __future__ import annotations

import threading

from hierfl.fog.spool import Spool


def test_listing_does_not_touch_a_write_in_flight(tmp_path):
    spool = Spool(tmp_path)
    inflight = tmp_path / "abc123.tmp"  # what _write's mkstemp holds while it writes
    inflight.write_bytes(b"partial")
    spool.put(1, 0, "e1", b"frame")
    assert [(v, s, e) for v, s, e, _ in spool.entries()] == [(1, 0, "e1")]
    assert spool.drop_except((1, 0)) == 0
    assert inflight.exists(), "listing the spool deleted a write in flight"


def test_torn_writes_removed_when_opened(tmp_path):
    (tmp_path / "torn.tmp").write_bytes(b"x")
    Spool(tmp_path).put(2, 1, "e2", b"frame")
    assert not (tmp_path / "torn.tmp").exists()
    assert (tmp_path / "v2-s1-e2.hfl").read_bytes() == b"frame"


def test_concurrent_puts_and_drops_lose_no_write(tmp_path):
    """puts of the open round beside drop_except in another thread (as the fog's offloaded
    calls run): every put lands, none raises."""
    spool = Spool(tmp_path)
    errors: list[OSError] = []
    stop = threading.Event()

    def dropper() -> None:
        while not stop.is_set():
            try:
                spool.drop_except((5, 0))
            except OSError as exc:  # pragma: no cover - the failure being tested
                errors.append(exc)

    t = threading.Thread(target=dropper)
    t.start()
    try:
        for i in range(300):
            spool.put(5, 0, f"e{i}", b"u" * 64)
    except OSError as exc:
        errors.append(exc)
    finally:
        stop.set()
        t.join()
    assert not errors
    assert len(spool.entries()) == 300
