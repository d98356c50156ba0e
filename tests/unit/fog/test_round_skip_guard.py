"""A round whose rule refuses its updates is skipped at most once per deadline (no hot loop)."""

from __future__ import annotations

from hierfl.aggregation import Median
from hierfl.fog.round import FogRound, FogState, Forward, PublishModel, RoundSkipped
from tests.unit.fog.test_fog_round import collecting, config, of_type, update


def test_refused_at_min_updates_keeps_collecting_until_the_deadline():
    # A config the settings would refuse (quorum 2 < 2 nnm_f + 1), fed to the round directly:
    # the run-time guard must still not reopen the round at once.
    fog = collecting(FogRound(config(min_updates=2, quorum=2), Median(nnm_f=1)))
    fog.on_update(update("a", 1), 0.0)

    actions = fog.on_update(update("b", 1), 1.0)

    assert actions == []  # not skipped, not reopened: nothing for the edges to answer
    assert fog.state is FogState.COLLECTING and fog.seq == 1
    assert fog.pending == ("a", "b") and fog.deadline == 10.0


def test_a_third_update_before_the_deadline_closes_the_refused_round():
    fog = collecting(FogRound(config(min_updates=2, quorum=2), Median(nnm_f=1)))
    fog.on_update(update("a", 1), 0.0)
    fog.on_update(update("b", 1), 1.0)

    actions = fog.on_update(update("c", 1), 2.0)

    assert of_type(actions, Forward)


def test_at_most_one_skipped_round_per_deadline():
    fog = collecting(FogRound(config(min_updates=2, quorum=2), Median(nnm_f=1)))
    skipped = []
    now = 0.0
    for round_ in range(3):  # edges answer every new model at once
        seq = fog.seq
        for t in (0.1, 0.2, 0.3):
            actions = fog.on_update(update("a" if t < 0.2 else "b", seq), now + t) \
                if t < 0.3 else fog.on_tick(now + t)
            skipped += of_type(actions, RoundSkipped)
        assert len(skipped) == round_  # nothing skipped before the deadline
        now += 10.0
        actions = fog.on_tick(now)
        skipped += of_type(actions, RoundSkipped)
        assert len(skipped) == round_ + 1
        assert of_type(actions, PublishModel)[0].frame.seq == seq + 1
    assert [s.reason for s in skipped] == ["aggregation"] * 3
