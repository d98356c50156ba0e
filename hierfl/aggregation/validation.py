"""Per-update checks a fog or cloud runs before an update may join an aggregation.

Each ``check_*`` function is pure and raises the matching :class:`hierfl.errors.ValidationError`
subclass, whose ``reason`` labels the ``rejected_total`` counter; messages name the sender and the
offending values. :class:`UpdateValidator` runs them all in one fixed order:

1. duplicate  -> DuplicateUpdateError  (cheapest, and a replay must not count twice)
2. sender     -> UnknownSenderError
3. staleness  -> StaleUpdateError
4. samples    -> SampleCountError
5. shape      -> ShapeMismatchError    (float32, 1-D, ``expected_size`` values)
6. finite     -> NonFiniteError
7. norm       -> NormBoundError        (fixed and/or adaptive bound)

Metadata checks come before the O(d) array checks, so a flood of bad frames costs little.

The adaptive norm bound is ``adaptive_norm_multiplier`` times the median of the last
``norm_window`` accepted norms, fed by :meth:`UpdateValidator.accept_norm`. It is applied only
once ``adaptive_min_norms`` norms have been seen and while that median is positive. Only norms
that passed the bound enter the window, so colluding senders can raise the bound by at most a
factor ``adaptive_norm_multiplier`` per window turnover, and not at all while they send fewer
than half of the accepted updates.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Collection, Container, Iterable
from dataclasses import dataclass, field

import numpy as np

from hierfl.aggregation._common import require_float, require_int
from hierfl.errors import (
    ConfigError,
    DuplicateUpdateError,
    NonFiniteError,
    NormBoundError,
    SampleCountError,
    ShapeMismatchError,
    StaleUpdateError,
    UnknownSenderError,
)
from hierfl.types import Float32Vector

__all__ = [
    "UpdateValidator",
    "ValidationPolicy",
    "check_duplicate",
    "check_finite",
    "check_norm",
    "check_samples",
    "check_sender",
    "check_shape",
    "check_staleness",
    "update_norm",
]


def _who(sender: str | None) -> str:
    return "update" if sender is None else f"update from {sender!r}"


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_duplicate(sender: str, already_seen: Container[str]) -> None:
    """Reject a second update from the same sender in one round.

    Args:
        sender: the sender's id.
        already_seen: ids that already contributed to this round.

    Raises:
        DuplicateUpdateError: if ``sender`` is in ``already_seen``.
    """
    if sender in already_seen:
        raise DuplicateUpdateError(f"{_who(sender)}: sender already contributed to this round")


def check_sender(sender: str, allow_list: Collection[str]) -> None:
    """Reject a sender missing from a non-empty allow-list.

    Args:
        sender: the sender's id.
        allow_list: accepted ids; empty means every sender is accepted.

    Raises:
        UnknownSenderError: if ``allow_list`` is non-empty and does not hold ``sender``.
    """
    if allow_list and sender not in allow_list:
        raise UnknownSenderError(
            f"{_who(sender)}: sender is not in the allow-list ({len(allow_list)} ids)"
        )


def check_staleness(
    base_version: int, current_version: int, max_staleness: int, *, sender: str | None = None
) -> None:
    """Reject an update computed from too old (or a future) model version.

    Args:
        base_version: model version the update was computed from.
        current_version: model version the receiver is aggregating for.
        max_staleness: largest accepted ``current_version - base_version`` (0: only current).
        sender: the sender's id, for the message.

    Raises:
        StaleUpdateError: if the versions are not ints, ``base_version > current_version``, or
            the update is more than ``max_staleness`` versions old.
    """
    if not (_is_int(base_version) and _is_int(current_version)):
        raise StaleUpdateError(
            f"{_who(sender)}: versions must be ints, got base={base_version!r} "
            f"current={current_version!r}"
        )
    if base_version > current_version:
        raise StaleUpdateError(
            f"{_who(sender)}: base version {base_version} is newer than the current "
            f"version {current_version}"
        )
    age = current_version - base_version
    if age > max_staleness:
        raise StaleUpdateError(
            f"{_who(sender)}: base version {base_version} is {age} behind current "
            f"{current_version} (max staleness {max_staleness})"
        )


def check_samples(n: int, min_samples: int, max_samples: int, *, sender: str | None = None) -> None:
    """Reject a claimed sample count outside ``[min_samples, max_samples]``.

    Args:
        n: the claimed sample count.
        min_samples: smallest accepted count.
        max_samples: largest accepted count.
        sender: the sender's id, for the message.

    Raises:
        SampleCountError: if ``n`` is not an int or is out of range.
    """
    if not _is_int(n):
        raise SampleCountError(f"{_who(sender)}: sample count must be an int, got {n!r}")
    if not min_samples <= n <= max_samples:
        raise SampleCountError(
            f"{_who(sender)}: claims {n} samples, outside [{min_samples}, {max_samples}]"
        )


def check_shape(delta: object, expected_size: int, *, sender: str | None = None) -> None:
    """Reject an update that is not a 1-D float32 array of ``expected_size`` values.

    Args:
        delta: the decoded update.
        expected_size: number of parameters of the model.
        sender: the sender's id, for the message.

    Raises:
        ShapeMismatchError: if ``delta`` is not an ndarray, not float32, not 1-D, or of the
            wrong size.
    """
    if not isinstance(delta, np.ndarray):
        raise ShapeMismatchError(f"{_who(sender)}: expected an ndarray, got {type(delta).__name__}")
    if delta.dtype != np.float32:
        raise ShapeMismatchError(f"{_who(sender)}: dtype {delta.dtype}, expected float32")
    if delta.ndim != 1:
        raise ShapeMismatchError(f"{_who(sender)}: shape {delta.shape}, expected 1-D")
    if delta.size != expected_size:
        raise ShapeMismatchError(f"{_who(sender)}: {delta.size} values, expected {expected_size}")


def check_finite(delta: Float32Vector, *, sender: str | None = None) -> None:
    """Reject an update holding NaN or Inf.

    Args:
        delta: the update.
        sender: the sender's id, for the message.

    Raises:
        NonFiniteError: if any value is NaN or +/-Inf.
    """
    if not np.isfinite(delta).all():
        nan = int(np.count_nonzero(np.isnan(delta)))
        inf = int(np.count_nonzero(np.isinf(delta)))
        first = int(np.flatnonzero(~np.isfinite(delta))[0])
        raise NonFiniteError(
            f"{_who(sender)}: {nan} NaN and {inf} Inf values (first at index {first})"
        )


def update_norm(delta: Float32Vector) -> float:
    """Return the L2 norm of an update, accumulated in float64.

    Args:
        delta: the update (any floating 1-D array).

    Returns:
        The norm (``inf`` if the update holds Inf, ``nan`` if it holds NaN).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return math.sqrt(float(np.einsum("i,i->", delta, delta, dtype=np.float64)))


