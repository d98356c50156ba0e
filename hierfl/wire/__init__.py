"""Wire format (v1, and v2 = v1 + model deltas): frames, their strict bounded codec, and
chunking for Kafka."""

from hierfl.wire.chunking import Reassembler, split_frame
from hierfl.wire.codec import DecodeLimits, decode_frame, encode_frame
from hierfl.wire.frames import (
    AggregateFrame,
    Frame,
    LayoutEntry,
    ModelDeltaFrame,
    ModelFrame,
    UpdateFrame,
    weights_digest,
)

__all__ = [
    "AggregateFrame",
    "DecodeLimits",
    "Frame",
    "LayoutEntry",
    "ModelDeltaFrame",
    "ModelFrame",
    "Reassembler",
    "UpdateFrame",
    "decode_frame",
    "encode_frame",
    "split_frame",
    "weights_digest",
]
