"""FogRound, the fog's pure state machine: transitions, closing rules, HierFAVG, validation.

No broker, no clock: events are fed directly and time is a number.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from hierfl.aggregation import FedAvg, Krum, Median
from hierfl.errors import (
    ConfigError,
    DuplicateUpdateError,
    NonFiniteError,
    NormBoundError,
    SampleCountError,
    ShapeMismatchError,
    StaleUpdateError,
    UnknownSenderError,
    ValidationError,
    WrongRecipientError,
)
from hierfl.fog.round import (
    FogRound,
    FogRoundConfig,
    FogState,
    Forward,
    PublishModel,
    RoundClosed,
    RoundSkipped,
)
from hierfl.wire.frames import LayoutEntry, ModelFrame, UpdateFrame

FED, FOG, D = "fed", "fog0", 4
LAYOUT = (LayoutEntry("w", (D,)),)
G0 = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)


def config(**kw: Any) -> FogRoundConfig:
    base: dict[str, Any] = {"federation": FED, "fog_id": FOG, "round_timeout_s": 10.0}
    return FogRoundConfig(**{**base, **kw})


def global_model(version: int = 0, weights: np.ndarray = G0, **kw: Any) -> ModelFrame:
    return ModelFrame(FED, version, np.asarray(weights, np.float32), layout=LAYOUT, **kw)


def update(edge: str, seq: int, delta: Any = 0.1, *, n: int = 10, version: int = 0,
           metrics: dict[str, float] | None = None, fog: str = FOG, fed: str = FED) -> UpdateFrame:
    vec = np.broadcast_to(np.asarray(delta, np.float32), (D,)).copy()
    return UpdateFrame(fed, fog, edge, version, seq, n, vec, metrics or {})


def collecting(fog_round: FogRound | None = None, *, now: float = 0.0, **kw: Any) -> FogRound:
    fog = fog_round or FogRound(config(**kw), FedAvg())
    fog.on_global_model(global_model(), now)
    return fog


def snapshot(fog: FogRound) -> tuple[Any, ...]:
    """Everything a rejected update must leave untouched."""
    c = fog._cycle
    return (
        fog.state, fog.seq, fog.deadline, fog.version, fog.pending, fog.norm_bound,
        fog._validator.accepted_norms if fog._validator else None,
        None if c is None else (c.fog_round, c.weights.tobytes(), c.cum_delta.tobytes(),
                                dict(c.samples), list(c.metrics)),
    )


def of_type(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


# --- transitions ---------------------------------------------------------------------------


def test_starts_waiting_and_refuses_updates_until_a_model_arrives():
    fog = FogRound(config(), FedAvg())

    assert fog.state is FogState.WAITING_MODEL
    assert (fog.version, fog.model_size, fog.deadline, fog.norm_bound) == (None, None, None, None)
    with pytest.raises(StaleUpdateError, match="waiting_model"):
        fog.on_update(update("e0", 0), 0.0)
    assert fog.on_tick(1e9) == []


def test_global_model_opens_a_round_and_publishes_the_fog_model():
    fog = FogRound(config(round_timeout_s=7.0), FedAvg(), seq=4)

    actions = fog.on_global_model(global_model(3), now=100.0)

    (pub,) = actions
    assert isinstance(pub, PublishModel)
    f = pub.frame
    assert (f.scope, f.fog_id, f.version, f.parent, f.seq, f.fog_round) == ("fog", FOG, 3, 3, 5, 0)
    np.testing.assert_array_equal(f.weights, G0)
    assert f.layout == LAYOUT
    assert fog.state is FogState.COLLECTING
    assert (fog.version, fog.seq, fog.deadline, fog.model_size) == (3, 5, 107.0, D)
    assert fog.norm_bound == math.inf


@pytest.mark.parametrize(
    "frame",
    [
        ModelFrame("other", 5, G0, layout=LAYOUT),
        ModelFrame(FED, 5, G0, scope="fog", fog_id="fogx", layout=LAYOUT),
    ],
    ids=["other-federation", "fog-scope"],
)
def test_models_not_for_this_federation_or_not_global_are_ignored(frame):
    fog = FogRound(config(), FedAvg())

    assert fog.on_global_model(frame, 0.0) == []
    assert fog.state is FogState.WAITING_MODEL


def test_older_or_equal_global_versions_are_ignored():
    fog = collecting()
    fog.on_global_model(global_model(2), 0.0)
    before = snapshot(fog)

    assert fog.on_global_model(global_model(2, G0 + 1), 5.0) == []
    assert fog.on_global_model(global_model(1, G0 + 1), 5.0) == []
    assert snapshot(fog) == before


def test_round_closes_at_min_updates_and_forwards_the_weighted_average_with_k2_1():
    fog = collecting(min_updates=2)

    assert fog.on_update(update("b", 1, 1.0, n=30), 1.0) == []
    assert fog.pending == ("b",)
    actions = fog.on_update(update("a", 1, -1.0, n=10), 2.0)

    closed, fwd = actions
    assert closed == RoundClosed(0, 1, 1, ("a", "b"), 40, timed_out=False)
    assert isinstance(fwd, Forward)
    agg = fwd.frame
    np.testing.assert_allclose(agg.delta, np.full(D, (30 - 10) / 40))
    assert (agg.base_version, agg.num_samples, agg.contributors, agg.fog_rounds) == (
        0, 40, ("a", "b"), 1)
    assert fog.state is FogState.FORWARDED
    assert fog.deadline is None
    assert fog.pending == ()


def test_aggregator_gets_the_stack_in_sorted_edge_order_with_claimed_counts():
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def record(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
        seen.append((updates.copy(), weights.copy()))
        return np.zeros(updates.shape[1], np.float32)

    fog = collecting(FogRound(config(min_updates=3), record))
    for edge, v, n in (("c", 3.0, 7), ("a", 1.0, 5), ("b", 2.0, 6)):
        fog.on_update(update(edge, 1, v, n=n), 0.0)

    ((stack, weights),) = seen
    np.testing.assert_array_equal(stack[:, 0], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(weights, [5, 6, 7])
    assert weights.dtype == np.float64


def test_deadline_closes_with_quorum_and_marks_it_timed_out():
    fog = collecting(min_updates=3, quorum=2, now=0.0)
    fog.on_update(update("a", 1, 1.0), 1.0)
    fog.on_update(update("b", 1, 3.0), 2.0)

    assert fog.on_tick(9.99) == []
    closed, fwd = fog.on_tick(10.0)

    assert closed == RoundClosed(0, 1, 1, ("a", "b"), 20, timed_out=True)
    np.testing.assert_allclose(fwd.frame.delta, np.full(D, 2.0))
    assert fog.state is FogState.FORWARDED
    assert fog.on_tick(1e9) == []


def test_deadline_below_quorum_skips_and_reopens_under_a_new_seq():
    fog = collecting(min_updates=3, quorum=2, now=0.0)
    fog.on_update(update("a", 1), 1.0)

    skipped, pub = fog.on_tick(10.0)

    assert skipped == RoundSkipped(version=0, seq=1, received=1)
    assert isinstance(pub, PublishModel)
    assert (pub.frame.seq, pub.frame.fog_round) == (2, 0)
    np.testing.assert_array_equal(pub.frame.weights, G0)  # nothing was folded
    assert fog.state is FogState.COLLECTING
    assert (fog.seq, fog.deadline, fog.pending) == (2, 20.0, ())
    # the skip changed no weights: an update trained from seq 1 is as fresh as one from
    # seq 2 (an edge slower than the deadline is not made stale by skips) ...
    assert fog.on_update(update("a", 1), 11.0) == []
    # ... and the edge contributes once per round, whichever seq it trained from
    with pytest.raises(DuplicateUpdateError):
        fog.on_update(update("a", 2), 11.0)


def test_a_slow_edge_is_not_made_stale_by_skipped_rounds_only_by_a_changed_model():
    fog = collecting(min_updates=1, quorum=1, k2=2, now=0.0)
    for t in (10.0, 20.0, 30.0):  # three empty rounds skipped: seqs 2, 3, 4 share a model
        fog.on_tick(t)
    assert fog.seq == 4
    closed, pub = fog.on_update(update("slow", 1), 31.0)  # trained from seq 1
    assert isinstance(closed, RoundClosed) and closed.contributors == ("slow",)
    assert pub.frame.seq == 5  # a changed model
    with pytest.raises(StaleUpdateError):  # trained from a model older than the current one
        fog.on_update(update("other", 4), 32.0)


def test_a_redelivered_update_is_not_folded_into_a_later_round():
    fog = collecting(min_updates=1, quorum=1, max_staleness=1, k2=3, now=0.0)
    fog.on_update(update("a", 1), 1.0)  # closes seq 1, opens seq 2
    # the same update again (a QoS 1 redelivery): fresh enough, but already folded
    with pytest.raises(DuplicateUpdateError):
        fog.on_update(update("a", 1), 2.0)


def test_skip_with_no_update_at_all():
    fog = collecting(min_updates=2, quorum=1, now=0.0)

    skipped, _ = fog.on_tick(10.0)

    assert skipped == RoundSkipped(0, 1, 0)
    assert fog.seq == 2


def test_k2_2_publishes_the_fog_model_between_fog_rounds_then_forwards_the_sum():
    fog = collecting(min_updates=2, k2=2)

    fog.on_update(update("a", 1, 1.0, n=10, metrics={"loss": 4.0}), 0.0)
    closed1, pub = fog.on_update(update("b", 1, 3.0, n=30, metrics={"loss": 2.0}), 0.0)
    assert closed1 == RoundClosed(0, 1, 1, ("a", "b"), 40, timed_out=False)
    assert isinstance(pub, PublishModel)
    first = np.full(D, (10 * 1.0 + 30 * 3.0) / 40, np.float32)  # 2.5
    np.testing.assert_allclose(pub.frame.weights, G0 + first)
    assert (pub.frame.seq, pub.frame.fog_round, pub.frame.version) == (2, 1, 0)
    assert fog.state is FogState.COLLECTING

    # second fog round: a new edge and one edge again with a larger claim
    fog.on_update(update("a", 2, -1.0, n=50, metrics={"loss": 1.0}), 0.0)
    closed2, fwd = fog.on_update(update("c", 2, 1.0, n=50, metrics={"loss": 3.0}), 0.0)

    assert closed2 == RoundClosed(0, 2, 2, ("a", "c"), 100, timed_out=False)
    agg = fwd.frame
    np.testing.assert_allclose(agg.delta, first + 0.0)  # second round averages to 0
    assert agg.fog_rounds == 2
    assert agg.contributors == ("a", "b", "c")
    assert agg.num_samples == 50 + 30 + 50  # distinct edges, each at its largest claim
    # sample-weighted over every accepted update of the cloud round
    assert agg.metrics == pytest.approx({"loss": (40 + 60 + 50 + 150) / 140})
    assert fog.state is FogState.FORWARDED


def test_forwarded_delta_is_accumulated_not_recomputed_from_weights():
    # g + D - g loses float32 precision when |g| >> |D|; the fog keeps D separately.
    big = np.full(D, 1e6, np.float32)
    fog = FogRound(config(k2=2), FedAvg())
    fog.on_global_model(global_model(0, big), 0.0)
    fog.on_update(update("a", 1, 1e-3), 0.0)
    (_, fwd) = fog.on_update(update("a", 2, 1e-3), 0.0)

    np.testing.assert_allclose(fwd.frame.delta, np.full(D, 2e-3), rtol=1e-6)


def test_newer_global_model_after_forwarding_starts_a_fresh_cycle():
    fog = collecting(k2=1)
    fog.on_update(update("a", 1, 1.0), 0.0)
    assert fog.state is FogState.FORWARDED

    (pub,) = fog.on_global_model(global_model(1, G0 + 1), 50.0)

    assert fog.state is FogState.COLLECTING
    assert (fog.version, fog.seq, fog.deadline) == (1, 2, 60.0)
    assert (pub.frame.version, pub.frame.seq, pub.frame.fog_round) == (1, 2, 0)
    np.testing.assert_array_equal(pub.frame.weights, G0 + 1)
    (_, fwd) = fog.on_update(update("b", 2, 0.5, version=1, n=3), 51.0)
    np.testing.assert_allclose(fwd.frame.delta, np.full(D, 0.5))  # no leftover of v0
    assert (fwd.frame.contributors, fwd.frame.num_samples) == (("b",), 3)


def test_newer_global_model_mid_round_abandons_the_open_round():
    fog = collecting(min_updates=2)
    fog.on_update(update("a", 1), 0.0)

    fog.on_global_model(global_model(1), 1.0)

    assert fog.pending == ()
    assert (fog.version, fog.seq) == (1, 2)
    with pytest.raises(StaleUpdateError):
        fog.on_update(update("b", 1), 2.0)


# --- resume --------------------------------------------------------------------------------


def test_resume_continues_the_cycle_from_the_retained_fog_model():
    fog = FogRound(config(k2=2), FedAvg())
    folded = G0 + 0.5
    fog_frame = ModelFrame(FED, 0, folded, parent=0, scope="fog", fog_id=FOG, seq=7,
                           fog_round=1, layout=LAYOUT)

    (pub,) = fog.resume(global_model(0), fog_frame, now=3.0)

    assert (pub.frame.seq, pub.frame.fog_round) == (7, 1)  # re-published with its own seq
    np.testing.assert_array_equal(pub.frame.weights, folded)
    assert (fog.state, fog.seq, fog.deadline, fog.version) == (FogState.COLLECTING, 7, 13.0, 0)
    (closed, fwd) = fog.on_update(update("a", 7, 0.25), 4.0)
    assert closed.fog_round == 2
    np.testing.assert_allclose(fwd.frame.delta, np.full(D, 0.75))  # 0.5 before + 0.25 now
    assert fwd.frame.fog_rounds == 2


def test_a_resumed_round_refuses_a_redelivered_update_already_in_its_model():
    """The updates folded in a fog model go to disk with it (PublishModel.folded); a fog
    resumed from it refuses them again (found by the simulator: a QoS 1 redelivery after
    the restart was folded a second time)."""
    fog = collecting(min_updates=1, k2=3, max_staleness=1, now=0.0)
    _, pub = fog.on_update(update("a", 1), 1.0)  # closes seq 1; seq 2 has it folded in
    assert pub.folded == frozenset({("a", 1)})
    again = FogRound(config(min_updates=1, k2=3, max_staleness=1), FedAvg())
    again.resume(global_model(0), pub.frame, 2.0, folded=pub.folded)
    with pytest.raises(DuplicateUpdateError):
        again.on_update(update("a", 1), 3.0)
    assert again.on_update(update("a", 2), 3.0)  # its next update closes seq 2


@pytest.mark.parametrize(
    ("fog_version", "fog_id"), [(0, "fog9"), (1, FOG)], ids=["other-fog", "other-version"]
)
def test_resume_from_an_unrelated_fog_model_starts_a_fresh_cycle(fog_version, fog_id):
    fog = FogRound(config(), FedAvg())
    fog_frame = ModelFrame(FED, fog_version, G0 + 9, parent=fog_version, scope="fog",
                           fog_id=fog_id, seq=7, fog_round=1, layout=LAYOUT)

    (pub,) = fog.resume(global_model(2), fog_frame, now=0.0)

    assert (fog.version, fog.seq) == (2, 8)  # never reuses a seq the edges already saw
    assert pub.frame.fog_round == 0
    np.testing.assert_array_equal(pub.frame.weights, G0)


# --- validation ----------------------------------------------------------------------------

REJECTIONS = {
    # name: (config overrides, fog setup before the update, update, error)
    "recipient-fog": ({}, None, update("a", 1, fog="fog9"), WrongRecipientError),
    "recipient-federation": ({}, None, update("a", 1, fed="other"), WrongRecipientError),
    "sender": ({"allowed_edges": frozenset({"a", "b"})}, None, update("x", 1),
               UnknownSenderError),
    "stale-version": ({"max_staleness": 5}, None, update("a", 1, version=1), StaleUpdateError),
    "stale-old-seq": ({"min_updates": 1, "k2": 3}, "moved", update("a", 1), StaleUpdateError),
    "stale-beyond-max": ({"max_staleness": 1, "min_updates": 1, "k2": 3}, "moved2",
                         update("a", 1), StaleUpdateError),
    "stale-future-seq": ({"max_staleness": 3}, None, update("a", 2), StaleUpdateError),
    "duplicate": ({"min_updates": 3}, "a-sent", update("a", 1, 0.2), DuplicateUpdateError),
    "samples-too-many": ({"max_samples": 100}, None, update("a", 1, n=101), SampleCountError),
    "samples-too-few": ({"min_samples": 5}, None, update("a", 1, n=4), SampleCountError),
    "shape": ({}, None, UpdateFrame(FED, FOG, "a", 0, 1, 10, np.zeros(D + 1, np.float32)),
              ShapeMismatchError),
    "nan": ({}, None, update("a", 1, [0.0, np.nan, 0.0, 0.0]), NonFiniteError),
    "inf": ({}, None, update("a", 1, [0.0, 0.0, -np.inf, 0.0]), NonFiniteError),
    "norm-fixed": ({"max_norm": 1.0}, None, update("a", 1, 0.6), NormBoundError),  # norm 1.2
    "norm-adaptive": ({"adaptive_norm_multiplier": 3.0, "adaptive_min_norms": 2,
                       "min_updates": 4}, "two-sent", update("c", 1, 2.0), NormBoundError),
}

REASONS = {
    WrongRecipientError: "validation.recipient",
    UnknownSenderError: "validation.sender",
    StaleUpdateError: "validation.stale",
    DuplicateUpdateError: "validation.duplicate",
    SampleCountError: "validation.samples",
    ShapeMismatchError: "validation.shape",
    NonFiniteError: "validation.non_finite",
    NormBoundError: "validation.norm",
}


def _setup(fog: FogRound, how: str | None) -> None:
    if how == "skip":  # move on to seq 2 with nothing accepted
        fog.on_tick(10.0)
    elif how == "skip2":
        fog.on_tick(10.0)
        fog.on_tick(20.0)
    elif how == "moved":  # a round closed by another edge: seq 2 is a changed model
        fog.on_update(update("z", 1), 0.0)
    elif how == "moved2":  # two changed models since seq 1
        fog.on_update(update("z", 1), 0.0)
        fog.on_update(update("z", 2), 0.0)
    elif how == "a-sent":
        fog.on_update(update("a", 1), 0.0)
    elif how == "two-sent":  # norms 1.0 and 1.0: adaptive bound 3.0; the attacker sends 4.0
        fog.on_update(update("a", 1, 0.5), 0.0)
        fog.on_update(update("b", 1, 0.5), 0.0)


@pytest.mark.parametrize("name", list(REJECTIONS))
def test_every_rejection_reason_leaves_the_state_unchanged(name):
    overrides, how, frame, error = REJECTIONS[name]
    fog = collecting(**{"min_updates": 2, **overrides})
    _setup(fog, how)
    before = snapshot(fog)

    with pytest.raises(error) as info:
        fog.on_update(frame, 1.0)

    assert isinstance(info.value, ValidationError)
    assert info.value.reason == REASONS[error]
    assert snapshot(fog) == before


def test_update_while_forwarded_is_stale_and_changes_nothing():
    fog = collecting()
    fog.on_update(update("a", 1), 0.0)
    before = snapshot(fog)

    with pytest.raises(StaleUpdateError, match="forwarded"):
        fog.on_update(update("b", 1), 1.0)

    assert snapshot(fog) == before


def test_a_stranger_is_refused_as_a_sender_even_when_the_fog_is_not_collecting():
    fog = FogRound(config(allowed_edges=frozenset({"a"})), FedAvg())

    with pytest.raises(UnknownSenderError):
        fog.on_update(update("x", 0), 0.0)


def test_bounded_staleness_accepts_recent_seqs_of_the_same_version_only():
    fog = collecting(min_updates=3, quorum=3, max_staleness=1)
    fog.on_tick(10.0)  # skip: seq 2, same model

    assert fog.on_update(update("a", 1), 11.0) == []  # one seq behind: accepted
    assert fog.on_update(update("b", 2), 11.0) == []
    with pytest.raises(DuplicateUpdateError):  # one contribution per round, whatever its seq
        fog.on_update(update("a", 2), 11.0)
    assert fog.pending == ("a", "b")


def test_allow_list_admits_listed_edges():
    fog = collecting(allowed_edges=frozenset({"a"}))

    closed, _ = fog.on_update(update("a", 1), 0.0)

    assert closed.contributors == ("a",)


def test_adaptive_bound_learns_from_accepted_norms_only_and_survives_versions():
    fog = collecting(min_updates=5, adaptive_norm_multiplier=2.0, adaptive_min_norms=3)
    for e in ("a", "b"):
        fog.on_update(update(e, 1, 0.5), 0.0)  # norm 1.0
    assert fog.norm_bound == math.inf  # not enough norms yet
    fog.on_update(update("c", 1, 100.0), 0.0)  # accepted while the bound is not active
    assert fog.norm_bound == pytest.approx(2.0 * 1.0)  # median of (1, 1, 200)

    with pytest.raises(NormBoundError):
        fog.on_update(update("d", 1, 1.5), 0.0)  # norm 3.0 > 2.0
    assert fog._validator.accepted_norms == pytest.approx((1.0, 1.0, 200.0))
    fog.on_update(update("d", 1, 0.9), 0.0)  # norm 1.8
    closed, _ = fog.on_update(update("e", 1, 0.5), 0.0)
    assert closed.contributors == ("a", "b", "c", "d", "e")

    fog.on_global_model(global_model(1), 20.0)
    assert fog.norm_bound == pytest.approx(2.0)  # median of (1, 1, 200, 1.8, 1): window kept


def test_fixed_and_adaptive_bounds_take_the_tighter():
    fog = collecting(min_updates=9, max_norm=1.5, adaptive_norm_multiplier=10.0,
                     adaptive_min_norms=1)
    fog.on_update(update("a", 1, 0.5), 0.0)  # norm 1.0 -> adaptive bound 10.0

    assert fog.norm_bound == 1.5
    with pytest.raises(NormBoundError):
        fog.on_update(update("b", 1, 0.8), 0.0)  # norm 1.6


@pytest.mark.parametrize(
    "overrides",
    [
        {"min_samples": 10, "max_samples": 5},
        {"max_norm": 0.0},
        {"adaptive_norm_multiplier": -1.0},
        {"norm_window": 3, "adaptive_min_norms": 4},
        {"max_staleness": -1},
    ],
)
def test_a_bad_validation_policy_fails_at_construction(overrides):
    with pytest.raises(ConfigError):
        FogRound(config(**overrides), FedAvg())


def test_robust_rule_at_the_fog_ignores_a_scaled_outlier():
    fog = collecting(FogRound(config(min_updates=5), Median()))
    for i, v in enumerate((0.9, 1.0, 1.1, 1.2)):
        fog.on_update(update(f"h{i}", 1, v), 0.0)
    _, fwd = fog.on_update(update("evil", 1, 1000.0, n=10**6), 0.0)

    np.testing.assert_allclose(fwd.frame.delta, np.full(D, 1.1))
    # one vote each: the fog's weight at the cloud is 5 x the median claim, not 10**6 + 40
    assert fwd.frame.num_samples == 5 * 10


def test_fedavg_fog_forwards_the_sum_of_claims():
    fog = collecting(min_updates=2)
    fog.on_update(update("a", 1, n=7), 0.0)
    _, fwd = fog.on_update(update("b", 1, n=5000), 0.0)

    assert fwd.frame.num_samples == 5007


def test_a_rule_that_refuses_its_updates_skips_the_round_instead_of_crashing():
    fog = collecting(FogRound(config(min_updates=10, quorum=1), Krum(f=1)))
    fog.on_update(update("a", 1), 0.0)
    fog.on_update(update("b", 1), 0.0)

    actions = fog.on_tick(10.0)  # deadline: Krum needs n >= 2f + 3 = 5 updates

    (skipped,) = of_type(actions, RoundSkipped)
    assert (skipped.reason, skipped.received, skipped.version) == ("aggregation", 2, 0)
    assert of_type(actions, Forward) == []
    (pub,) = of_type(actions, PublishModel)
    assert pub.frame.seq == 2 and fog.state is FogState.COLLECTING and fog.pending == ()
    np.testing.assert_array_equal(pub.frame.weights, G0)  # nothing was applied


# --- metrics -------------------------------------------------------------------------------


def test_forwarded_metrics_are_sample_weighted_over_updates_that_report_them():
    fog = collecting(min_updates=3)
    fog.on_update(update("a", 1, n=1, metrics={"loss": 1.0, "acc": 0.5}), 0.0)
    fog.on_update(update("b", 1, n=3, metrics={"loss": 2.0}), 0.0)
    _, fwd = fog.on_update(update("c", 1, n=6), 0.0)

    assert fwd.frame.metrics == pytest.approx({"loss": (1 * 1.0 + 3 * 2.0) / 4, "acc": 0.5})
    assert fwd.frame.num_samples == 10


def test_updates_before_the_first_model_are_kept_then_admitted_after_it():
    from hierfl.errors import StateError
    from hierfl.fog.round import Admit

    fog = FogRound(config(early_limit=2), FedAvg())
    assert fog.on_early(update("a", 1), "h-a") and fog.on_early(update("b", 1), "h-b")
    assert not fog.on_early(update("c", 1), "h-c")  # bounded: dropped
    assert fog.early == 2
    pub, *admits = fog.on_global_model(global_model(), 0.0)
    assert isinstance(pub, PublishModel)
    assert all(isinstance(a, Admit) for a in admits)
    assert [(a.frame.edge_id, a.handle) for a in admits] == [("a", "h-a"), ("b", "h-b")]
    assert fog.early == 0
    with pytest.raises(StateError):
        fog.on_early(update("d", 1))


def test_spooled_updates_of_earlier_rounds_are_dropped_and_of_this_round_readmitted():
    fog = collecting(min_updates=1, k2=3, now=0.0)
    fog.on_update(update("a", 1), 1.0)  # closes seq 1: seq 2 is a model with it folded in
    assert fog.spooled(0, 1) == "drop"
    assert fog.spooled(0, 2) == "readmit"
    assert fog.spooled(0, 3) == "judge"
