"""Run blocking work (decode, verify, aggregate, train) off the event loop, or inline.

The services call :func:`offload` where they would call :func:`asyncio.to_thread`. By default
it is exactly that. The deterministic simulator (``hierfl simtest``) installs its own runner
with :func:`use_runner`: a thread would make every run's interleaving depend on the OS, so it
runs the call inline and then lets a seeded amount of virtual time pass instead. The runner is
a context variable, so it reaches every task created under it and nothing else.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["Runner", "offload", "use_runner"]

T = TypeVar("T")

Runner = Callable[..., Awaitable[Any]]
"""``runner(fn, *args, **kwargs)``: await ``fn(*args, **kwargs)`` computed somehow."""

_RUNNER: contextvars.ContextVar[Runner | None] = contextvars.ContextVar("hierfl_offload",
                                                                       default=None)


async def offload(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Await ``fn(*args, **kwargs)`` run in a worker thread (or by the installed runner)."""
    runner = _RUNNER.get()
    if runner is None:
        return await asyncio.to_thread(fn, *args, **kwargs)
    result: T = await runner(fn, *args, **kwargs)
    return result


def use_runner(runner: Runner | None) -> contextvars.Token[Runner | None]:
    """Install ``runner`` for the current context (tasks created afterwards inherit it).

    Returns:
        A token for ``contextvars`` reset.
    """
    return _RUNNER.set(runner)
