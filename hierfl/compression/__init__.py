"""Update compression: codecs that shrink a flat float32 delta, and error feedback.

Codecs (``raw``, ``shuffle`` (lossless byte planes), ``fp16``, ``int8``, ``topk``, ``randk``
and ``<sparse>+<dense>`` compositions such as ``topk+int8``) turn a vector into a msgpack-able
field dict naming its codec, so :func:`decode_vector` decodes any of them without prior
agreement. See :mod:`hierfl.compression.base` for the spec grammar of :func:`make_codec`.
"""

from hierfl.compression.base import (
    CODECS,
    DENSE_CODECS,
    Codec,
    decode_vector,
    encode_vector,
    make_codec,
)
from hierfl.compression.error_feedback import ErrorFeedback, PreEncoded
from hierfl.compression.fp16 import FP16_MAX, Fp16Codec
from hierfl.compression.int8 import Int8Codec
from hierfl.compression.randk import RandKCodec, randk_indices
from hierfl.compression.raw import RawCodec
from hierfl.compression.shuffle import ShuffleCodec
from hierfl.compression.topk import TopKCodec, topk_indices

__all__ = [
    "CODECS",
    "DENSE_CODECS",
    "FP16_MAX",
    "Codec",
    "ErrorFeedback",
    "Fp16Codec",
    "Int8Codec",
    "PreEncoded",
    "RandKCodec",
    "RawCodec",
    "ShuffleCodec",
    "TopKCodec",
    "decode_vector",
    "encode_vector",
    "make_codec",
    "randk_indices",
    "topk_indices",
]
