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

__all__ = ["Runner", "Steps", "offload", "use_runner"]

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


class Steps:
    """State-machine steps that a cancelled caller cannot cut in half.

    A round machine moves when its call returns, in a worker thread; the actions it returns
    (forward an aggregate, publish a model, save a version) exist only in that return
    value. If the awaiting task is cancelled in between (a broker connection failed and the
    service reconnects), those actions would be lost while the machine has moved on: a fog
    forwarded in its own eyes and silent in the cloud's. ``run`` shields the step: it
    completes whatever happens to the caller, and a result nobody received is kept for
    :meth:`settle`, which the service calls when it connects again (found by the
    simulator, issue 9).
    """

    def __init__(self) -> None:
        self._task: asyncio.Future[Any] | None = None
        self._unclaimed: list[Any] = []

    async def run(self, step: Awaitable[T]) -> T:
        """Await ``step`` (a coroutine) to completion even if the caller is cancelled."""
        task = asyncio.ensure_future(step)
        self._task = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                self._keep(task)
            else:
                task.add_done_callback(self._keep)
            raise

    def _keep(self, task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._unclaimed.append(task.result())

    async def settle(self) -> list[Any]:
        """Wait for a step still running for a cancelled caller; return, oldest first, the
        results no caller received (each once)."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait([task])
        out, self._unclaimed = self._unclaimed, []
        return out