def check_norm(delta: Float32Vector, bound: float, *, sender: str | None = None) -> float:
    """Reject an update whose L2 norm exceeds ``bound``; return the norm.

    Args:
        delta: the update; should already have passed :func:`check_finite`.
        bound: largest accepted norm (``math.inf`` accepts any finite update).
        sender: the sender's id, for the message.

    Returns:
        The update's L2 norm (float64 accumulation), for :meth:`UpdateValidator.accept_norm`.

    Raises:
        NormBoundError: if the norm is greater than ``bound`` or is not finite.
    """
    norm = update_norm(delta)
    if not norm <= bound:
        raise NormBoundError(f"{_who(sender)}: L2 norm {norm:.6g} exceeds the bound {bound:.6g}")
    return norm


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """What a receiving tier accepts; validated on construction.

    Args:
        expected_size: number of model parameters every update must have (>= 1).
        max_norm: fixed L2 bound on an update (> 0), or ``None`` for none.
        adaptive_norm_multiplier: adaptive bound as a multiple of the running median of
            accepted norms (> 0), or ``None`` for none. With both set, the tighter one applies.
        min_samples: smallest accepted claimed sample count (>= 0).
        max_samples: largest accepted claimed sample count (>= ``min_samples``).
        max_staleness: how many model versions an update may lag behind (>= 0).
        allow_list: accepted sender ids; empty accepts every sender.
        norm_window: how many accepted norms the adaptive median looks back over (>= 1).
        adaptive_min_norms: accepted norms needed before the adaptive bound applies
            (1 <= adaptive_min_norms <= norm_window).

    Raises:
        ConfigError: if a field is out of range or of the wrong type.
    """

    expected_size: int
    max_norm: float | None = None
    adaptive_norm_multiplier: float | None = None
    min_samples: int = 1
    max_samples: int = 10**9
    max_staleness: int = 0
    allow_list: frozenset[str] = field(default_factory=frozenset)
    norm_window: int = 100
    adaptive_min_norms: int = 5

    def __post_init__(self) -> None:
        require_int("expected_size", self.expected_size, minimum=1)
        if self.max_norm is not None:
            require_float("max_norm", self.max_norm, low=0.0)
        if self.adaptive_norm_multiplier is not None:
            require_float("adaptive_norm_multiplier", self.adaptive_norm_multiplier, low=0.0)
        require_int("min_samples", self.min_samples, minimum=0)
        require_int("max_samples", self.max_samples, minimum=self.min_samples)
        require_int("max_staleness", self.max_staleness, minimum=0)
        require_int("norm_window", self.norm_window, minimum=1)
        require_int("adaptive_min_norms", self.adaptive_min_norms, minimum=1)
        if self.adaptive_min_norms > self.norm_window:
            raise ConfigError(
                f"adaptive_min_norms ({self.adaptive_min_norms}) must be <= norm_window "
                f"({self.norm_window})"
            )
        object.__setattr__(self, "allow_list", _as_id_set(self.allow_list))


