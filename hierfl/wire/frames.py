"""The three messages of wire format v1, as frozen dataclasses that validate themselves.

- :class:`UpdateFrame`: edge -> fog, a delta against the model the edge trained from.
- :class:`AggregateFrame`: fog -> cloud, the fog's combined delta against a global version.
- :class:`ModelFrame`: cloud -> fogs -> edges, full weights of a global or fog-level model.
- :class:`ModelDeltaFrame` (format version 2): fog -> edges, a fog model as a change to the
  previous one, for edges that hold it.

Field-by-field specification: ``docs/wire-format.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from blake3 import blake3

from hierfl.errors import FrameFieldError
from hierfl.types import Float32Vector

__all__ = [
    "DIGEST_BYTES",
    "MAX_METRICS",
    "AggregateFrame",
    "EdgeProof",
    "Frame",
    "LayoutEntry",
    "ModelDeltaFrame",
    "ModelFrame",
    "TimingSpan",
    "UpdateFrame",
    "weights_digest",
]

MAX_METRICS = 64
MAX_CONTRIBUTORS = 100_000
MAX_LAYOUT = 4096
#: spans an update may carry (its edge's own), and an aggregate (its fog's and its edges')
MAX_UPDATE_TIMING = 32
MAX_AGGREGATE_TIMING = 20_000
_MAX_SPAN_NAME = 32
_MAX_ID = 64
_MAX_NAME = 256
DIGEST_BYTES = 16


def weights_digest(weights: Float32Vector) -> bytes:
    """BLAKE3 of a weight vector's little-endian float32 bytes, its first 16 bytes (the
    model-delta digest, docs/wire-format.md).

    Bit-exact: ``0.0`` and ``-0.0`` (or two NaN payloads) give different digests. BLAKE3,
    hashed from the array's own memory: 0.8 ms for the 4.5 MB digits-20-wide model on a 2-core
    VM, against 7.9 ms for the BLAKE2b-128 (and a copy) this digest was before (every edge
    computes one per delta it applies, the fog one per model it publishes).
    """
    data = np.ascontiguousarray(weights, dtype="<f4")
    return blake3(data.data.cast("B")).digest(length=DIGEST_BYTES)


def _check_id(name: str, value: object) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= _MAX_ID:
        raise FrameFieldError(name, f"expected an id string of 1-{_MAX_ID} characters")
    if not all(c.isascii() and (c.isalnum() or c in "_-") for c in value):
        raise FrameFieldError(name, "ids may only hold A-Z a-z 0-9 _ -")


def _check_int(name: str, value: object, lo: int, hi: int = 2**63 - 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FrameFieldError(name, f"expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise FrameFieldError(name, f"{value} is out of range [{lo}, {hi}]")


def _check_float(name: str, value: object) -> None:
    if not isinstance(value, float | int) or isinstance(value, bool):
        raise FrameFieldError(name, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise FrameFieldError(name, "must be finite")


def _check_metrics(name: str, value: object) -> None:
    if not isinstance(value, dict):
        raise FrameFieldError(name, "expected a map of string to number")
    if len(value) > MAX_METRICS:
        raise FrameFieldError(name, f"at most {MAX_METRICS} entries")
    for k, v in value.items():
        if not isinstance(k, str) or not 1 <= len(k) <= _MAX_NAME:
            raise FrameFieldError(name, "metric names must be non-empty strings")
        _check_float(f"{name}.{k}", v)


def _check_vector(name: str, value: object) -> None:
    if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.ndim != 1:
        raise FrameFieldError(name, "expected a 1-D float32 numpy array")


def _check_control(value: object, size: int) -> None:
    """SCAFFOLD's optional control vector (None: absent, the frame as before)."""
    if value is None:
        return
    _check_vector("control", value)
    assert isinstance(value, np.ndarray)
    if value.size != size:
        raise FrameFieldError("control", f"{value.size} values; the model has {size}")


