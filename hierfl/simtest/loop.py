"""An asyncio event loop on a virtual clock: time passes only when every task waits.

``loop.time()`` is a number the loop advances itself: when no callback is ready, instead of
sleeping until the next timer it jumps to it. With the in-memory brokers (no sockets) and
blocking work run inline (:mod:`hierfl.offload`), nothing outside the loop decides anything,
so a run is a pure function of its inputs: the same seed replays the same interleaving, and
an hour of round deadlines and reconnect backoffs takes milliseconds.

After every iteration of the loop (one batch of ready callbacks: the simulator's *step*),
``on_step`` is called; the simulator checks its cheap invariants there.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Deadlock", "VirtualLoop"]


class Deadlock(RuntimeError):
    """Every task waits and no timer is set: nothing can ever happen again."""


class _NoIoSelector(selectors.BaseSelector):
    """A selector that never reports I/O: ``select(t)`` advances the virtual clock by ``t``."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        self._advance = advance
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Deadlock("every task waits and no timer is set")
        if timeout > 0:
            self._advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class _Task(asyncio.Task):  # type: ignore[type-arg]
    """A task hashed by creation order, not by address: asyncio keeps tasks and futures in
    sets (a TaskGroup cancels its tasks in set order), so address hashes would make the
    interleaving differ from run to run."""

    def __init__(self, coro: Any, *, loop: VirtualLoop, context: Any = None) -> None:
        self._n = loop._next()  # before the base class puts it in a (weak) set
        super().__init__(coro, loop=loop, context=context)

    def __hash__(self) -> int:
        return self._n


class _Future(asyncio.Future):  # type: ignore[type-arg]
    _n: int

    def __hash__(self) -> int:
        return self._n


class VirtualLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock is virtual (starts at ``start``, in seconds).

    Args:
        start: the virtual time at creation.
        on_step: called after every loop iteration (a step).
    """

    def __init__(self, *, start: float = 0.0, on_step: Callable[[], None] | None = None) -> None:
        self._now = start
        self.steps = 0
        self.on_step = on_step
        self._created = 0
        super().__init__(_NoIoSelector(self._advance))
        self.set_task_factory(lambda loop, coro, context=None: self.new_task(coro, context))

    def _next(self) -> int:
        self._created += 1
        return self._created

    def create_future(self) -> asyncio.Future[Any]:
        fut = _Future(loop=self)
        fut._n = self._next()
        return fut

    def new_task(self, coro: Any, context: Any = None) -> asyncio.Task[Any]:
        """A task hashed by creation order (for a task factory)."""
        return _Task(coro, loop=self, context=context)

    def _advance(self, dt: float) -> None:
        self._now += dt

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        super()._run_once()  # type: ignore[misc]
        self.steps += 1
        if self.on_step is not None:
            self.on_step()
