"""The one exception family of hierfl, rooted at :class:`HierflError`.

Every class carries a ``reason`` label (used as the ``reason`` label of the
``rejected_total`` counters) and a ``retriable`` flag. Subclasses must set
``reason``; ``__init_subclass__`` enforces it.

::

    * HierflError
      x ConfigError                       reason="config"
      x WireFormatError                   reason="wire.format"     (never retriable)
        + FrameTooLargeError              reason="wire.too_large"
        + DecompressionError              reason="wire.decompress"
        + UnsupportedVersionError         reason="wire.version"
        + FrameFieldError                 reason="wire.field"
        + BadTensorError                  reason="wire.tensor"
        + NonFiniteTensorError            reason="wire.non_finite"
        + ChunkError                      reason="wire.chunk"
          + IncompleteFrameError          reason="wire.chunk_incomplete"
        + SignatureError                  reason="wire.signature"
          + SignerError                   reason="wire.signer"
          + RevokedError                  reason="wire.revoked"
          + ReplayError                   reason="wire.replay"
      x ValidationError                   reason="validation"
        + WrongRecipientError             reason="validation.recipient"
        + ShapeMismatchError              reason="validation.shape"
        + NonFiniteError                  reason="validation.non_finite"
        + NormBoundError                  reason="validation.norm"
        + StaleUpdateError                reason="validation.stale"
        + DuplicateUpdateError            reason="validation.duplicate"
        + SampleCountError                reason="validation.samples"
        + UnknownSenderError              reason="validation.sender"
        + ModelBaseError                  reason="validation.model_base"
      x CompressionError                  reason="compression"
      x AggregationError                  reason="aggregation"
      x PrivacyBudgetExhaustedError       reason="privacy.budget"
      x StoreError                        reason="store"
      x StateError                        reason="state"
      x TransportError                    reason="transport"        retriable=True
        + BrokerUnavailableError          reason="transport.unavailable"
          + BrokerRefusedError            reason="transport.refused"        retriable=False
        + PublishTimeoutError             reason="transport.publish_timeout"
        + DisconnectedError               reason="transport.disconnected"
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AggregationError",
    "BadTensorError",
    "BrokerRefusedError",
    "BrokerUnavailableError",
    "ChunkError",
    "CompressionError",
    "ConfigError",
    "DecompressionError",
    "DisconnectedError",
    "DuplicateUpdateError",
    "FrameFieldError",
    "FrameTooLargeError",
    "HierflError",
    "IncompleteFrameError",
    "ModelBaseError",
    "NonFiniteError",
    "NonFiniteTensorError",
    "NormBoundError",
    "PrivacyBudgetExhaustedError",
    "PublishTimeoutError",
    "ReplayError",
    "RevokedError",
    "SampleCountError",
    "ShapeMismatchError",
    "SignatureError",
    "SignerError",
    "StaleUpdateError",
    "StateError",
    "StoreError",
    "TransportError",
    "UnknownSenderError",
    "UnsupportedVersionError",
    "ValidationError",
    "WireFormatError",
    "WrongRecipientError",
]


class HierflError(Exception):
    """Root of every error hierfl raises on purpose."""

    reason: ClassVar[str] = "hierfl"
    retriable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "reason" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must define a 'reason' class attribute")


class ConfigError(HierflError):
    """A setting is missing, malformed or inconsistent, or an extra is not installed."""

    reason = "config"


# --- wire -----------------------------------------------------------------------------------


class WireFormatError(HierflError):
    """Bytes on the wire are not a valid hierfl frame."""

    reason = "wire.format"


class FrameTooLargeError(WireFormatError):
    """A frame (compressed or decompressed) exceeds the configured size limit."""

    reason = "wire.too_large"


class DecompressionError(WireFormatError):
    """The zstd payload is corrupt."""

    reason = "wire.decompress"


class UnsupportedVersionError(WireFormatError):
    """The frame's magic or format version is not one this build understands."""

    reason = "wire.version"


class FrameFieldError(WireFormatError):
    """A field of a frame is missing, of the wrong type, or out of range."""

    reason = "wire.field"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r}: {problem}")
        self.field = field
        self.problem = problem