@dataclass(frozen=True, slots=True)
class LayoutEntry:
    """One named tensor of a model: ``size = prod(shape)`` consecutive values of the flat vector."""

    name: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= _MAX_NAME:
            raise FrameFieldError("layout.name", "expected a non-empty string")
        if not isinstance(self.shape, tuple) or len(self.shape) > 8:
            raise FrameFieldError("layout.shape", "expected at most 8 dimensions")
        for d in self.shape:
            _check_int("layout.shape", d, 0, 2**31)

    @property
    def size(self) -> int:
        """Number of values in this tensor."""
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class TimingSpan:
    """One stage of a round as the tier that ran it measured it, on its own wall clock
    (:mod:`hierfl.timeline`): ``name`` (``train``, ``aggregate``...), ``party`` (``""``: the
    frame's sender; in an aggregate, an edge id for the spans its edges reported), ``start``
    and ``end`` in seconds since the epoch. Telemetry only: nothing decides on it.
    """

    name: str
    party: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= _MAX_SPAN_NAME or not all(
            c.isascii() and (c.isalnum() or c in "_-.") for c in self.name
        ):
            raise FrameFieldError("timing.name",
                                  f"expected 1-{_MAX_SPAN_NAME} of A-Z a-z 0-9 _ - .")
        if self.party != "":
            _check_id("timing.party", self.party)
        _check_float("timing.start", self.start)
        _check_float("timing.end", self.end)
        if self.end < self.start:
            raise FrameFieldError("timing.end", "a span ends before it starts")


def _check_timing(value: object, limit: int) -> None:
    if not isinstance(value, tuple) or len(value) > limit:
        raise FrameFieldError("timing", f"expected at most {limit} spans")
    for span in value:
        if not isinstance(span, TimingSpan):
            raise FrameFieldError("timing", "expected TimingSpan entries")


@dataclass(frozen=True, slots=True)
class UpdateFrame:
    """An edge's update: ``delta = trained - base`` for the model ``(base_version, base_seq)``."""

    KIND: ClassVar[str] = "update"

    federation: str
    fog_id: str
    edge_id: str
    base_version: int
    base_seq: int
    num_samples: int
    delta: Float32Vector
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0
    #: the edge's spans of this round (format version 3: carried outside the compressed body)
    timing: tuple[TimingSpan, ...] = ()
    #: SCAFFOLD: the change of the edge's control variate, c_i+ - c_i (None: not SCAFFOLD)
    control: Float32Vector | None = None

    def __post_init__(self) -> None:
        _check_id("federation", self.federation)
        _check_id("fog", self.fog_id)
        _check_id("edge", self.edge_id)
        _check_timing(self.timing, MAX_UPDATE_TIMING)
        _check_int("base_version", self.base_version, 0)
        _check_int("base_seq", self.base_seq, 0)
        _check_int("num_samples", self.num_samples, 1)
        _check_vector("delta", self.delta)
        _check_control(self.control, self.delta.size)
        _check_metrics("metrics", self.metrics)
        _check_float("created_at", self.created_at)