def _as_id_set(ids: Iterable[str]) -> frozenset[str]:
    # A bare string would silently become a set of characters.
    if isinstance(ids, str | bytes):
        raise ConfigError(f"allow_list must be a collection of ids, not a string: {ids!r}")
    out = frozenset(ids)
    bad = [i for i in out if not isinstance(i, str)]
    if bad:
        raise ConfigError(f"allow_list ids must be strings, got {bad[:3]!r}")
    return out


class UpdateValidator:
    """Runs every check of a :class:`ValidationPolicy` and keeps the adaptive norm window.

    The only state is the bounded window of accepted norms; everything else is pure.

    Args:
        policy: what to accept.

    Example:
        >>> validator = UpdateValidator(ValidationPolicy(expected_size=4, max_norm=10.0))
        >>> delta = np.ones(4, dtype=np.float32)
        >>> norm = validator.validate("edge-1", 7, 7, 32, delta, already_seen=set())
        >>> validator.accept_norm(norm)  # once the update is admitted to the round
    """

    __slots__ = ("_norms", "policy")

    def __init__(self, policy: ValidationPolicy) -> None:
        self.policy = policy
        self._norms: deque[float] = deque(maxlen=policy.norm_window)

    @property
    def accepted_norms(self) -> tuple[float, ...]:
        """The norms in the adaptive window, oldest first."""
        return tuple(self._norms)

    @property
    def adaptive_bound(self) -> float | None:
        """The adaptive norm bound now, or ``None`` while it does not apply."""
        mult = self.policy.adaptive_norm_multiplier
        if mult is None or len(self._norms) < self.policy.adaptive_min_norms:
            return None
        med = statistics.median(self._norms)
        return mult * med if med > 0.0 else None

    @property
    def norm_bound(self) -> float:
        """The effective norm bound now: the tighter of the fixed and adaptive bounds."""
        bounds = [b for b in (self.policy.max_norm, self.adaptive_bound) if b is not None]
        return min(bounds, default=math.inf)

    def accept_norm(self, norm: float) -> None:
        """Feed the norm of an update that was admitted into the adaptive window.

        Args:
            norm: the value :meth:`validate` returned for that update.

        Raises:
            NonFiniteError: if ``norm`` is negative, NaN or Inf.
        """
        if not (math.isfinite(norm) and norm >= 0.0):
            raise NonFiniteError(f"accepted norm must be finite and >= 0, got {norm!r}")
        self._norms.append(float(norm))

    def validate(
        self,
        sender: str,
        base_version: int,
        current_version: int,
        num_samples: int,
        delta: Float32Vector,
        already_seen: Container[str],
    ) -> float:
        """Run every check in the documented order; return the update's L2 norm.

        The validator does not record the norm: call :meth:`accept_norm` once the update is
        really admitted (it may still be dropped, e.g. when the round has closed).

        Args:
            sender: the sender's id.
            base_version: model version the update was computed from.
            current_version: model version being aggregated.
            num_samples: claimed sample count.
            delta: the decoded flat update.
            already_seen: senders that already contributed to this round.

        Returns:
            The update's L2 norm.

        Raises:
            DuplicateUpdateError: the sender already contributed.
            UnknownSenderError: the sender is not allowed.
            StaleUpdateError: the base version is too old or newer than current.
            SampleCountError: the claimed count is out of range.
            ShapeMismatchError: the update is not 1-D float32 of the expected size.
            NonFiniteError: the update holds NaN or Inf.
            NormBoundError: the update's norm exceeds the effective bound.
        """
        p = self.policy
        check_duplicate(sender, already_seen)
        check_sender(sender, p.allow_list)
        check_staleness(base_version, current_version, p.max_staleness, sender=sender)
        check_samples(num_samples, p.min_samples, p.max_samples, sender=sender)
        check_shape(delta, p.expected_size, sender=sender)
        check_finite(delta, sender=sender)
        return check_norm(delta, self.norm_bound, sender=sender)
