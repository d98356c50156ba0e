"""The server tiers cap glibc's malloc arenas (hierfl._memory): checked in fresh processes."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from hierfl._memory import limit_malloc_arenas

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# Six threads allocate; glibc's malloc_stats() then prints one "Arena N:" block per arena.
_PROBE = """
import ctypes, sys, threading
if sys.argv[1] == "capped":
    from hierfl._memory import limit_malloc_arenas
    assert limit_malloc_arenas()
def work():
    for _ in range(200):
        _ = [bytearray(100_000) for _ in range(5)]
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL("libc.so.6").malloc_stats()
"""


def _arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True,
                         text=True, check=True, timeout=60)
    return sum(line.startswith("Arena ") for line in out.stderr.splitlines())


def test_threads_share_one_arena_once_capped() -> None:
    assert _arenas("default") > 1  # the probe does make glibc open more arenas
    assert _arenas("capped") == 1


def test_operator_choice_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
