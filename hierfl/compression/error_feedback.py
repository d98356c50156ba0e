"""Error feedback: carry what a lossy codec dropped into the next update.

EF-SGD [Seide et al., 2014, "1-bit SGD"; Karimireddy et al., 2019, "Error Feedback Fixes
SignSGD and other Gradient Compression Schemes"]: send C(delta + e) and keep
e <- delta + e - C(delta + e), so nothing is lost, only delayed. Over any run,
sum(sent) + e_final == sum(deltas) up to float32 rounding.

Paper: arxiv.org/abs/1901.09847
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hierfl.compression._fields import CODEC_KEY, check_input, check_size
from hierfl.compression.base import decode_vector
from hierfl.errors import CompressionError
from hierfl.types import Float32Vector

if TYPE_CHECKING:
    from hierfl.compression.base import Codec

__all__ = ["ErrorFeedback", "PreEncoded"]


class ErrorFeedback:
    """Residual memory of one sender for one model size.

    Args:
        size: length of the update vectors.
        path: if given, the residual is loaded from this ``.npy`` file when it exists and
            saved to it (atomically) after every :meth:`compress`, so a restarted edge keeps
            the mass it has not sent yet.

    Raises:
        CompressionError: if ``size`` is invalid or the file at ``path`` is not a residual of
            this size.

    Example:
        >>> ef = ErrorFeedback(delta.size, path="state/ef.npy")
        >>> fields, sent = ef.compress(delta, make_codec("topk+int8:fraction=0.01"), rng)
    """

    __slots__ = ("_path", "_residual", "_size")

    def __init__(self, size: int, *, path: str | os.PathLike[str] | None = None) -> None:
        self._size = check_size(size)
        self._residual: Float32Vector = np.zeros(self._size, dtype=np.float32)
        self._path = None if path is None else Path(path)
        if self._path is not None and self._path.exists():
            self.load(self._path)

    @property
    def size(self) -> int:
        """Length of the vectors this memory accepts."""
        return self._size

    @property
    def residual(self) -> Float32Vector:
        """A read-only view of the current residual e."""
        view = self._residual.view()
        view.flags.writeable = False
        return view

    def reset(self) -> None:
        """Zero the residual (e.g. after the model was replaced); persisted if ``path`` is set."""
        residual = np.zeros(self._size, dtype=np.float32)
        if self._path is not None:
            _atomic_save(self._path, residual)
        self._residual = residual

    def compress(
        self,
        delta: Float32Vector,
        codec: Codec,
        rng: np.random.Generator | None = None,
    ) -> tuple[dict[str, Any], Float32Vector]:
        """Encode ``delta + e`` and keep what the codec dropped as the new residual.

        The residual changes only if encoding (and saving, with ``path``) succeeds.

        Args:
            delta: this round's update, float32 of length :attr:`size`; not modified.
            codec: any codec; lossless ones leave the residual at zero.
            rng: randomness for the codec.

        Returns:
            ``(fields, sent)``: the wire fields and the vector the receiver will decode from
            them.

        Raises:
            CompressionError: if ``delta`` is not a finite float32 vector of length
                :attr:`size`, or ``delta + e`` overflows.
        """
        x = check_input(delta)
        if x.size != self._size:
            raise CompressionError(f"delta has {x.size} values, error feedback holds {self._size}")
        corrected = x + self._residual
        # Decode exactly what the receiver will: the residual tracks the real wire loss. A
        # codec with encode_decoded (randk) returns both without redoing its costly part.
        both = getattr(codec, "encode_decoded", None)
        if both is not None:
            fields, sent = both(corrected, rng)
        else:
            fields = codec.encode(corrected, rng)
            sent = codec.decode(fields, self._size)
        residual = corrected - sent
        if self._path is not None:
            _atomic_save(self._path, residual)
        self._residual = residual
        return fields, sent

    def restore(self, sent: Float32Vector) -> None:
        """Take back an update that was compressed but never delivered: ``e <- e + sent``.

        Call it when publishing the fields returned by :meth:`compress` failed, so the mass
        they carried is sent later instead of being lost. Persisted if ``path`` is set.

        Raises:
            CompressionError: if ``sent`` is not a finite float32 vector of length :attr:`size`.
        """
        x = check_input(sent)
        if x.size != self._size:
            raise CompressionError(f"sent has {x.size} values, error feedback holds {self._size}")
        residual = self._residual + x
        if self._path is not None:
            _atomic_save(self._path, residual)
        self._residual = residual

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the residual to ``path`` as ``.npy`` atomically (temp file + ``os.replace``)."""
        _atomic_save(Path(path), self._residual)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Replace the residual with the one saved at ``path``.

        Raises:
            CompressionError: if the file is unreadable as a pickle-free ``.npy`` or does not
                hold a finite float32 vector of length :attr:`size`.
        """
        try:
            loaded = _read_npy_vector(Path(path), self._size)
        except (ValueError, OSError, EOFError) as exc:
            raise CompressionError(
                f"cannot load error-feedback residual from {path}: {exc}"
            ) from exc
        if not np.isfinite(loaded).all():
            raise CompressionError(f"{path}: residual holds NaN or Inf")
        self._residual = loaded

    def __repr__(self) -> str:
        return f"ErrorFeedback(size={self._size}, path={self._path!r})"


class PreEncoded:
    """A codec that hands out fields already encoded, e.g. by :meth:`ErrorFeedback.compress`.

    The frame encoder takes a codec and a vector; with error feedback the fields must be
    exactly those whose decoding the residual was computed against, not a fresh (for a
    stochastic codec, different) encoding. Put ``sent`` in the frame and pass
    ``PreEncoded(fields, sent)`` as its codec::

        fields, sent = ef.compress(delta, codec, rng)
        frame = replace(update, delta=sent)
        data = encode_frame(frame, codec=PreEncoded(fields, sent))

    Args:
        fields: the encoded fields (holding ``"codec"``).
        vector: the vector they decode to; :meth:`encode` accepts only this vector.
    """

    __slots__ = ("_fields", "_name", "_vector")

    lossless = False

    def __init__(self, fields: Mapping[str, Any], vector: Float32Vector) -> None:
        name = fields.get(CODEC_KEY)
        if not isinstance(name, str):
            raise CompressionError("pre-encoded fields must name their codec under 'codec'")
        self._fields = dict(fields)
        self._name = name
        self._vector = vector

    @property
    def name(self) -> str:
        """The codec that produced the fields."""
        return self._name

    def encode(self, vec: Float32Vector, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Return (a copy of) the fields, if ``vec`` is the vector they decode to.

        Raises:
            CompressionError: if ``vec`` differs from the vector given at construction.
        """
        if vec is not self._vector and not np.array_equal(vec, self._vector):
            raise CompressionError("pre-encoded fields belong to another vector")
        return dict(self._fields)

    def decode(self, fields: Mapping[str, Any], size: int) -> Float32Vector:
        """Decode with the codec the fields name (see :func:`~hierfl.compression.decode_vector`)."""
        return decode_vector(fields, size)

    def __repr__(self) -> str:
        return f"PreEncoded(codec={self._name!r}, size={np.size(self._vector)})"


def _read_npy_vector(path: Path, size: int) -> Float32Vector:
    """Read a ``.npy`` file that must hold exactly ``size`` float32 values.

    The header is checked before any data is read, so a corrupt or hostile file cannot make
    this allocate more than ``4 * size`` bytes.

    Raises:
        ValueError: if the file is not a version 1/2 ``.npy`` of shape ``(size,)``, dtype
            float32, or its data is truncated.
    """
    fmt = np.lib.format
    with path.open("rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        # WARNING: object dtypes would need pickle; only plain float32 is ever accepted.
        if dtype != np.float32 or shape != (size,):
            raise ValueError(f"expected float32 of shape ({size},), got {dtype} {shape}")
        data = f.read(4 * size + 1)
    if len(data) != 4 * size:
        raise ValueError(f"expected {4 * size} data bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype).astype(np.float32)


def _atomic_save(path: Path, residual: Float32Vector) -> None:
    """Write ``residual`` to ``path`` so readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, residual, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
