"""ModelFeed: which model an edge holds and when it follows the full model topic, fed with
the frames a fog's Downlink produces (and hostile ones)."""

from __future__ import annotations

import numpy as np
import pytest

from hierfl.edge.model_feed import DELTA, FULL, ModelFeed
from hierfl.errors import ModelBaseError, UnknownSenderError, WrongRecipientError
from hierfl.wire import (
    ModelDeltaFrame,
    ModelFrame,
    UpdateFrame,
    decode_frame,
    weights_digest,
)
from hierfl.wire.downlink import Downlink, DownlinkMessages

RNG = np.random.default_rng(3)


def fog_model(seq: int, weights: np.ndarray | None = None, fog: str = "g") -> ModelFrame:
    w = RNG.normal(size=64).astype(np.float32) if weights is None else weights
    return ModelFrame(federation="f", version=1, weights=w, parent=1, scope="fog", fog_id=fog,
                      seq=seq)


def publish(downlink: Downlink, seq: int) -> DownlinkMessages:
    out = downlink.prepare(fog_model(seq))
    downlink.commit(out)
    return out


def take(feed: ModelFeed, kind: str, data: bytes | None) -> ModelFrame | None:
    assert data is not None
    return feed.on_frame(kind, decode_frame(data))


def test_follower_switches_to_deltas_and_back_after_a_gap() -> None:
    dl = Downlink(codec="fp16", delta=True, max_params=1000)
    feed = ModelFeed("f", "g")
    assert feed.follow_full  # a new edge needs the retained full model
    first = publish(dl, 1)
    got = take(feed, FULL, first.full)
    assert got is not None
    assert got.seq == 1
    assert not feed.follow_full  # holds the newest model: the stream brings the next ones
    assert take(feed, DELTA, first.stream) is not None  # the fog had no base: full on the stream
    second = publish(dl, 2)
    model = take(feed, DELTA, second.stream)
    assert model is not None
    assert model.seq == 2
    assert weights_digest(model.weights) == weights_digest(second.held.weights)
    assert not feed.follow_full
    # a full model of seq 2 still in flight on the full topic changes nothing
    full2 = take(feed, FULL, second.full)
    assert full2 is not None
    assert weights_digest(full2.weights) == weights_digest(model.weights)
    publish(dl, 3)  # missed
    fourth = publish(dl, 4)
    with pytest.raises(ModelBaseError):
        take(feed, DELTA, fourth.stream)
    assert feed.follow_full  # resync from the retained full model
    resynced = take(feed, FULL, fourth.full)
    assert resynced is not None
    assert resynced.seq == 4
    fifth = publish(dl, 5)
    assert take(feed, DELTA, fifth.stream) is not None
    assert not feed.follow_full


def test_joiner_takes_the_full_model_then_the_delta_of_the_same_model_syncs_it() -> None:
    dl = Downlink(codec="fp16", delta=True, max_params=1000)
    publish(dl, 1)
    second = publish(dl, 2)
    feed = ModelFeed("f", "g")
    assert take(feed, FULL, second.full) is not None
    assert take(feed, DELTA, second.stream) is None  # nothing new: same model, same digest
    assert not feed.follow_full
    third = publish(dl, 3)
    model = take(feed, DELTA, third.stream)
    assert model is not None
    assert weights_digest(model.weights) == weights_digest(third.held.weights)


def test_without_deltas_the_stream_carries_full_models() -> None:
    dl = Downlink(codec="fp16", delta=False, max_params=1000)
    feed = ModelFeed("f", "g")
    assert take(feed, FULL, publish(dl, 1).full) is not None
    for seq in (2, 3):
        out = publish(dl, seq)
        model = take(feed, DELTA, out.stream)
        assert model is not None
        assert model.seq == seq
        assert not feed.follow_full


def test_same_model_with_another_digest_resyncs() -> None:
    feed = ModelFeed("f", "g")
    feed.on_frame(FULL, fog_model(2))
    d = ModelDeltaFrame(federation="f", fog_id="g", version=1, seq=2, base_version=1,
                        base_seq=1, delta=np.zeros(64, np.float32), digest=b"\x07" * 16)
    feed.follow_full = False
    with pytest.raises(ModelBaseError):
        feed.on_frame(DELTA, d)
    assert feed.follow_full


def test_older_delta_is_ignored() -> None:
    feed = ModelFeed("f", "g")
    feed.on_frame(FULL, fog_model(5))
    feed.follow_full = False
    d = ModelDeltaFrame(federation="f", fog_id="g", version=1, seq=3, base_version=1,
                        base_seq=2, delta=np.zeros(64, np.float32), digest=bytes(16))
    assert feed.on_frame(DELTA, d) is None
    assert not feed.follow_full
    assert feed.held is not None
    assert feed.held.seq == 5


def test_delta_before_any_model_asks_for_the_full_model() -> None:
    feed = ModelFeed("f", "g")
    feed.follow_full = False
    d = ModelDeltaFrame(federation="f", fog_id="g", version=1, seq=3, base_version=1,
                        base_seq=2, delta=np.zeros(64, np.float32), digest=bytes(16))
    assert feed.on_frame(DELTA, d) is None  # not an error: a joiner's full model is coming
    assert feed.follow_full


def test_hostile_delta_leaves_the_held_model_alone() -> None:
    feed = ModelFeed("f", "g")
    held = fog_model(1)
    feed.on_frame(FULL, held)
    bad = np.full(64, np.float32(3e38))
    d = ModelDeltaFrame(federation="f", fog_id="g", version=1, seq=2, base_version=1,
                        base_seq=1, delta=bad, digest=weights_digest(held.weights + 1))
    with pytest.raises(ModelBaseError):
        feed.on_frame(DELTA, d)
    assert feed.held is held


@pytest.mark.parametrize(
    ("kind", "frame", "error"),
    [
        (FULL, fog_model(1, fog="other"), WrongRecipientError),
        (FULL, ModelFrame(federation="f", version=1, weights=np.zeros(2, np.float32)),
         WrongRecipientError),
        (DELTA, ModelDeltaFrame(federation="x", fog_id="g", version=1, seq=2, base_version=1,
                                base_seq=1, delta=np.zeros(2, np.float32), digest=bytes(16)),
         WrongRecipientError),
        (FULL, ModelDeltaFrame(federation="f", fog_id="g", version=1, seq=2, base_version=1,
                               base_seq=1, delta=np.zeros(2, np.float32), digest=bytes(16)),
         UnknownSenderError),
        (DELTA, UpdateFrame(federation="f", fog_id="g", edge_id="e", base_version=1,
                            base_seq=1, num_samples=1, delta=np.zeros(2, np.float32)),
         UnknownSenderError),
    ],
)
def test_misplaced_frames_are_refused(kind: str, frame: object, error: type) -> None:
    feed = ModelFeed("f", "g")
    with pytest.raises(error):
        feed.on_frame(kind, frame)  # type: ignore[arg-type]
    assert feed.held is None
