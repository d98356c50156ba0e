"""The fog's model fan-out to its edges: full models, and deltas for edges that hold the base.

For every new fog model the fog publishes two messages (``docs/architecture.md``, "Model
fan-out"):

- ``full``, retained on ``hierfl/F/G/model``: the whole model. Edges that just joined, missed
  a model or reconnected take it. In delta mode it is always raw float32, so an edge that takes
  it holds bit for bit what the up-to-date edges reconstructed.
- ``stream``, not retained, on ``hierfl/F/G/delta``, published second: a
  :class:`~hierfl.wire.ModelDeltaFrame` against the previous model when deltas are on and the
  fog knows exactly what its edges hold, else the full frame again. The stream carries every
  model, so an edge that holds one needs nothing else.

With a lossy model codec the fog tracks what its edges reconstruct,
``held = previous held + decode(encode(target - previous held))``, and sends the next delta
against that reconstruction, never against its own exact weights: the quantisation error of
one step is carried into the next delta (error feedback) instead of accumulating, and every
delta names a base that fog and edges agree on bit for bit (checked by a digest).

:class:`Downlink` is pure (no I/O): the fog service calls :meth:`Downlink.prepare`, publishes
the messages, then :meth:`Downlink.commit`. Edges call :func:`apply_model_delta`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from hierfl.errors import ModelBaseError
from hierfl.types import Float32Vector
from hierfl.wire.codec import DecodeLimits, FrameSigner, decode_frame, encode_frame
from hierfl.wire.frames import ModelDeltaFrame, ModelFrame, weights_digest
from hierfl.wire.tensors import decode_vector, encode_vector

__all__ = ["Downlink", "DownlinkMessages", "apply_model_delta"]


def _add(base: Float32Vector, delta: Float32Vector) -> Float32Vector:
    # The one reconstruction both ends compute: element-wise IEEE float32 addition, which is
    # exactly rounded and so identical on every platform.
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked by the callers
        return np.add(base, delta, dtype=np.float32)


def apply_model_delta(held: ModelFrame, delta: ModelDeltaFrame) -> ModelFrame:
    """The fog model ``delta`` produces from ``held``, checked bit for bit.

    Args:
        held: the model the receiver holds (decoded from a full frame or a previous delta).
        delta: a decoded model-delta frame (untrusted).

    Returns:
        The new fog model, with ``held``'s layout.

    Raises:
        ModelBaseError: if ``held`` is not the delta's base (federation, fog, version, seq),
            the sizes differ, or the result is not finite or does not match ``delta.digest``.
    """
    base = (held.federation, held.fog_id, held.version, held.seq)
    named = (delta.federation, delta.fog_id, delta.base_version, delta.base_seq)
    if base != named:
        raise ModelBaseError(f"the delta is against {named}; the receiver holds {base}")
    if held.weights.size != delta.delta.size:
        raise ModelBaseError(
            f"a delta of {delta.delta.size} values for a model of {held.weights.size}"
        )
    weights = _add(held.weights, delta.delta)
    if not np.isfinite(weights).all():
        raise ModelBaseError("the delta makes the model non-finite")
    if weights_digest(weights) != delta.digest:
        raise ModelBaseError(f"model v{delta.version} seq {delta.seq} does not match its digest")
    return ModelFrame(
        federation=delta.federation, version=delta.version, weights=weights,
        parent=delta.version, scope="fog", fog_id=delta.fog_id, seq=delta.seq,
        fog_round=delta.fog_round, layout=held.layout, metrics=dict(delta.metrics),
        created_at=delta.created_at,
    )


@dataclass(frozen=True, slots=True)
class DownlinkMessages:
    """What to publish for one fog model.

    Attributes:
        target: the model the fog asked to publish.
        held: what the edges hold once they took these messages (``target`` up to the
            model codec's error).
        full: the full model frame, for the retained model topic.
        stream: the frame for the delta topic.
        is_delta: whether ``stream`` is a model delta (else it is ``full``).
    """

    target: ModelFrame
    held: ModelFrame
    full: bytes
    stream: bytes
    is_delta: bool


@dataclass(frozen=True, slots=True)
class _PreEncoded:
    """A codec that returns fields already encoded (stochastic codecs must encode once)."""

    fields: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.fields["codec"])

    def encode(self, vec: Float32Vector, rng: Any = None) -> dict[str, Any]:
        del vec, rng
        return {k: v for k, v in self.fields.items() if k != "size"}


class Downlink:
    """The fog's side of the model fan-out: what its edges hold, and the frames to send next.

    Args:
        codec: codec spec of the fan-out (``None`` = raw): of the deltas in delta mode, of the
            full model otherwise (then it must be dense: raw, shuffle, fp16 or int8).
        delta: send deltas to edges that hold the previous model.
        max_params: decode limit, as the edges apply it.
        signer: signs every frame sent (the fog's key).

    Usage::

        out = downlink.prepare(frame)          # off the event loop: encodes
        await publish(model_topic, out.full, retain=True)
        await publish(delta_topic, out.stream)
        downlink.commit(out)
    """

    def __init__(self, *, codec: str | None, delta: bool, max_params: int,
                 signer: FrameSigner | None = None) -> None:
        self.codec = codec
        # a lossless codec (raw, shuffle) decodes to exactly what was encoded: no round trip
        self._lossless = codec is None or codec == "raw" or _lossless(codec)
        self.signer = signer
        self.delta = delta
        self._limits = DecodeLimits(max_params=max_params)
        self.held: ModelFrame | None = None

    def seed(self, frame: ModelFrame) -> None:
        """Record the model the edges hold (the retained model read after a restart)."""
        self.held = frame

    def commit(self, out: DownlinkMessages) -> None:
        """Record that ``out`` was published."""
        self.held = out.held

    def prepare(self, target: ModelFrame) -> DownlinkMessages:
        """Encode the messages that bring the edges to ``target`` (no state changes).

        A model carrying SCAFFOLD's control variate goes out whole (the control rides only
        on full models), as without delta mode.
        """
        if not self.delta or target.control is not None:
            full = encode_frame(target, codec=self.codec, signer=self.signer)
            held = target
            if not self._lossless:  # edges hold the decoded weights, not the fog's
                held = dataclasses.replace(target, weights=_decoded_weights(full, self._limits))
            return DownlinkMessages(target, held, full, full, is_delta=False)
        prev = self.held
        if prev is not None and _same_model(prev, target):
            full = encode_frame(dataclasses.replace(target, weights=prev.weights),
                                signer=self.signer)
            return DownlinkMessages(target, prev, full, full, is_delta=False)
        if prev is not None and _is_base_of(prev, target):
            out = self._delta(prev, target)
            if out is not None:
                return out
        full = encode_frame(target, signer=self.signer)
        return DownlinkMessages(target, target, full, full, is_delta=False)

    def _delta(self, prev: ModelFrame, target: ModelFrame) -> DownlinkMessages | None:
        with np.errstate(over="ignore", invalid="ignore"):
            diff = np.subtract(target.weights, prev.weights, dtype=np.float32)
        if not np.isfinite(diff).all():
            return None
        fields = encode_vector(diff, self.codec)
        if self._lossless:
            sent = diff  # a lossless codec: the edges decode exactly these values
        else:
            # Decode as the edges will: the very fields they receive, after a msgpack round
            # trip.
            wire_fields = msgpack.unpackb(msgpack.packb(fields, use_bin_type=True), raw=False)
            sent = decode_vector(wire_fields, max_size=self._limits.max_params, field="delta")
        weights = _add(prev.weights, sent)
        if not np.isfinite(weights).all():
            return None
        held = dataclasses.replace(target, weights=weights)
        frame = ModelDeltaFrame(
            federation=target.federation, fog_id=target.fog_id or "", version=target.version,
            seq=target.seq, base_version=prev.version, base_seq=prev.seq, delta=sent,
            digest=weights_digest(weights), fog_round=target.fog_round,
            metrics=dict(target.metrics), created_at=target.created_at,
        )
        stream = encode_frame(frame, codec=_PreEncoded(fields), signer=self.signer)
        return DownlinkMessages(target, held, encode_frame(held, signer=self.signer), stream,
                                is_delta=True)


def _lossless(codec: str) -> bool:
    from hierfl.compression import make_codec  # noqa: PLC0415 - optional layer, as in tensors

    return bool(make_codec(codec).lossless)


def _same_model(a: ModelFrame, b: ModelFrame) -> bool:
    return (a.federation, a.fog_id, a.version, a.seq) == (b.federation, b.fog_id, b.version, b.seq)


def _is_base_of(prev: ModelFrame, target: ModelFrame) -> bool:
    return (
        prev.federation == target.federation
        and prev.fog_id == target.fog_id
        and target.scope == "fog"
        and prev.version <= target.version
        and prev.seq < target.seq
        and prev.weights.size == target.weights.size
    )


def _decoded_weights(data: bytes, limits: DecodeLimits) -> Float32Vector:
    frame = decode_frame(data, limits=limits)
    assert isinstance(frame, ModelFrame)
    return frame.weights
