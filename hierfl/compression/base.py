"""The update-codec contract, the codec registry and the spec-string parser.

A codec turns a flat float32 delta into a msgpack-able ``dict[str, Any]`` whose values are
only ``str``/``int``/``float``/``bool``/``bytes`` (or lists of those) and back. The dict always
records the codec under ``"codec"``, so :func:`decode_vector` needs no out-of-band agreement:

    >>> codec = make_codec("topk+int8:fraction=0.01")
    >>> fields = encode_vector(delta, codec, rng=np.random.default_rng(0))
    >>> restored = decode_vector(fields, delta.size)

Spec grammar accepted by :func:`make_codec` (case-insensitive, blanks ignored)::

    spec    := stages [":" params]
    stages  := dense | sparse ["+" dense]
    dense   := "raw" | "shuffle" | "fp16" | "int8"
    sparse  := "topk" | "randk"
    params  := param ("," param)*
    param   := [stage "."] key "=" value

Parameters (all optional):

    int8   chunk=<int>       values per absmax scale, 1..2**24 (default 4096)
    topk   fraction=<float>  share of coordinates kept, (0, 1] (default 0.01)
    randk  fraction=<float>  as for topk
           seed=<int|none>   seeds the codec's frame-seed stream (default none: OS entropy)
           scaled=<bool>     multiply kept values by d/k, unbiased (default true); false for
                             error feedback

Ints accept base prefixes (``0x100``); bools accept true/false/1/0/yes/no/on/off.
An unqualified ``key`` goes to the one stage that has it (``topk+int8:fraction=0.01,chunk=1024``);
``int8.chunk=1024`` names the stage explicitly. ``"topk+raw"`` is the same codec as ``"topk"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np

from hierfl.compression._fields import CODEC_KEY, short_repr
from hierfl.compression.fp16 import Fp16Codec
from hierfl.compression.int8 import Int8Codec
from hierfl.compression.randk import RandKCodec
from hierfl.compression.raw import RawCodec
from hierfl.compression.shuffle import ShuffleCodec
from hierfl.compression.topk import TopKCodec
from hierfl.errors import BadTensorError, ConfigError
from hierfl.types import Float32Vector

__all__ = [
    "CODECS",
    "DENSE_CODECS",
    "Codec",
    "decode_vector",
    "encode_vector",
    "make_codec",
]


@runtime_checkable
class Codec(Protocol):
    """Encodes a flat float32 vector into msgpack-able fields and decodes them back.

    ``name`` is what the encoded dict records under ``"codec"``; ``lossless`` says whether
    ``decode(encode(x), x.size)`` reproduces ``x`` bit for bit. ``decode`` reads every
    parameter it needs from the fields, so any instance of a codec decodes what any other
    instance of the same name encoded.
    """

    @property
    def name(self) -> str:
        """Name recorded in the encoded dict under ``"codec"``."""
        ...

    @property
    def lossless(self) -> bool:
        """Whether decoding reproduces the encoded vector exactly."""
        ...

    def encode(self, vec: Float32Vector, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Encode a 1-D float32 vector.

        Args:
            vec: the vector; not modified.
            rng: randomness for stochastic codecs; ``None`` draws fresh OS entropy.

        Returns:
            A msgpack-able dict holding ``"codec": self.name``.

        Raises:
            CompressionError: if ``vec`` is not a finite 1-D float32 vector.
        """
        ...

    def decode(self, fields: Mapping[str, Any], size: int) -> Float32Vector:
        """Decode untrusted fields into a new float32 vector of length ``size``.

        Args:
            fields: the dict produced by :meth:`encode`, as received from the wire.
            size: the length the receiver expects (from its model spec, trusted).

        Raises:
            BadTensorError: if any field is missing, mistyped, out of range or inconsistent.
        """
        ...


#: Codec name -> constructor taking the stage's parameters as keyword arguments. Sparse codecs
#: (``topk``, ``randk``) also take ``values=`` (a dense codec) for composition.
CODECS: Final[Mapping[str, Callable[..., Codec]]] = {
    "raw": RawCodec,
    "shuffle": ShuffleCodec,
    "fp16": Fp16Codec,
    "int8": Int8Codec,
    "topk": TopKCodec,
    "randk": RandKCodec,
}

