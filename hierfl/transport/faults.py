"""Fault injection for the in-memory brokers of :mod:`hierfl.transport.memory`: a hook that
decides, per message, whether it is delivered, dropped, duplicated or delayed."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Envelope", "Fault", "FaultHook", "random_faults"]


class Fault(enum.Enum):
    """What a :data:`FaultHook` does to one message (see the module docstring per link)."""

    DELIVER = "deliver"
    DROP = "drop"
    DUPLICATE = "duplicate"
    DELAY = "delay"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message as a :data:`FaultHook` sees it.

    Attributes:
        link: "mqtt" (one delivery to ``recipient``) or "kafka" (one record produced).
        topic: the topic it is published or produced on.
        payload: its bytes (a chunk, for chunked payloads).
        sender: the publishing or producing client id.
        recipient: the receiving MQTT client id; None on Kafka.
    """

    link: Literal["mqtt", "kafka"]
    topic: str
    payload: bytes
    sender: str
    recipient: str | None = None


FaultHook = Callable[[Envelope], Fault]


def random_faults(
    rng: random.Random, *, drop: float = 0.0, duplicate: float = 0.0, delay: float = 0.0
) -> FaultHook:
    """A fault hook that picks each message's fate from ``rng`` with the given probabilities.

    Args:
        rng: a seeded generator (the only source of randomness, so a seed replays a run).
        drop: probability that a message is dropped.
        duplicate: probability that it is delivered (or written) twice.
        delay: probability that it is held back (MQTT) or its acknowledgement lost (Kafka).

    Raises:
        ValueError: if the probabilities are negative or sum to more than 1.
    """
    if min(drop, duplicate, delay) < 0 or drop + duplicate + delay > 1:
        raise ValueError("fault probabilities must be >= 0 and sum to at most 1")

    def hook(_: Envelope) -> Fault:
        x = rng.random()
        if x < drop:
            return Fault.DROP
        if x < drop + duplicate:
            return Fault.DUPLICATE
        if x < drop + duplicate + delay:
            return Fault.DELAY
        return Fault.DELIVER

    return hook
