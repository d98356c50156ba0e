"""The fog's inbound lanes: a flooding sender fills and loses only its own lane."""

from __future__ import annotations

import asyncio

from hierfl.fog.service import _LANE, _SHARED_LANE, _Lanes
from hierfl.transport.base import Inbound


def msg(client: str, n: int = 0) -> Inbound:
    return Inbound(f"hierfl/f/g/update/{client}", bytes([n % 256]))


async def test_a_flood_of_unknown_senders_cannot_push_out_known_edges() -> None:
    lanes = _Lanes(lambda: frozenset({"e0", "e1"}))
    assert lanes.put(msg("e0"))
    for i in range(10 * _SHARED_LANE):
        lanes.put(msg(f"junk{i}", i))
    assert lanes.put(msg("e1"))
    got = [await lanes.get() for _ in range(3)]
    # round-robin: both honest messages come within the first three served
    assert {m.topic.rsplit("/", 1)[-1] for m in got} >= {"e0", "e1"}


async def test_lanes_are_bounded_and_drop_their_oldest() -> None:
    lanes = _Lanes(lambda: frozenset({"e0"}))
    results = [lanes.put(msg("e0", i)) for i in range(_LANE + 3)]
    assert results.count(False) == 3
    first = await lanes.get()
    assert first.payload == bytes([3])  # the three oldest were dropped


async def test_get_waits_for_a_message() -> None:
    lanes = _Lanes(lambda: None)
    task = asyncio.create_task(lanes.get())
    await asyncio.sleep(0.01)
    assert not task.done()
    lanes.put(msg("x"))
    assert (await asyncio.wait_for(task, 1)).topic.endswith("/x")
