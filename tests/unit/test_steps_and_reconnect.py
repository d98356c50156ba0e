"""Cancellation safety found by the simulator: a round step finishes and its result is kept
for the next connection; a service cancelled while a link fails stops (does not reconnect)."""

from __future__ import annotations

import asyncio

import pytest

from hierfl.errors import DisconnectedError
from hierfl.offload import Steps
from hierfl.transport.reconnect import Link, reconnect_loop


async def test_a_step_completes_when_its_caller_is_cancelled_and_its_result_is_kept():
    steps = Steps()
    moved: list[str] = []

    async def step() -> list[str]:
        moved.append("machine moved")       # the state machine changed here ...
        await asyncio.sleep(0.05)            # ... its actions are still on the way back
        return ["forward aggregate"]

    caller = asyncio.create_task(steps.run(step()))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert moved == ["machine moved"]
    assert await steps.settle() == [["forward aggregate"]]  # waits for it, hands it over
    assert await steps.settle() == []                       # once


async def test_a_received_result_is_not_handed_over_again_and_errors_are_not_kept():
    steps = Steps()

    async def ok() -> int:
        return 1

    async def bad() -> int:
        raise ValueError("refused")

    assert await steps.run(ok()) == 1
    with pytest.raises(ValueError, match="refused"):
        await steps.run(bad())
    assert await steps.settle() == []


async def test_a_service_cancelled_while_its_link_fails_stops():
    """A TaskGroup whose link fails while the task is being cancelled raises the link's
    error, not CancelledError; reconnect_loop used to treat it as a disconnect and go on."""
    ready, stop = asyncio.Event(), asyncio.Event()
    attempts = 0

    async def connected() -> None:
        nonlocal attempts
        attempts += 1
        ready.set()

        async def link() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise DisconnectedError("MQTT receive failed: connection lost") from None

        async with asyncio.TaskGroup() as tg:
            tg.create_task(link())

    task = asyncio.create_task(reconnect_loop(
        "fog t", connected, links=[Link("mqtt", "mqtt://127.0.0.1:1", None)],
        ready=ready, stop=stop, base_s=0.01, max_s=0.01))
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    stop.set()  # (ends a loop that ignored the cancellation)
    assert task in done, "the cancelled service went on reconnecting"
    assert task.cancelled()
    assert attempts == 1
