"""Typed errors of the secure-aggregation protocol core, all under :class:`SecAggError`.

Kept in this package rather than in :mod:`hierfl.errors` so the protocol can grow without
touching the shared tree; every class is still a :class:`~hierfl.errors.HierflError` with a
unique ``reason`` label (``secagg.*``), so a tier counts them like any other rejection.

::

    * HierflError
      x SecAggError               reason="secagg"
        + SecAggMessageError      reason="secagg.message"    malformed, wrong size or round
        + SecAggStageError        reason="secagg.stage"      valid message, wrong stage
        + SecAggDuplicateError    reason="secagg.duplicate"  a second message for one stage
        + SecAggAuthError         reason="secagg.auth"       a share that does not decrypt
        + SecAggPrivacyError      reason="secagg.privacy"    a request an honest edge refuses
          + SecAggConsistencyError reason="secagg.consistency" survivor sets or signatures differ
        + SecAggThresholdError    reason="secagg.threshold"  too few left: round refused
        + SecAggRecoveryError     reason="secagg.recovery"   inconsistent recovered secret
"""

from __future__ import annotations

from hierfl.errors import HierflError

__all__ = [
    "SecAggAuthError",
    "SecAggConsistencyError",
    "SecAggDuplicateError",
    "SecAggError",
    "SecAggMessageError",
    "SecAggPrivacyError",
    "SecAggRecoveryError",
    "SecAggStageError",
    "SecAggThresholdError",
]


class SecAggError(HierflError):
    """A secure-aggregation round cannot accept a message or cannot go on."""

    reason = "secagg"


class SecAggMessageError(SecAggError):
    """A protocol message is malformed: missing or extra fields, wrong types or sizes, another
    region or round, another recipient, or ids outside the round's roster or neighbourhood."""

    reason = "secagg.message"


class SecAggStageError(SecAggError):
    """A well-formed message that is not expected in the state machine's current stage."""

    reason = "secagg.stage"


class SecAggDuplicateError(SecAggError):
    """A sender already sent its message for this stage."""

    reason = "secagg.duplicate"


class SecAggAuthError(SecAggError):
    """An encrypted share does not authenticate under the pairwise key (forged, altered,
    replayed from another round, or relayed to the wrong edge)."""

    reason = "secagg.auth"


class SecAggPrivacyError(SecAggError):
    """The server asked an honest edge for something that would reveal an input: both the
    self-mask share and the secret-key share of one neighbour, a second unmasking request,
    or an unmasking request naming fewer survivors than the threshold."""

    reason = "secagg.privacy"


class SecAggThresholdError(SecAggError):
    """Fewer participants than the threshold remain: the round is refused (never a wrong sum)."""

    reason = "secagg.threshold"


class SecAggRecoveryError(SecAggError):
    """A secret reconstructed from shares is inconsistent (a dropped edge's recovered secret
    key does not match the public key it advertised): some shares were corrupted."""

    reason = "secagg.recovery"


class SecAggConsistencyError(SecAggPrivacyError):
    """The consistency check failed (Bonawitz et al. 2017, round 3): the unmasking request
    names another survivor set than the one this edge signed, relays a signature that does not
    verify or comes from outside the neighbourhood, or carries fewer than t valid signatures on
    the same set. The edge reveals nothing and aborts the round."""

    reason = "secagg.consistency"
