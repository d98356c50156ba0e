"""Run blocking work (decode, verify, aggregate, train, durable writes) off the event loop,
or inline when it is short.

The services call :func:`offload` where they would call :func:`asyncio.to_thread`. Work that
takes long (training a real model, a robust aggregate of many large updates, an ``fsync`` on
slow flash) runs in a worker thread, so the loop keeps serving its connections. Work measured
short runs on the loop itself: a thread hop costs two context switches and a wake-up of the
loop through its self-pipe, and on a busy machine each one waits for a core; for the
digits-20 federation that was a fifth of the round (docs/benchmarks.md, "Short work on the
loop"). The choice is measured, per function and size class of its largest bytes argument
(classes a factor of four apart). The first call of each runs in a thread. Its cost is the
CPU time of the thread that ran it (a wall clock would count the time the OS or the GIL kept
it waiting, which on a busy machine is most of it), or its wall time when that exceeds
:data:`WALL_CAP_S` (work waiting on a GPU or a device uses little CPU). After that, a
function whose recent cost (a running estimate that jumps up to a slow call at once and
decays by halves) is under :data:`INLINE_BELOW_S` runs inline, then yields to the loop once.
A call that turns out slow moves it back to a thread from its next call, so a mis-estimate
blocks the loop once, for one call. Functions marked :func:`threaded` always run in a
thread: those that ``fsync`` (the spool, the model store, the replay counters: their cost is
waiting on the disk, which CPU time does not see, and the loop has other work meanwhile) and
those that run the operator's code (an edge's training and evaluation hooks: how long they
take is the task's business, and one slow call inline would stall every connection of the
process, in ``hierfl sim --mode inprocess`` every tier's).

Where the threads come from: asyncio's default executor (``asyncio.to_thread``), unless an
executor is installed for the current context (:func:`use_executor`). ``hierfl sim --mode
inprocess`` installs one worker per core for its tiers: with every tier in one interpreter,
asyncio's default (up to cores + 4 threads) only had more threads fighting the event loop for
the GIL (docs/benchmarks.md, "In-process mode: one worker thread per core").
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

__all__ = [
    "INLINE_BELOW_S",
    "WALL_CAP_S",
    "Runner",
    "Steps",
    "offload",
    "reset_executor",
    "threaded",
    "use_executor",
    "use_runner",
]

T = TypeVar("T")

Runner = Callable[..., Awaitable[Any]]
"""``runner(fn, *args, **kwargs)``: await ``fn(*args, **kwargs)`` computed somehow."""

_RUNNER: contextvars.ContextVar[Runner | None] = contextvars.ContextVar("hierfl_offload",
                                                                       default=None)
_EXECUTOR: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "hierfl_offload_executor", default=None)


INLINE_BELOW_S = 0.01
"""Work whose estimated cost is under this many seconds runs on the event loop."""
WALL_CAP_S = 0.25
"""A call that took longer than this (wall clock) costs its wall time, whatever its CPU."""

_MAX_KEYS = 4096  # estimates kept (functions x size classes); forgotten all at once beyond
_cost: dict[tuple[Any, int], float] = {}

F = TypeVar("F", bound=Callable[..., Any])


def threaded(fn: F) -> F:
    """Mark ``fn`` to always run in a worker thread under :func:`offload` (it waits on the
    disk, or runs code whose time is not the framework's to know)."""
    fn.hierfl_threaded = True  # type: ignore[attr-defined]
    return fn


def _key(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, int]:
    size = 0
    for a in args:
        if isinstance(a, bytes | bytearray | memoryview):
            size = max(size, len(a))
    # a bound method is a new object on every access: its function is the stable key
    return getattr(fn, "__func__", fn), size.bit_length() // 2


def _note(key: tuple[Any, int], cpu: float, wall: float) -> None:
    cost = wall if wall > WALL_CAP_S else cpu
    old = _cost.get(key)
    if old is None and len(_cost) >= _MAX_KEYS:
        _cost.clear()
    # up at once to a slow call, down by halves: a function that was slow once is trusted
    # inline again only after a few short calls
    _cost[key] = cost if old is None or cost >= old else (old + cost) / 2


def _timed(key: tuple[Any, int], fn: Callable[..., T], args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> T:
    cpu, wall = time.thread_time(), time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        _note(key, time.thread_time() - cpu, time.perf_counter() - wall)


async def offload(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Await ``fn(*args, **kwargs)``: inline when it was measured short, else in a worker
    thread (or by the installed runner)."""
    runner = _RUNNER.get()
    if runner is not None:
        result: T = await runner(fn, *args, **kwargs)
        return result
    key = _key(fn, args)
    if getattr(key[0], "hierfl_threaded", False):
        return await _in_thread(fn, *args, **kwargs)
    estimate = _cost.get(key)
    if estimate is not None and estimate < INLINE_BELOW_S:
        try:
            return _timed(key, fn, args, kwargs)
        finally:
            await asyncio.sleep(0)  # as a thread hop would: other tasks run before the caller
    return await _in_thread(_timed, key, fn, args, kwargs)


async def _in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``asyncio.to_thread``, on the executor installed for this context if there is one."""
    executor = _EXECUTOR.get()
    if executor is None:
        return await asyncio.to_thread(fn, *args, **kwargs)
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


def use_executor(executor: Executor | None) -> contextvars.Token[Executor | None]:
    """Run :func:`offload`'s threads on ``executor`` in the current context (tasks created
    afterwards inherit it; None: asyncio's default executor). The caller owns ``executor``
    and shuts it down.

    Returns:
        A token for ``contextvars`` reset.
    """
    return _EXECUTOR.set(executor)


def reset_executor(token: contextvars.Token[Executor | None]) -> None:
    """Undo :func:`use_executor` (tasks created meanwhile keep the executor they inherited)."""
    _EXECUTOR.reset(token)


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
