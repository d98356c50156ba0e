"""The fog's side of one SecAgg+ round: relay keys and encrypted shares, collect masked
inputs, ask the survivors for exactly the shares that remove the masks, and compute the sum.

Paper: doi.org/10.1145/3133956.3133982 (Bonawitz et al., 2017) and arxiv.org/abs/2008.05767
(Bell et al., 2020).

With ``consistency=True`` (every wired fog) the round has the consistency check of Bonawitz et
al.'s round 3 between the masked inputs and the unmasking: :meth:`FogSecAgg.close_masked_check`
sends U3 to each survivor, the survivors' signatures on it come back
(:class:`~hierfl.secagg.messages.ConsistencySignature`), and :meth:`FogSecAgg.close_check`
relays each edge its neighbourhood's signatures inside the unmasking request.

The fog drives the stages: it feeds every edge message to :meth:`FogSecAgg.receive` and, when
the stage's deadline passes (its own timer; this module has no clock), calls ``close_*`` to get
the messages for the next stage. Edges that sent nothing by then have dropped. Each close checks
the threshold and refuses the round (SecAggThresholdError, stage ``aborted``) rather than go on
to a sum it could not unmask. Every received message is hostile until checked: a bad one
raises a typed error, is counted in :attr:`FogSecAgg.rejected` by reason, and changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hierfl.secagg import crypto, shamir
from hierfl.secagg.client import pairwise_sign
from hierfl.secagg.errors import (
    SecAggAuthError,
    SecAggDuplicateError,
    SecAggError,
    SecAggMessageError,
    SecAggRecoveryError,
    SecAggStageError,
    SecAggThresholdError,
)
from hierfl.secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    ForwardedShares,
    KeyRoster,
    MaskedInput,
    Message,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    consistency_message,
    parse,
)
from hierfl.secagg.params import SecAggParams
from hierfl.secagg.prg import expand

__all__ = ["FogSecAgg", "SecAggResult"]

_STAGE_MESSAGE: dict[str, type[Message]] = {
    "advertise": AdvertiseKeys,
    "share": ShareKeys,
    "masked": MaskedInput,
    "check": ConsistencySignature,
    "unmask": UnmaskResponse,
}


@dataclass(frozen=True)
class SecAggResult:
    """What the fog learns: the sum of the survivors' clipped, encoded updates, and who.

    Attributes:
        total: uint32 vector, the exact modular sum of the survivors' encodings.
        sum: float64 vector, ``total`` decoded (the sum of the clipped updates to within
            ``len(survivors) / (2 * scale)`` per coordinate).
        survivors: edges whose masked input is in the sum.
        dropped: edge -> stage it dropped after (``"advertise"``, ``"share"``, ``"masked"``
            for edges that sent their input but not their consistency signature (or, without
            the check, did not answer the unmasking request), ``"check"`` for edges that signed
            but did not answer — their inputs are still in the sum) or ``"absent"`` (never
            advertised).
    """

    total: npt.NDArray[np.uint32]
    sum: npt.NDArray[np.float64]
    survivors: tuple[str, ...]
    dropped: dict[str, str]


class FogSecAgg:
    """The fog's protocol state for one round in its region.

    Args:
        params: the round's public parameters.
        consistency: run the consistency check (Bonawitz et al.'s round 3) before unmasking.
        verify: ``verify(edge, message, signature)`` for the edges' consistency signatures
            (None: relay them unchecked; the edges check them anyway).
    """

    def __init__(self, params: SecAggParams, *, consistency: bool = False,
                 verify: Callable[[str, bytes, bytes], bool] | None = None) -> None:
        self.params = params
        self.consistency = consistency
        self._verify = verify
        self._signatures: dict[str, bytes] = {}  # U4: consistency signatures on U3
        self._u3_message = b""  # consistency_message of U3, made once
        self.stage = "advertise"
        self.rejected: Counter[str] = Counter()
        self._keys: dict[str, tuple[bytes, bytes]] = {}  # U1: advertised (c_pk, s_pk)
        self._shares: dict[str, dict[str, bytes]] = {}  # U2: sender -> recipient -> ct
        self._holds: dict[str, set[str]] = {}  # recipient -> owners whose shares it got
        self._masked: set[str] = set()  # U3: their inputs are summed on arrival
        self._total = np.zeros(params.dim, dtype=np.uint32)
        self._requests: dict[str, UnmaskRequest] = {}
        self._responses: dict[str, UnmaskResponse] = {}  # U4

    # --- receiving ------------------------------------------------------------------------

    def receive(self, msg: Message | dict[str, Any], sender: str | None = None) -> None:
        """Accept one edge message for the current stage.

        Args:
            msg: the message or its wire dict.
            sender: the id the transport authenticated (a signed frame's signer), if any; it
                must match the message's ``sender``.

        Raises:
            SecAggMessageError, SecAggStageError, SecAggDuplicateError: the message is refused
                (and counted in :attr:`rejected`); the round's state is unchanged.
        """
        try:
            self._receive(msg, sender)
        except SecAggError as exc:
            self.rejected[exc.reason] += 1
            raise

    def _receive(self, msg: Message | dict[str, Any], sender: str | None) -> None:
        m = parse(msg)
        if self.stage not in _STAGE_MESSAGE:
            raise SecAggStageError(f"fog: round is {self.stage}, no message expected")
        expected = _STAGE_MESSAGE[self.stage]
        if not isinstance(m, expected):
            raise SecAggStageError(
                f"fog: expected {expected.kind!r} in stage {self.stage!r}, got {m.kind!r}"
            )
        if m.region != self.params.region or m.round != self.params.round:
            raise SecAggMessageError(f"message for {m.region}/{m.round}, not this round")
        if not isinstance(m, AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature
                          | UnmaskResponse):
            raise SecAggStageError(f"fog: {m.kind!r} is a fog-to-edge message")
        who = m.sender
        if sender is not None and sender != who:
            raise SecAggMessageError(f"message claims {who!r} but came from {sender!r}")
        if who not in self.params.roster:
            raise SecAggMessageError(f"{who!r} is not in the region's roster")
        if isinstance(m, AdvertiseKeys):
            self._on_advertise(m)
        elif isinstance(m, ShareKeys):
            self._on_share(m)
        elif isinstance(m, MaskedInput):
            self._on_masked(m)
        elif isinstance(m, ConsistencySignature):
            self._on_signature(m)
        else:
            self._on_response(m)

    def _check_new(self, who: str, stage_senders: Iterable[str], allowed: Iterable[str]) -> None:
        if who in stage_senders:
            raise SecAggDuplicateError(f"{who!r} already sent its {self.stage} message")
        if who not in allowed:
            raise SecAggStageError(f"{who!r} dropped out of an earlier stage")

    def _on_advertise(self, m: AdvertiseKeys) -> None:
        if m.sender in self._keys:
            raise SecAggDuplicateError(f"{m.sender!r} already advertised")
        if m.c_pk == m.s_pk:
            raise SecAggMessageError("the two advertised keys must differ")
        used = {k for pair in self._keys.values() for k in pair}
        if m.c_pk in used or m.s_pk in used:
            raise SecAggMessageError(f"{m.sender!r} advertised another edge's public key")
        self._keys[m.sender] = (m.c_pk, m.s_pk)

    def _on_share(self, m: ShareKeys) -> None:
        self._check_new(m.sender, self._shares, self._keys)
        allowed = self.params.graph[m.sender] & set(self._keys)
        if not set(m.ciphertexts) <= allowed:
            raise SecAggMessageError(f"{m.sender!r} sent shares to non-neighbours")
        self._shares[m.sender] = dict(m.ciphertexts)

    def _on_masked(self, m: MaskedInput) -> None:
        self._check_new(m.sender, self._masked, self._holds)
        if len(m.masked) != 4 * self.params.dim:
            raise SecAggMessageError(
                f"masked input of {len(m.masked)} bytes, expected {4 * self.params.dim}"
            )
        self._total += np.frombuffer(m.masked, dtype="<u4")
        self._masked.add(m.sender)

    def _on_signature(self, m: ConsistencySignature) -> None:
        self._check_new(m.sender, self._signatures, self._masked)
        if self._verify is not None and not self._verify(m.sender, self._u3_message,
                                                         m.signature):
            raise SecAggAuthError(f"{m.sender!r}'s signature on the survivor set does not verify")
        self._signatures[m.sender] = m.signature

    def _on_response(self, m: UnmaskResponse) -> None:
        self._check_new(m.sender, self._responses, self._requests)
        req = self._requests[m.sender]
        if set(m.self_mask_shares) != set(req.self_mask_of) or set(m.secret_key_shares) != set(
            req.secret_key_of
        ):
            raise SecAggMessageError(f"{m.sender!r} answered other shares than requested")
        try:
            for b in (*m.self_mask_shares.values(), *m.secret_key_shares.values()):
                shamir.share_from_bytes(b)
        except ValueError as exc:
            raise SecAggMessageError(f"{m.sender!r}: {exc}") from exc
        self._responses[m.sender] = m

    # --- closing stages -------------------------------------------------------------------

    def _close(self, stage: str, survivors: int, nxt: str) -> None:
        if self.stage != stage:
            raise SecAggStageError(f"fog: cannot close {stage!r} in stage {self.stage!r}")
        if survivors < self.params.t:
            self.stage = "aborted"
            raise SecAggThresholdError(
                f"fog: {survivors} edges left after {stage!r}, threshold {self.params.t}; "
                f"round refused"
            )
        self.stage = nxt

    def close_advertise(self) -> dict[str, KeyRoster]:
        """End stage 0: each advertiser gets its advertised neighbours' keys (and its own).

        Raises:
            SecAggThresholdError: fewer than t edges advertised.
        """
        self._close("advertise", len(self._keys), "share")
        out = {}
        for u in self._keys:
            visible = (self.params.graph[u] & set(self._keys)) | {u}
            out[u] = KeyRoster(
                self.params.region, self.params.round, u,
                {v: list(self._keys[v]) for v in sorted(visible)},
            )
        return out

    def close_share(self) -> dict[str, ForwardedShares]:
        """End stage 1: relay each share to its recipient, only along pairs that both sent
        (so the pairwise masks of two survivors always cancel).

        Raises:
            SecAggThresholdError: fewer than t edges shared.
        """
        self._close("share", len(self._shares), "masked")
        out = {}
        for u in self._shares:
            relayed = {
                v: cts[u] for v, cts in self._shares.items()
                if u in cts and v in self._shares[u]
            }
            self._holds[u] = set(relayed)
            out[u] = ForwardedShares(self.params.region, self.params.round, u, relayed)
        return out

    def _holders(self, owner: str) -> set[str]:
        """The edges that hold a share of ``owner``'s secrets (``owner`` itself included)."""
        return {w for w, owners in self._holds.items() if owner in owners} | {owner}

    def close_masked(self) -> dict[str, UnmaskRequest]:
        """End stage 2 (semi-honest mode): ask each survivor for the self-mask shares of its
        surviving neighbours and the secret-key shares of its dropped ones.

        Raises:
            SecAggStageError: in consistency mode (use :meth:`close_masked_check`).
            SecAggThresholdError: fewer than t inputs arrived, or some secret needed to unmask
                has fewer than t holders among the survivors.
        """
        if self.consistency:
            raise SecAggStageError("fog: a consistency round closes stage 2 with "
                                   "close_masked_check")
        self._close("masked", len(self._masked), "unmask")
        self._check_holders(set(self._masked))
        return self._unmask_requests(set(self._masked), {})

    def close_masked_check(self) -> dict[str, ConsistencyCheck]:
        """End stage 2 (consistency mode): send the survivor set U3 to every survivor.

        Raises:
            SecAggStageError: in semi-honest mode.
            SecAggThresholdError: as :meth:`close_masked`.
        """
        if not self.consistency:
            raise SecAggStageError("fog: no consistency check in a semi-honest round")
        self._close("masked", len(self._masked), "check")
        self._check_holders(set(self._masked))
        listed = tuple(sorted(self._masked))
        self._u3_message = consistency_message(self.params.region, self.params.round, listed)
        return {u: ConsistencyCheck(self.params.region, self.params.round, u, listed)
                for u in listed}

    def close_check(self) -> dict[str, UnmaskRequest]:
        """End the consistency check: ask each edge that signed (U4) for its shares, relaying
        t valid signatures of its neighbourhood on U3: its own, then its neighbours' in id order
        (t is all an edge needs; relaying more would only cost it verifications).

        Raises:
            SecAggThresholdError: fewer than t signatures, or some secret needed to unmask has
                fewer than t holders among the signers.
        """
        self._close("check", len(self._signatures), "unmask")
        self._check_holders(set(self._signatures))
        return self._unmask_requests(set(self._signatures), self._signatures)

    def _check_holders(self, answering: set[str]) -> None:
        for owner in self._needed():
            have = len(self._holders(owner) & answering)
            if have < self.params.t:
                self.stage = "aborted"
                raise SecAggThresholdError(
                    f"fog: only {have} survivors hold shares of {owner!r}, threshold "
                    f"{self.params.t}; round refused"
                )

    def _unmask_requests(self, asked: set[str],
                         signatures: dict[str, bytes]) -> dict[str, UnmaskRequest]:
        survivors = set(self._masked)
        listed = tuple(sorted(survivors))
        for u in sorted(asked):
            holds = self._holds[u]
            others = sorted(self.params.graph[u] & set(signatures))
            mine = ([u] if u in signatures else []) + others
            mine = mine[: self.params.t]
            self._requests[u] = UnmaskRequest(
                self.params.region, self.params.round, u, listed,
                tuple(sorted((holds | {u}) & survivors)), tuple(sorted(holds - survivors)),
                {w: signatures[w] for w in mine},
            )
        return dict(self._requests)

    def _needed(self) -> set[str]:
        """Owners whose secret must be reconstructed: every survivor (self mask) and every
        dropped edge whose pairwise mask some survivor added (secret key)."""
        survivors = set(self._masked)
        dropped = {v for u in survivors for v in self._holds[u]} - survivors
        return survivors | dropped

    def finish(self) -> SecAggResult:
        """End stage 3: reconstruct the secrets and return the unmasked sum.

        Raises:
            SecAggThresholdError: fewer than t survivors answered, or a secret has fewer than
                t shares among the answers.
            SecAggRecoveryError: a dropped edge's reconstructed key does not match its public key.
        """
        self._close("unmask", len(self._responses), "done")
        survivors = sorted(self._masked)
        dim = self.params.dim
        context = self.params.context()
        total = self._total.copy()
        for owner in sorted(self._needed()):
            is_survivor = owner in self._masked
            shares = {
                self.params.x_of(w): shamir.share_from_bytes(
                    (r.self_mask_shares if is_survivor else r.secret_key_shares)[owner]
                )
                for w, r in self._responses.items()
                if owner in (r.self_mask_shares if is_survivor else r.secret_key_shares)
            }
            if len(shares) < self.params.t:
                self.stage = "aborted"
                raise SecAggThresholdError(
                    f"fog: {len(shares)} shares of {owner!r}, threshold {self.params.t}; "
                    f"round refused"
                )
            try:
                secret = shamir.reconstruct(shares, self.params.t)
            except ValueError as exc:
                self.stage = "aborted"
                raise SecAggRecoveryError(f"fog: shares of {owner!r}: {exc}") from exc
            if is_survivor:
                total -= expand(secret, dim)
                continue
            key = crypto.private_from_bytes(secret)
            if crypto.public_bytes(key) != self._keys[owner][1]:
                self.stage = "aborted"
                raise SecAggRecoveryError(f"fog: recovered key of {owner!r} does not match")
            for u in survivors:
                if owner in self._holds[u]:
                    mask = expand(crypto.agree(key, self._keys[u][1], b"mask", context), dim)
                    # u added sign(u, owner) * mask; take it back out
                    if pairwise_sign(u, owner) > 0:
                        total -= mask
                    else:
                        total += mask
        dropped = {e: "absent" for e in self.params.roster if e not in self._keys}
        dropped |= {e: "advertise" for e in self._keys if e not in self._shares}
        dropped |= {e: "share" for e in self._shares if e not in self._masked}
        if self.consistency:
            dropped |= {e: "masked" for e in self._masked if e not in self._signatures}
            dropped |= {e: "check" for e in self._signatures if e not in self._responses}
        else:
            dropped |= {e: "masked" for e in self._masked if e not in self._responses}
        return SecAggResult(
            total=total, sum=self.params.codec.decode_sum(total),
            survivors=tuple(survivors), dropped=dropped,
        )
