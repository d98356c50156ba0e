"""Wire format v1: frames, their strict bounded codec, and chunking for Kafka."""

from hierfl.wire.chunking import Reassembler, split_frame
from hierfl.wire.codec import DecodeLimits, decode_frame, encode_frame
from hierfl.wire.frames import AggregateFrame, Frame, LayoutEntry, ModelFrame, UpdateFrame

__all__ = [
    "AggregateFrame",
    "DecodeLimits",
    "Frame",
    "LayoutEntry",
    "ModelFrame",
    "Reassembler",
    "UpdateFrame",
    "decode_frame",
    "encode_frame",
    "split_frame",
]
