"""Keep a long-running server tier's resident memory close to what it really uses (glibc).

A fog or the cloud handles a few multi-megabyte buffers per round (MQTT payloads, decompressed
bodies, decoded vectors, stacked updates, Kafka chunks), allocated on the event loop and in the
worker threads that decode and aggregate off it. glibc gives each thread that meets contention
an arena of its own (up to 8 per core) and never moves free memory between them, so the same
round's buffers end up resident several times over. With one arena, a digits-20-wide fog
(1.1 M parameters) peaks about a quarter lower and rounds are no slower; the figures, and the two
alternatives measured and not kept (a fixed mmap threshold: slower rounds; malloc_trim per
round: no lower peak), are in docs/benchmarks.md, "Fog memory".

Edges are left alone: their memory is torch's, and they train on one thread.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["limit_malloc_arenas"]

_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """Cap glibc's malloc arenas for this process; call before worker threads start.

    Args:
        arenas: the cap (1 = every thread shares the main arena).

    Returns:
        True when applied; False on another C library, or when the operator already chose
        through glibc's ``MALLOC_ARENA_MAX`` variable (their choice wins).
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas) == 1)
