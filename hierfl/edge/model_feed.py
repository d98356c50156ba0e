"""Which fog model an edge holds, kept from the fog's two model topics (no I/O, no torch).

The fog publishes every model twice: in full, retained, on ``hierfl/F/G/model``, then on
``hierfl/F/G/delta`` (not retained) as a delta against the previous model, or in full when it
has no base or does not send deltas (``docs/architecture.md``, "Model fan-out"). The stream
therefore carries every model; the retained full model is for getting on it. An edge:

- subscribes to the stream, then to the full topic (so the retained model it gets is at least
  as new as anything the stream already delivered);
- unsubscribes from the full topic once it holds a model, so the broker no longer pushes full
  models to it, and follows the stream;
- subscribes to the full topic again when the stream leaves it behind: a delta whose base it
  does not hold (it missed a model) or that does not reproduce the fog's digest.

:class:`ModelFeed` makes those decisions; :class:`~hierfl.edge.client.EdgeClient` carries out
the (un)subscriptions it asks for and trains on the models it returns.
"""

from __future__ import annotations

from hierfl.errors import ModelBaseError, UnknownSenderError, WrongRecipientError
from hierfl.wire.downlink import apply_model_delta
from hierfl.wire.frames import Frame, ModelDeltaFrame, ModelFrame, weights_digest

__all__ = ["ModelFeed"]

FULL = "model"
DELTA = "delta"


class ModelFeed:
    """The model an edge of fog ``fog_id`` holds, and whether it needs the full topic.

    Args:
        federation: the edge's federation.
        fog_id: the edge's fog.

    Attributes:
        held: the model held (None before the first one).
        follow_full: whether the edge should be subscribed to the full (retained) topic.
        full_subscribed: whether it is (maintained by the client).
    """

    def __init__(self, federation: str, fog_id: str) -> None:
        self.federation = federation
        self.fog_id = fog_id
        self.held: ModelFrame | None = None
        self.follow_full = True
        self.full_subscribed = False
        self._digest: bytes | None = None

    def on_frame(self, topic_kind: str, frame: Frame) -> ModelFrame | None:
        """Take a decoded frame that arrived on the full (``"model"``) or delta (``"delta"``)
        topic.

        Returns:
            The new model to train on, or None (nothing new).

        Raises:
            WrongRecipientError: a frame for another federation or fog, or not a fog model.
            UnknownSenderError: a frame of a kind that has no place on that topic.
            ModelBaseError: a delta this edge cannot apply (missed base, digest mismatch, ...);
                ``follow_full`` is then set so the full model comes next.
        """
        if isinstance(frame, ModelFrame):
            if not (frame.scope == "fog" and frame.fog_id == self.fog_id
                    and frame.federation == self.federation):
                raise WrongRecipientError(
                    f"a {frame.scope} model of {frame.federation}/{frame.fog_id} reached an "
                    f"edge of {self.federation}/{self.fog_id}"
                )
            self.held, self._digest = frame, None
            self.follow_full = False  # holds the newest model: the stream brings the next
            return frame
        if not isinstance(frame, ModelDeltaFrame) or topic_kind != DELTA:
            raise UnknownSenderError(f"a {type(frame).__name__} on the {topic_kind} topic")
        if frame.federation != self.federation or frame.fog_id != self.fog_id:
            raise WrongRecipientError(
                f"a delta of {frame.federation}/{frame.fog_id} reached an edge of "
                f"{self.federation}/{self.fog_id}"
            )
        return self._on_delta(frame)

    def _on_delta(self, frame: ModelDeltaFrame) -> ModelFrame | None:
        held = self.held
        if held is not None:
            have, new = (held.version, held.seq), (frame.version, frame.seq)
            if new == have:  # took this model in full already (joined, or resynced)
                if self.digest() != frame.digest:
                    self.follow_full = True
                    raise ModelBaseError(f"holds v{have[0]} seq {have[1]} with another digest")
                self.follow_full = False
                return None
            if new < have:  # older than the model held: nothing to do
                return None
        if held is None:  # joining: the retained full model is on its way
            self.follow_full = True
            return None
        try:
            model = apply_model_delta(held, frame)
        except ModelBaseError:
            self.follow_full = True
            raise
        self.held, self._digest = model, frame.digest
        self.follow_full = False
        return model

    def digest(self) -> bytes | None:
        """:func:`~hierfl.wire.weights_digest` of the held model (cached)."""
        if self._digest is None and self.held is not None:
            self._digest = weights_digest(self.held.weights)
        return self._digest