@dataclass(frozen=True, slots=True)
class EdgeProof:
    """What a fog carries, per edge update behind an aggregate, so that the cloud's lineage
    can show who contributed and anyone holding the trust bundle can check it: the signed
    claims of the update (:mod:`hierfl.wire.signing`), its payload hash and signature."""

    edge_id: str
    base_version: int
    base_seq: int
    counter: int
    payload_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_id("provenance.edge", self.edge_id)
        _check_int("provenance.base_version", self.base_version, 0)
        _check_int("provenance.base_seq", self.base_seq, 0)
        _check_int("provenance.counter", self.counter, 0)
        if not isinstance(self.payload_hash, bytes) or len(self.payload_hash) != 32:
            raise FrameFieldError("provenance.hash", "expected 32 bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) != 64:
            raise FrameFieldError("provenance.sig", "expected 64 bytes")


@dataclass(frozen=True, slots=True)
class AggregateFrame:
    """A fog's aggregate: the fog model minus global ``base_version``, after ``fog_rounds``."""

    KIND: ClassVar[str] = "aggregate"

    federation: str
    fog_id: str
    base_version: int
    num_samples: int
    contributors: tuple[str, ...]
    fog_rounds: int
    delta: Float32Vector
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0
    provenance: tuple[EdgeProof, ...] = ()
    #: the fog's and its edges' spans of this cloud round (format version 3)
    timing: tuple[TimingSpan, ...] = ()
    #: SCAFFOLD: the change of the fog's control variate c_f over this cloud round (the mean
    #: of its edges' control changes, summed over its fog rounds); None: not SCAFFOLD
    control: Float32Vector | None = None

    def __post_init__(self) -> None:
        _check_id("federation", self.federation)
        _check_id("fog", self.fog_id)
        _check_timing(self.timing, MAX_AGGREGATE_TIMING)
        _check_int("base_version", self.base_version, 0)
        _check_int("num_samples", self.num_samples, 1)
        _check_int("fog_rounds", self.fog_rounds, 1, 10_000)
        if not isinstance(self.provenance, tuple) or len(self.provenance) > MAX_CONTRIBUTORS:
            raise FrameFieldError("provenance", f"at most {MAX_CONTRIBUTORS} entries")
        for p in self.provenance:
            if not isinstance(p, EdgeProof):
                raise FrameFieldError("provenance", "expected EdgeProof entries")
        if not isinstance(self.contributors, tuple) or not 1 <= len(self.contributors) <= (
            MAX_CONTRIBUTORS
        ):
            raise FrameFieldError("contributors", "expected 1 or more edge ids")
        for c in self.contributors:
            _check_id("contributors", c)
        if len(set(self.contributors)) != len(self.contributors):
            raise FrameFieldError("contributors", "edge ids repeat")
        _check_vector("delta", self.delta)
        _check_control(self.control, self.delta.size)
        _check_metrics("metrics", self.metrics)
        _check_float("created_at", self.created_at)

    @property
    def aggregate_id(self) -> str:
        """Identity used for exactly-once application at the cloud."""
        return f"{self.fog_id}@{self.base_version}"


@dataclass(frozen=True, slots=True)
class ModelFrame:
    """Full model weights of global version ``version`` (scope ``global``), or a fog-level
    model of fog ``fog_id`` derived from it (scope ``fog``): ``seq`` is the fog's model
    sequence number (edges echo it as ``base_seq``), ``fog_round`` how many of the k2 fog
    rounds of this cloud round are already folded into ``weights``.
    """

    KIND: ClassVar[str] = "model"
    SCOPES: ClassVar[tuple[str, ...]] = ("global", "fog")

    federation: str
    version: int
    weights: Float32Vector
    parent: int | None = None
    scope: str = "global"
    fog_id: str | None = None
    seq: int = 0
    fog_round: int = 0
    layout: tuple[LayoutEntry, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0
    #: SCAFFOLD: the cloud's control variate c of this version (None: not SCAFFOLD)
    control: Float32Vector | None = None

    def __post_init__(self) -> None:
        _check_id("federation", self.federation)
        _check_int("version", self.version, 0)
        if self.parent is not None:
            _check_int("parent", self.parent, 0)
        if self.scope not in self.SCOPES:
            raise FrameFieldError("scope", f"expected one of {self.SCOPES}")
        if self.scope == "fog":
            _check_id("fog", self.fog_id)
        elif self.fog_id is not None:
            raise FrameFieldError("fog", "a global model names no fog")
        _check_int("seq", self.seq, 0)
        _check_int("fog_round", self.fog_round, 0, 10_000)
        _check_vector("weights", self.weights)
        if not isinstance(self.layout, tuple) or len(self.layout) > MAX_LAYOUT:
            raise FrameFieldError("layout", f"expected at most {MAX_LAYOUT} entries")
        if self.layout and sum(e.size for e in self.layout) != self.weights.size:
            raise FrameFieldError("layout", "sizes do not add up to the weights' length")
        _check_control(self.control, self.weights.size)
        _check_metrics("metrics", self.metrics)
        _check_float("created_at", self.created_at)


@dataclass(frozen=True, slots=True)
class ModelDeltaFrame:
    """Fog model ``(version, seq)`` of fog ``fog_id`` as a change to its model
    ``(base_version, base_seq)``: an edge holding exactly that base computes
    ``base weights + delta`` (float32) and MUST find :func:`weights_digest` of the result
    equal to ``digest``; it then holds the new model (``fog_round`` as in :class:`ModelFrame`).
    An edge that does not hold the base takes the full model instead. Format version 2.
    """

    KIND: ClassVar[str] = "model_delta"

    federation: str
    fog_id: str
    version: int
    seq: int
    base_version: int
    base_seq: int
    delta: Float32Vector
    digest: bytes
    fog_round: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0

    def __post_init__(self) -> None:
        _check_id("federation", self.federation)
        _check_id("fog", self.fog_id)
        _check_int("version", self.version, 0)
        _check_int("seq", self.seq, 0)
        _check_int("base_version", self.base_version, 0, self.version)
        # a fog's seq grows with every model it publishes, across global versions too
        _check_int("base_seq", self.base_seq, 0, self.seq - 1)
        _check_int("fog_round", self.fog_round, 0, 10_000)
        _check_vector("delta", self.delta)
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_BYTES:
            raise FrameFieldError("digest", f"expected {DIGEST_BYTES} bytes")
        _check_metrics("metrics", self.metrics)
        _check_float("created_at", self.created_at)


Frame = UpdateFrame | AggregateFrame | ModelFrame | ModelDeltaFrame

