"""hierfl.offload: short work on the event loop, long work (and disk waits) in a thread."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from hierfl import offload as off
from hierfl.offload import offload, threaded, use_runner


@pytest.fixture(autouse=True)
def fresh_estimates(monkeypatch):
    monkeypatch.setattr(off, "_cost", {})


def _where() -> int:
    return threading.get_ident()


def _busy(seconds: float) -> int:
    """Burn ``seconds`` of this thread's CPU; return the thread that ran it."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return threading.get_ident()


def _sleep(seconds: float) -> int:
    time.sleep(seconds)
    return threading.get_ident()


async def test_first_call_in_a_thread_then_inline_when_short():
    loop_thread = threading.get_ident()
    assert await offload(_where) != loop_thread  # unknown cost: a thread
    assert await offload(_where) == loop_thread  # measured short: the loop runs it
    assert await offload(_where) == loop_thread


async def test_a_call_that_turns_out_long_goes_back_to_a_thread():
    loop_thread = threading.get_ident()
    await offload(_busy, 0.0)
    assert await offload(_busy, 0.0) == loop_thread
    # this one runs inline (its estimate was short) and burns 3x the limit: noted at once
    assert await offload(_busy, 3 * off.INLINE_BELOW_S) == loop_thread
    assert await offload(_busy, 0.0) != loop_thread
    # then trusted again only once short calls have halved the estimate below the limit
    hops = [await offload(_busy, 0.0) != loop_thread for _ in range(4)]
    assert hops[0] and not hops[-1]


async def test_a_long_wait_with_little_cpu_counts_its_wall_time(monkeypatch):
    """Waiting (a GPU, a device, a sleep) uses no CPU; past WALL_CAP_S it counts anyway."""
    monkeypatch.setattr(off, "WALL_CAP_S", 0.05)
    loop_thread = threading.get_ident()
    await offload(_sleep, 0.1)
    assert await offload(_sleep, 0.0) != loop_thread  # 0.1 s of wall: still a thread
    # a short sleep under the cap costs its CPU only: next to nothing
    monkeypatch.setattr(off, "_cost", {})
    await offload(_sleep, 0.01)
    assert await offload(_sleep, 0.0) == loop_thread


async def test_threaded_functions_always_get_a_thread():
    @threaded
    def write() -> int:
        return threading.get_ident()

    loop_thread = threading.get_ident()
    assert all([await offload(write) != loop_thread for _ in range(3)])


async def test_threaded_methods_are_recognised_through_the_bound_method():
    class Store:
        @threaded
        def save(self) -> int:
            return threading.get_ident()

    s = Store()
    loop_thread = threading.get_ident()
    assert all([await offload(s.save) != loop_thread for _ in range(3)])


async def test_size_classes_are_estimated_apart():
    """A decode of a few bytes says nothing about one of megabytes: the first large call
    goes to a thread even though small calls of the same function run inline."""
    loop_thread = threading.get_ident()

    def decode(data: bytes) -> int:
        return threading.get_ident()

    await offload(decode, b"x" * 200)
    assert await offload(decode, b"x" * 200) == loop_thread
    assert await offload(decode, b"x" * 400) == loop_thread  # same class (factor of 4)
    assert await offload(decode, bytes(8 << 20)) != loop_thread
    assert await offload(decode, bytes(8 << 20)) == loop_thread


async def test_bound_methods_share_one_estimate():
    class Edge:
        def train(self) -> int:
            return threading.get_ident()

    loop_thread = threading.get_ident()
    await offload(Edge().train)
    assert await offload(Edge().train) == loop_thread  # another instance, same function


async def test_an_inline_call_still_lets_other_tasks_run_first():
    """``await offload(...)`` yields to the loop as a thread hop did: a task that is ready
    runs before the caller goes on (an ingest loop cannot starve the round's task)."""
    await offload(_where)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    assert await offload(_where) == threading.get_ident()
    assert ran == ["other"]
    await task


async def test_errors_come_through_inline_and_from_a_thread():
    def fail(kind: str) -> None:
        raise ValueError(kind)

    with pytest.raises(ValueError, match="thread"):
        await offload(fail, "thread")
    with pytest.raises(ValueError, match="inline"):
        await offload(fail, "inline")
    assert len(off._cost) == 1  # measured although it raised


async def test_an_installed_runner_takes_every_call():
    seen: list[str] = []

    async def runner(fn, *args, **kwargs):
        seen.append(fn.__name__)
        return fn(*args, **kwargs)

    token = use_runner(runner)
    try:
        await offload(_where)
        await offload(_where)
    finally:
        off._RUNNER.reset(token)
    assert seen == ["_where", "_where"]
    assert off._cost == {}  # the runner decides; nothing is measured


def test_estimates_are_bounded(monkeypatch):
    monkeypatch.setattr(off, "_MAX_KEYS", 8)
    for i in range(20):
        off._note((f"fn{i}", 0), 0.001, 0.001)
    assert len(off._cost) <= 8


_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("label", default="none")


def _thread_name_and_label() -> tuple[str, str]:
    return threading.current_thread().name, _LABEL.get()


async def test_an_installed_executor_runs_every_thread_hop():
    from concurrent.futures import ThreadPoolExecutor

    @threaded
    def disk() -> str:
        return threading.current_thread().name

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pool-under-test")
    token = off.use_executor(pool)
    try:
        assert (await offload(disk)).startswith("pool-under-test")  # always a thread
        name = await offload(lambda: threading.current_thread().name)  # first call: a thread
        assert name.startswith("pool-under-test")
        # measured, as on asyncio's default executor: short work then runs inline
        assert await offload(_where) != threading.get_ident()
        assert await offload(_where) == threading.get_ident()
    finally:
        off.reset_executor(token)
        pool.shutdown(wait=True)
    # reset: asyncio's default executor again
    assert not (await offload(disk)).startswith("pool-under-test")


async def test_tasks_inherit_the_executor_and_threads_see_the_context():
    from concurrent.futures import ThreadPoolExecutor

    _LABEL.set("caller")
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inherited")
    token = off.use_executor(pool)
    try:
        task = asyncio.create_task(offload(threaded(_thread_name_and_label)))
    finally:
        off.reset_executor(token)  # the task was created before: it keeps the pool
    try:
        name, label = await task
        assert name.startswith("inherited")
        assert label == "caller"  # the context travels into the worker, as with to_thread
    finally:
        pool.shutdown(wait=True)
