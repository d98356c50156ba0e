"""The edge's error-feedback memory for its uplink codec (see docs/compression.md).

:class:`UplinkFeedback` wraps :class:`~hierfl.compression.ErrorFeedback` with what an edge
needs around it: which global model version the residual was last updated against, what to do
when the model moves on too far or changes size, and persistence of both across restarts.

Rules (each one logged and counted in the ``error_feedback_resets`` metric):

- the model's size changed (a new architecture): the residual belongs to other parameters and
  is dropped;
- the model's version went backwards (the federation restarted or rolled back) or jumped by
  more than ``max_gap`` versions since the last update sent (the device was away): the residual
  is dropped, since it holds mass computed against a model the federation has left behind and
  would be applied as one large stale step;
- the residual file is unreadable or of another size: it is discarded (the mass it held is only
  delayed update mass; losing it costs a little progress, never correctness).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from hierfl.compression import Codec, ErrorFeedback, make_codec
from hierfl.errors import CompressionError
from hierfl.metrics import ServiceMetrics
from hierfl.types import Float32Vector

__all__ = ["UplinkFeedback"]

log = logging.getLogger(__name__)

_VERSION_FILE_MAX = 32  # bytes read from the version side file


class UplinkFeedback:
    """Error feedback of one edge's updates.

    Args:
        codec: the uplink codec spec or codec; must be lossy (a lossless one drops nothing).
        path: ``.npy`` file keeping the residual across restarts (its model version goes in
            ``<path>.version``); ``None`` keeps it in memory only.
        max_gap: largest jump in model version across which the residual is kept.
        metrics: where resets and the residual norm are recorded.
    """

    def __init__(
        self,
        codec: Codec | str,
        *,
        path: str | os.PathLike[str] | None = None,
        max_gap: int = 5,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.codec = make_codec(codec) if isinstance(codec, str) else codec
        self.path = None if path is None else Path(path)
        self.max_gap = max_gap
        self.metrics = metrics
        self._ef: ErrorFeedback | None = None
        self._version: int | None = None
        self._rng = np.random.default_rng()

    @property
    def residual(self) -> Float32Vector | None:
        """The current residual (read-only), or ``None`` before the first update."""
        return None if self._ef is None else self._ef.residual

    def compress(self, delta: Float32Vector, version: int) -> tuple[dict[str, Any], Float32Vector]:
        """Encode ``delta`` (trained on global model ``version``) plus the carried residual.

        Returns:
            ``(fields, sent)``: the codec's fields and the vector they decode to. Send exactly
            these fields (``encode_frame(frame, codec=PreEncoded(fields, sent))``).

        Raises:
            CompressionError: if ``delta`` is not finite or the residual cannot be saved.
        """
        try:
            ef = self._memory(delta.size, version)
            fields, sent = ef.compress(delta, self.codec, self._rng)
        except OSError as exc:  # disk full, read-only file system: skip this update, not the edge
            raise CompressionError(f"cannot save the error-feedback residual: {exc}") from exc
        self._set_version(version)
        if self.metrics is not None:
            self.metrics.set("error_feedback_residual_norm", float(np.linalg.norm(ef.residual)))
        return fields, sent

    def restore(self, sent: Float32Vector) -> None:
        """The update carrying ``sent`` was not delivered: keep its mass for the next one."""
        if self._ef is not None:
            self._ef.restore(sent)

    def _memory(self, size: int, version: int) -> ErrorFeedback:
        if self._ef is None:
            self._ef = self._open(size)
        elif self._ef.size != size:
            self._reset(f"the model size changed from {self._ef.size} to {size}")
            if self.path is not None:
                self.path.unlink(missing_ok=True)
            self._ef = self._open(size)
        last = self._version
        if last is not None and not 0 <= version - last <= self.max_gap:
            self._reset(f"the model version went from {last} to {version}")
            self._ef.reset()
        return self._ef

    def _open(self, size: int) -> ErrorFeedback:
        if self.path is None:
            return ErrorFeedback(size)
        existed = self.path.exists()
        try:
            ef = ErrorFeedback(size, path=self.path)
        except CompressionError as exc:
            self._reset(f"the saved residual is unusable ({exc})")
            self.path.unlink(missing_ok=True)
            return ErrorFeedback(size, path=self.path)
        if existed:
            self._version = _read_version(self._version_path())
        return ef

    def _reset(self, why: str) -> None:
        log.info("error feedback: residual dropped: %s", why)
        self._version = None
        if self.metrics is not None:
            self.metrics.inc("error_feedback_resets")

    def _set_version(self, version: int) -> None:
        self._version = version
        if self.path is not None:
            # A torn or failed write only loses the version (read back as unknown), never the
            # residual, which is saved already.
            try:
                self._version_path().write_text(f"{version}\n", encoding="ascii")
            except OSError as exc:
                log.warning("error feedback: cannot save the model version: %s", exc)

    def _version_path(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name + ".version")


def _read_version(path: Path) -> int | None:
    try:
        with path.open("rb") as f:
            text = f.read(_VERSION_FILE_MAX)
        version = int(text.decode("ascii").strip())
    except (OSError, ValueError):
        return None
    return version if version >= 0 else None

