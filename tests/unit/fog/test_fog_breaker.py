"""The fog's per-sender circuit breaker: over budget -> quarantined, doubling, capped."""

from __future__ import annotations

from hierfl.fog.service import _Breaker, _hard_refusal


def test_a_sender_over_its_budget_is_quarantined_and_released() -> None:
    b = _Breaker(budget=3, window_s=10, base_s=5, max_s=40)
    assert [b.strike("e0", t) for t in (0, 1, 2)] == [None, None, None]
    assert b.strike("e0", 3) == 5  # the fourth within 10 s trips
    assert b.quarantined("e0", 7.9) and not b.quarantined("e1", 7.9)
    assert b.strike("e0", 4) is None  # no double counting while quarantined
    assert b.next_release() == 8
    assert b.released(7.9) == [] and b.released(8) == ["e0"]
    assert not b.quarantined("e0", 8) and b.next_release() is None


def test_refusals_spread_beyond_the_window_never_trip() -> None:
    b = _Breaker(budget=3, window_s=10, base_s=5, max_s=40)
    assert all(b.strike("e0", t * 4.0) is None for t in range(100))


def test_repeats_double_up_to_the_cap_and_reset_after_a_quiet_period() -> None:
    b = _Breaker(budget=0, window_s=10, base_s=5, max_s=12)
    t, got = 0.0, []
    for _ in range(4):
        backoff = b.strike("e0", t)
        assert backoff is not None
        got.append(backoff)
        t += backoff
        b.released(t)
    assert got == [5, 10, 12, 12]
    assert b.strike("e0", t + 100) == 5  # quiet for longer than max_s: back to the base


def test_only_refusals_no_honest_edge_causes_count() -> None:
    assert _hard_refusal("wire.signature") and _hard_refusal("wire.version")
    assert _hard_refusal("validation.shape") and _hard_refusal("flood.lane_full")
    for soft in ("wire.replay", "wire.chunk_incomplete", "validation.stale",
                 "validation.duplicate", "validation.norm"):
        assert not _hard_refusal(soft)
