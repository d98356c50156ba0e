"""Group commit at the fog: the round's side of admitting a burst of updates at once.

The fog service takes the updates queued behind one another (a burst, at most
:data:`BURST_MAX`), runs the round's checks on each (:func:`check_burst`: a refused update
costs no disk write), writes those that pass into one spool batch file made durable with one
``fsync`` (:meth:`~hierfl.fog.spool.Spool.put_batch`), and only then lets the round take them
(:func:`take_burst`). Both run off the event loop, each as one call, so a burst costs two
thread hops instead of three per update.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hierfl.errors import HierflError
from hierfl.fog.round import FogRound, FogState
from hierfl.wire.frames import UpdateFrame

__all__ = ["BURST_MAX", "Burst", "check_burst", "take_burst"]

#: the most updates one burst (one spool batch file, one fsync) holds
BURST_MAX = 256


@dataclass(frozen=True, slots=True)
class Burst:
    """What the round did with a burst of spooled updates.

    Attributes:
        outcomes: per update taken up, in order: ``(index, actions or the refusal,
            time.time() before, after)``.
        kept: indices of the updates the round took (their batch entries stay).
        stopped: how many updates were handed to the round; the rest (from ``stopped`` on)
            were not, because the round moved on (an earlier one closed it): they are
            judged again, and spooled under the next round.
    """

    outcomes: tuple[tuple[int, list[Any] | HierflError, float, float], ...]
    kept: tuple[int, ...]
    stopped: int


def check_burst(round_: FogRound, frames: Sequence[UpdateFrame]) -> list[HierflError | None]:
    """Run the round's checks (:meth:`FogRound.check_update`) on each update, changing
    nothing; return the refusal of each (None: it passes)."""
    out: list[HierflError | None] = []
    for frame in frames:
        try:
            round_.check_update(frame)
        except HierflError as exc:
            out.append(exc)
        else:
            out.append(None)
    return out


def take_burst(round_: FogRound, key: tuple[int, int], frames: Sequence[UpdateFrame],
               proofs: Sequence[Any], now: float) -> Burst:
    """Hand durable updates to the round in order (:meth:`FogRound.on_update`), while it is
    still collecting round ``key`` = ``(version, seq)``, the round their batch file names.

    Args:
        round_: the fog's round.
        key: the round the batch was written for.
        frames: the updates, as written.
        proofs: each update's signed claim (or None).
        now: the service clock.

    Returns:
        The :class:`Burst`.
    """
    outcomes: list[tuple[int, list[Any] | HierflError, float, float]] = []
    kept: list[int] = []
    for i, (frame, proof) in enumerate(zip(frames, proofs, strict=True)):
        if ((round_.version or 0, round_.seq) != key
                or round_.state is not FogState.COLLECTING):
            return Burst(tuple(outcomes), tuple(kept), i)
        started = time.time()
        try:
            actions = round_.on_update(frame, now, proof=proof)
        except HierflError as exc:
            outcomes.append((i, exc, started, time.time()))
            continue
        outcomes.append((i, actions, started, time.time()))
        kept.append(i)
    return Burst(tuple(outcomes), tuple(kept), len(frames))