#: the dense codecs: every value sent (the only ones a full model may use)
DENSE_CODECS: Final = ("raw", "shuffle", "fp16", "int8")
_SPARSE: Final = ("topk", "randk")

# Parameter name -> parser for each stage; a parser accepts the typed value or its text form.
_ParamParser = Callable[[str, object], Any]


def _parse_int(key: str, value: object) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"codec parameter {key!r} must be an int, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            pass
    raise ConfigError(f"codec parameter {key!r} must be an int, got {value!r}")


def _parse_float(key: str, value: object) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"codec parameter {key!r} must be a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"codec parameter {key!r} must be a number, got {value!r}")


_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


def _parse_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"codec parameter {key!r} must be true or false, got {value!r}")


def _parse_seed(key: str, value: object) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    return _parse_int(key, value)


_PARAMS: Final[Mapping[str, Mapping[str, _ParamParser]]] = {
    "raw": {},
    "shuffle": {},
    "fp16": {},
    "int8": {"chunk": _parse_int, "stochastic": _parse_bool},
    "topk": {"fraction": _parse_float},
    "randk": {"fraction": _parse_float, "seed": _parse_seed, "scaled": _parse_bool},
}


def make_codec(spec: str | Mapping[str, Any]) -> Codec:
    """Build a codec from a spec string or mapping.

    Args:
        spec: a string such as ``"int8:chunk=4096"`` or ``"topk+int8:fraction=0.01"`` (grammar
            in the module docstring), or a mapping such as
            ``{"name": "topk+int8", "fraction": 0.01, "chunk": 1024}`` (``"codec"`` may stand
            for ``"name"``; values may be typed or text).

    Returns:
        The configured codec.

    Raises:
        ConfigError: if the spec is malformed, names an unknown codec or parameter, or a
            parameter is out of range; the message lists the valid choices.
    """
    if isinstance(spec, str):
        names, raw_params = _split_spec_string(spec)
    elif isinstance(spec, Mapping):
        names, raw_params = _split_spec_mapping(spec)
    else:
        raise ConfigError(f"codec spec must be a string or mapping, got {type(spec).__name__}")
    stages = _parse_stages(names, spec)
    per_stage = _route_params(stages, raw_params)
    if len(stages) == 1:
        return CODECS[stages[0]](**per_stage[stages[0]])
    sparse, dense = stages
    return CODECS[sparse](values=CODECS[dense](**per_stage[dense]), **per_stage[sparse])


def _split_spec_string(spec: str) -> tuple[str, dict[str, object]]:
    text = "".join(spec.split()).lower()
    names, sep, tail = text.partition(":")
    params: dict[str, object] = {}
    if sep:
        if not tail:
            raise ConfigError(f"codec spec {spec!r}: empty parameter list after ':'")
        for item in tail.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key or not value:
                raise ConfigError(f"codec spec {spec!r}: parameter {item!r} is not key=value")
            if key in params:
                raise ConfigError(f"codec spec {spec!r}: parameter {key!r} given twice")
            params[key] = value
    return names, params


def _split_spec_mapping(spec: Mapping[str, Any]) -> tuple[str, dict[str, object]]:
    params = {str(k).strip().lower(): v for k, v in spec.items()}
    if "name" in params and "codec" in params:
        raise ConfigError("codec spec mapping: give 'name' or 'codec', not both")
    name = params.pop("name", params.pop("codec", None))
    if not isinstance(name, str):
        raise ConfigError(f"codec spec mapping needs a string 'name', got {name!r}")
    return "".join(name.split()).lower(), params


