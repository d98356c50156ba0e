"""Fixtures shared by the fog's unit tests."""

from __future__ import annotations

import os
import stat

import pytest


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch os.fsync to record what each call synced ("file" or "dir"), then sync."""
    calls: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls
