"""What every transport hands to the tier runtimes, and the reconnect backoff they share."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Inbound", "backoff_delays"]


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as received: the topic it came on and its raw payload (untrusted)."""

    topic: str
    payload: bytes
    retain: bool = False
    key: bytes | None = None


def backoff_delays(base: float, cap: float) -> Iterator[float]:
    """Yield jittered exponential reconnect delays: ``uniform(0, min(cap, base * 2**n))``.

    Args:
        base: the first delay's upper bound, seconds.
        cap: the largest upper bound, seconds.

    Yields:
        Delays in seconds, forever.
    """
    attempt = 0
    while True:
        yield random.uniform(0, min(cap, base * 2**attempt))
        attempt = min(attempt + 1, 30)