def _parse_stages(names: str, spec: object) -> tuple[str, ...]:
    stages = tuple(names.split("+"))
    valid = f"valid: {', '.join(DENSE_CODECS)}, {', '.join(_SPARSE)}, or <sparse>+<dense>"
    for stage in stages:
        if stage not in CODECS:
            raise ConfigError(f"codec spec {spec!r}: unknown codec {stage!r} ({valid})")
    if len(stages) == 1:
        return stages
    if len(stages) == 2 and stages[0] in _SPARSE and stages[1] in DENSE_CODECS:
        return stages
    raise ConfigError(f"codec spec {spec!r}: cannot compose {names!r} ({valid})")


def _route_params(stages: tuple[str, ...], raw: Mapping[str, object]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {stage: {} for stage in stages}
    for key, value in raw.items():
        stage_name, dot, bare = key.rpartition(".")
        if dot:
            if stage_name not in out:
                raise ConfigError(
                    f"codec parameter {key!r}: {stage_name!r} is not one of {list(stages)}"
                )
            owners = [stage_name] if bare in _PARAMS[stage_name] else []
        else:
            owners = [stage for stage in stages if bare in _PARAMS[stage]]
        if not owners:
            valid = sorted(f"{s}.{p}" if len(stages) > 1 else p for s in stages for p in _PARAMS[s])
            raise ConfigError(
                f"unknown codec parameter {key!r} for {'+'.join(stages)}"
                f" (valid: {', '.join(valid) or 'none'})"
            )
        if len(owners) > 1:
            raise ConfigError(
                f"codec parameter {key!r} is ambiguous; qualify it as one of "
                f"{[f'{s}.{bare}' for s in owners]}"
            )
        owner = owners[0]
        if bare in out[owner]:
            raise ConfigError(f"codec parameter {key!r} given twice")
        out[owner][bare] = _PARAMS[owner][bare](key, value)
    return out


def _decoders() -> dict[str, Codec]:
    # Every decodable name, each with default parameters: decode reads its parameters from
    # the fields, so one instance per name serves any sender.
    dense: list[Codec] = [RawCodec(), ShuffleCodec(), Fp16Codec(), Int8Codec()]
    codecs: list[Codec] = [*dense]
    for values in dense:
        codecs.append(TopKCodec(values=values))
        codecs.append(RandKCodec(values=values))
    return {codec.name: codec for codec in codecs}


_DECODERS: Final = _decoders()


def encode_vector(
    vec: Float32Vector,
    codec: Codec | str | Mapping[str, Any],
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Encode ``vec`` with ``codec`` (a codec or a spec for :func:`make_codec`).

    Args:
        vec: 1-D finite float32 vector; not modified.
        codec: the codec, or its spec.
        rng: randomness for stochastic codecs; ``None`` draws fresh OS entropy.

    Returns:
        The msgpack-able field dict, holding the codec name under ``"codec"``.

    Raises:
        ConfigError: if ``codec`` is a malformed spec.
        CompressionError: if ``vec`` is not a finite 1-D float32 vector.
    """
    if isinstance(codec, str | Mapping):
        codec = make_codec(codec)
    return codec.encode(vec, rng)


def decode_vector(fields: Mapping[str, Any], size: int) -> Float32Vector:
    """Decode untrusted fields, dispatching on ``fields["codec"]``.

    Args:
        fields: the dict as received from the wire.
        size: the vector length the receiver expects (trusted, from its model spec).

    Returns:
        A new, writable float32 vector of length ``size``.

    Raises:
        BadTensorError: if the codec is unknown or any field is malformed.
        CompressionError: if ``size`` itself is invalid (a caller bug).
    """
    if not isinstance(fields, Mapping):
        raise BadTensorError(f"codec fields must be a mapping, got {type(fields).__name__}")
    name = fields.get(CODEC_KEY)
    # SAFETY: the name only selects from a fixed table of decoders; it is never parsed as a
    # spec, imported or evaluated.
    codec = _DECODERS.get(name) if isinstance(name, str) else None
    if codec is None:
        shown = short_repr(name) if isinstance(name, str) else type(name).__name__
        raise BadTensorError(
            f"field 'codec': unknown codec {shown} (known: {', '.join(sorted(_DECODERS))})"
        )
    return codec.decode(fields, size)
