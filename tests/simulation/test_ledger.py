"""The simulator's own parts: the invariant ledger fails when an invariant breaks, and the
virtual-clock loop jumps over waits and reports a deadlock."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hierfl.fog.round import RoundClosed
from hierfl.simtest.ledger import Ledger, Violation
from hierfl.simtest.loop import Deadlock, VirtualLoop

PLAN = SimpleNamespace(fogs={"f0": ("a", "b", "c")})


class FakeRound:
    """A fog round whose on_update returns the scripted actions."""

    def __init__(self) -> None:
        self.version, self.seq = 0, 1
        self._updates: dict[str, Any] = {}
        self.early = 0
        self.script: list[list[Any]] = []

    def on_update(self, frame: Any, now: float) -> list[Any]:
        return self.script.pop(0) if self.script else []

    def on_tick(self, now: float) -> list[Any]:
        return self.script.pop(0) if self.script else []


def fog_service() -> Any:
    settings = SimpleNamespace(mqtt=SimpleNamespace(queue_size=100))
    return SimpleNamespace(round=FakeRound(), settings=settings, forwarded=[],
                           _by_version={})


def update(edge: str, seq: int = 1) -> Any:
    return SimpleNamespace(edge_id=edge, base_seq=seq)


def closed(seq: int, *edges: str) -> RoundClosed:
    return RoundClosed(0, seq, 1, tuple(edges), 10 * len(edges), False)


def test_a_round_closed_without_an_update_accepted_for_it_is_a_lost_update():
    ledger, fog = Ledger(PLAN), fog_service()
    ledger.watch("fog/f0", 1, fog)
    fog.round.on_update(update("a"), 0.0)  # accepted by incarnation 1
    ledger.crashed("fog/f0")                # then kill -9: its memory is gone
    fog2 = fog_service()
    ledger.watch("fog/f0", 2, fog2)
    fog2.round.script = [[closed(1, "b")]]
    with pytest.raises(Violation, match=r"lost update: fog/f0 closed \(v0, seq 1\)"):
        fog2.round.on_update(update("b"), 1.0)
    assert ledger.failed is not None and "('a', 1)" in ledger.failed


def test_the_same_round_closed_again_with_everything_passes():
    ledger, fog = Ledger(PLAN), fog_service()
    ledger.watch("fog/f0", 1, fog)
    fog.round.on_update(update("a"), 0.0)
    ledger.crashed("fog/f0")
    fog2 = fog_service()
    ledger.watch("fog/f0", 2, fog2)
    fog2.round.script = [[], [closed(1, "a", "b")]]
    fog2.round.on_update(update("a"), 1.0)  # replayed from the spool
    fog2.round.on_update(update("b"), 1.0)
    assert ledger.failed is None and ledger.counts["fog_rounds_closed"] == 1


def test_one_update_in_two_rounds_of_a_version_is_folded_twice():
    ledger, fog = Ledger(PLAN), fog_service()
    ledger.watch("fog/f0", 1, fog)
    fog.round.script = [[closed(1, "a")]]
    fog.round.on_update(update("a", 1), 0.0)
    fog.round.seq = 2
    fog.round.script = [[closed(2, "a")]]
    with pytest.raises(Violation, match="folded twice"):
        fog.round.on_update(update("a", 1), 1.0)  # the same (edge, base seq) again


def cloud_service() -> Any:
    saved: list[int] = []
    store = SimpleNamespace(latest=lambda: None,
                            save=lambda v, w, layout, meta, **kw: saved.append(v))
    rnd = SimpleNamespace(on_aggregate=lambda f, now: None, on_tick=lambda now: None,
                          reported={})
    return SimpleNamespace(round=rnd, store=store)


def test_versions_must_be_contiguous_and_never_forked():
    ledger, cloud = Ledger(PLAN), cloud_service()
    ledger.watch("cloud", 1, cloud)
    w = np.zeros(4, np.float32)
    cloud.store.save(0, w, (), {"parent": None})
    cloud.store.save(1, w + 1, (), {"parent": 0})
    cloud.store.save(1, w + 1, (), {"parent": 0})  # the same version again: fine
    with pytest.raises(Violation, match="fork"):
        cloud.store.save(1, w + 2, (), {"parent": 0})
    ledger2, cloud2 = Ledger(PLAN), cloud_service()
    ledger2.watch("cloud", 1, cloud2)
    cloud2.store.save(0, w, (), {"parent": None})
    with pytest.raises(Violation, match="gap"):
        cloud2.store.save(2, w, (), {"parent": 1})


def test_unbounded_fog_state_is_reported_at_the_next_step():
    ledger, fog = Ledger(PLAN), fog_service()
    ledger.watch("fog/f0", 1, fog)
    ledger.on_step()
    assert ledger.failed is None
    fog.round.early = 101  # over the MQTT queue size
    ledger.on_step()
    assert ledger.failed is not None and "out of bounds" in ledger.failed
    with pytest.raises(Violation):
        ledger.check_bounds()


def test_the_virtual_loop_jumps_over_waits():
    steps: list[int] = []
    loop = VirtualLoop(start=5.0, on_step=lambda: steps.append(1))

    async def main() -> float:
        await asyncio.sleep(3600)
        async with asyncio.timeout(60):
            await asyncio.sleep(30)
        return asyncio.get_running_loop().time()

    try:
        assert loop.run_until_complete(main()) == pytest.approx(5.0 + 3630)
    finally:
        loop.close()
    assert steps and loop.steps == len(steps)


def test_the_virtual_loop_reports_a_deadlock():
    loop = VirtualLoop()

    async def main() -> None:
        await asyncio.Event().wait()  # nothing can ever set it

    try:
        with pytest.raises(Deadlock):
            loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