class BadTensorError(WireFormatError):
    """A tensor's dtype, shape or byte length is invalid or inconsistent."""

    reason = "wire.tensor"


class NonFiniteTensorError(WireFormatError):
    """A tensor on the wire holds NaN or Inf."""

    reason = "wire.non_finite"


class ChunkError(WireFormatError):
    """A chunk of a split frame is malformed or inconsistent with its siblings."""

    reason = "wire.chunk"


class IncompleteFrameError(ChunkError):
    """A partly received chunked frame was dropped: no chunk came for too long (its sender
    died mid-frame), or it was evicted to bound memory."""

    reason = "wire.chunk_incomplete"


class SignatureError(WireFormatError):
    """A frame's signature is missing or does not verify."""

    reason = "wire.signature"


class SignerError(SignatureError):
    """A valid signature by a party that may not sign this frame (unknown key, wrong role,
    another fog's key, or an id that disagrees with the frame or its topic)."""

    reason = "wire.signer"


class RevokedError(SignatureError):
    """A frame signed by a party on the revocation list."""

    reason = "wire.revoked"


class ReplayError(SignatureError):
    """A correctly signed frame whose counter was already seen (a replay)."""

    reason = "wire.replay"


# --- validation -----------------------------------------------------------------------------


class ValidationError(HierflError):
    """A well-formed frame that the receiving tier refuses to aggregate."""

    reason = "validation"


class WrongRecipientError(ValidationError):
    """The frame names another federation or fog than the one that received it."""

    reason = "validation.recipient"


class ShapeMismatchError(ValidationError):
    """The update's size does not match the model spec."""

    reason = "validation.shape"


class NonFiniteError(ValidationError):
    """The update holds NaN or Inf."""

    reason = "validation.non_finite"


class NormBoundError(ValidationError):
    """The update's L2 norm exceeds the configured or adaptive bound."""

    reason = "validation.norm"


class StaleUpdateError(ValidationError):
    """The update was computed from a model version that is no longer current."""

    reason = "validation.stale"


class DuplicateUpdateError(ValidationError):
    """The sender already contributed to this round."""

    reason = "validation.duplicate"


class SampleCountError(ValidationError):
    """The claimed sample count is out of the accepted range."""

    reason = "validation.samples"


class UnknownSenderError(ValidationError):
    """The sender is not in the configured allow-list, or the topic names another sender."""

    reason = "validation.sender"


class ModelBaseError(ValidationError):
    """A model delta does not apply: its receiver does not hold the base model it names, the
    sizes differ, or the result is not finite or does not match the delta's digest."""

    reason = "validation.model_base"


# --- computation ----------------------------------------------------------------------------


class CompressionError(HierflError):
    """An update codec cannot encode or decode its input."""

    reason = "compression"


class AggregationError(HierflError):
    """An aggregation rule cannot produce a result from its inputs."""

    reason = "aggregation"


class PrivacyBudgetExhaustedError(HierflError):
    """The configured privacy budget would be exceeded."""

    reason = "privacy.budget"


class StoreError(HierflError):
    """The model store cannot read or write a checkpoint."""

    reason = "store"


class StateError(HierflError):
    """A round state machine received an event that is invalid in its current state."""

    reason = "state"


# --- transport ------------------------------------------------------------------------------


class TransportError(HierflError):
    """A broker connection failed; the operation may succeed after a reconnect."""

    reason = "transport"
    retriable = True


class BrokerUnavailableError(TransportError):
    """The broker cannot be reached."""

    reason = "transport.unavailable"


class BrokerRefusedError(BrokerUnavailableError):
    """A broker failure that retrying cannot fix: fatal, the process exits.

    Credentials or authorisation refused (MQTT CONNACK "Not authorized" / "Bad user name or
    password", Kafka SASL), a TLS certificate that does not verify, a Kafka topic missing
    with ``create_topics = false``, or a broker still unreachable after the configured
    ``connect_attempts``. The message names the URL (or bootstrap) and the setting to check.
    """

    reason = "transport.refused"
    retriable = False


class PublishTimeoutError(TransportError):
    """A publish was not acknowledged in time."""

    reason = "transport.publish_timeout"


class DisconnectedError(TransportError):
    """The connection dropped while in use."""

    reason = "transport.disconnected"
