"""LogThrottle: one line per key per interval, with the count of what was left out."""

from __future__ import annotations

from hierfl.ratelimit import LogThrottle, suppressed_note


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_per_interval_with_the_suppressed_count() -> None:
    clock = FakeClock()
    throttle = LogThrottle(10.0, clock=clock)

    first = [throttle.admit("wire.tensor") for _ in range(1_000)]
    other = throttle.admit("wire.signature")
    clock.now += 9.9
    still = throttle.admit("wire.tensor")
    clock.now += 0.1
    later = throttle.admit("wire.tensor")

    assert first[0] == 0
    assert first[1:] == [None] * 999
    assert other == 0  # each key has its own budget
    assert still is None
    assert later == 1_000  # 999 + the one at 9.9 s


def test_keys_are_bounded() -> None:
    clock = FakeClock()
    throttle = LogThrottle(10.0, clock=clock, max_keys=4)

    for i in range(100):
        assert throttle.admit(f"k{i}") == 0

    assert len(throttle._state) == 4
    assert throttle.admit("k99") is None  # the most recent keys are kept
    assert throttle.admit("k0") == 0  # an old one was forgotten: it logs again


def test_suppressed_note() -> None:
    assert suppressed_note(0, "wire.format") == ""
    assert "41 more wire.format" in suppressed_note(41, "wire.format")
