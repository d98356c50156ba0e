"""The edge's side of one SecAgg+ round: a state machine that turns each fog message into the
next edge message, and refuses what an honest edge must refuse.

Paper: doi.org/10.1145/3133956.3133982 (Bonawitz et al., 2017, the protocol of figure 4) and
arxiv.org/abs/2008.05767 (Bell et al., 2020: masks and shares only along a k-regular graph).

Stages: ``init`` -> :meth:`advertise` -> ``advertised`` -> :meth:`on_roster` -> ``shared`` ->
:meth:`on_shares` -> ``masked`` -> :meth:`on_check` -> ``checked`` -> :meth:`on_unmask` ->
``done``; ``aborted`` once a threshold or consistency check fails. An edge built with
``sign``/``verify`` (its provisioned identity key and its neighbours', as every wired edge is)
requires the consistency check before it reveals a share; one built without them runs the
semi-honest protocol (``masked`` -> :meth:`on_unmask`), for in-memory use only. A call in
the wrong stage raises SecAggStageError; a message that fails a check
raises a typed error and leaves the stage as it was (except a failed threshold or consistency
check, which aborts:
the round cannot complete safely any more).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from hierfl.secagg import crypto, shamir
from hierfl.secagg.errors import (
    SecAggConsistencyError,
    SecAggError,
    SecAggMessageError,
    SecAggPrivacyError,
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

__all__ = ["EdgeSecAgg", "pairwise_sign"]


def pairwise_sign(me: str, other: str) -> int:
    """+1 if ``me`` adds the pairwise mask it shares with ``other`` (``me < other``), else -1."""
    return 1 if me < other else -1


class EdgeSecAgg:
    """One edge's protocol state for one round.

    Args:
        params: the round's public parameters.
        edge_id: this edge, a member of ``params.roster``.
        random_bytes: randomness for keys, seeds and shares (``os.urandom``; tests pass a
            seeded generator to make a round reproducible).
        sign: signs :func:`~hierfl.secagg.messages.consistency_message` bytes with this
            edge's identity key (the consistency check); None with ``verify``: semi-honest.
        verify: ``verify(edge, message, signature)``: whether ``signature`` is ``edge``'s
            identity-key signature on ``message``.

    Raises:
        SecAggError: if ``edge_id`` is not in the roster, or only one of sign / verify given.
    """

    def __init__(
        self, params: SecAggParams, edge_id: str, *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        sign: Callable[[bytes], bytes] | None = None,
        verify: Callable[[str, bytes, bytes], bool] | None = None,
    ) -> None:
        if edge_id not in params.roster:
            raise SecAggError(f"{edge_id!r} is not in the region's roster")
        if (sign is None) != (verify is None):
            raise SecAggError("the consistency check needs both sign and verify")
        self._sign, self._verify = sign, verify
        self._signed: frozenset[str] | None = None  # the U3 this edge signed
        self._signature = b""  # and its signature on it
        self._signed_message = b""  # consistency_message of that U3
        self.params = params
        self.edge_id = edge_id
        self.stage = "init"
        self._random = random_bytes
        self._neighbours = params.graph[edge_id]
        self._c_sk: X25519PrivateKey | None = None
        self._s_sk: X25519PrivateKey | None = None
        self._keys: dict[str, list[bytes]] = {}  # advertised neighbours' [c_pk, s_pk]
        self._enc_keys: dict[str, bytes] = {}  # neighbour -> the pairwise share key
        self._self_seed = b""
        self._own_share: tuple[int, int] = (0, 0)  # my shares of my own (seed, key)
        self._held: dict[str, tuple[int, int]] = {}  # owner -> (seed share, key share)

    # --- helpers --------------------------------------------------------------------------

    def _expect(self, stage: str, msg: Any, cls: type[Message]) -> Any:
        if self.stage != stage:
            raise SecAggStageError(f"edge {self.edge_id}: got a message in stage {self.stage!r}")
        m = parse(msg)
        if not isinstance(m, cls):
            raise SecAggStageError(
                f"edge {self.edge_id}: expected {cls.kind!r} in stage {stage!r}, got {m.kind!r}"
            )
        if m.region != self.params.region or m.round != self.params.round:
            raise SecAggMessageError(f"message for {m.region}/{m.round}, not this round")
        if getattr(m, "recipient", None) != self.edge_id:
            raise SecAggMessageError(f"message addressed to {getattr(m, 'recipient', None)!r}")
        return m

    def _abort(self, why: str) -> SecAggThresholdError:
        self.stage = "aborted"
        return SecAggThresholdError(f"edge {self.edge_id}: {why}; round refused")

    # --- stages ---------------------------------------------------------------------------

    def advertise(self) -> AdvertiseKeys:
        """Stage 0: make two fresh key pairs and advertise their public halves."""
        if self.stage != "init":
            raise SecAggStageError(f"edge {self.edge_id}: already advertised")
        self._c_sk = crypto.private_from_bytes(self._random(32))
        self._s_sk = crypto.private_from_bytes(self._random(32))
        self.stage = "advertised"
        return AdvertiseKeys(
            self.params.region, self.params.round, self.edge_id,
            crypto.public_bytes(self._c_sk), crypto.public_bytes(self._s_sk),
        )

    def on_roster(self, msg: KeyRoster | dict[str, Any]) -> ShareKeys:
        """Stage 1: share the self-mask seed and the mask secret key among the neighbours
        that advertised, each share pair encrypted under the pairwise ``c`` key.

        Raises:
            SecAggMessageError: on a roster naming non-neighbours or changing our own keys.
            SecAggThresholdError: if fewer than t - 1 neighbours advertised.
        """
        m: KeyRoster = self._expect("advertised", msg, KeyRoster)
        assert self._c_sk is not None
        assert self._s_sk is not None
        mine = [crypto.public_bytes(self._c_sk), crypto.public_bytes(self._s_sk)]
        if m.keys.get(self.edge_id) != mine:
            raise SecAggMessageError("the roster does not carry this edge's own keys")
        others = {v: pair for v, pair in m.keys.items() if v != self.edge_id}
        if not set(others) <= self._neighbours:
            raise SecAggMessageError("the roster names edges that are not neighbours")
        seen = {bytes(p) for pair in others.values() for p in pair}
        if len(seen) != 2 * len(others) or seen & set(mine):
            raise SecAggMessageError("the roster repeats a public key")
        if len(others) + 1 < self.params.t:
            raise self._abort(f"{len(others)} neighbours advertised, threshold {self.params.t}")
        context = self.params.context()
        enc_keys = {
            v: crypto.agree(self._c_sk, pair[0], b"enc", context) for v, pair in others.items()
        }
        holders = sorted([*others, self.edge_id])
        xs = [self.params.x_of(v) for v in holders]
        seed = self._random(32)
        seed_shares = shamir.share(seed, xs, self.params.t, self._random)
        key_bytes = self._s_sk.private_bytes_raw()
        key_shares = shamir.share(key_bytes, xs, self.params.t, self._random)
        ciphertexts = {}
        for v in others:
            x = self.params.x_of(v)
            plaintext = shamir.share_to_bytes(seed_shares[x]) + shamir.share_to_bytes(key_shares[x])
            ciphertexts[v] = crypto.encrypt_share(
                enc_keys[v], self._random(crypto.NONCE_BYTES), plaintext,
                context=context, sender=self.edge_id, recipient=v,
            )
        me = self.params.x_of(self.edge_id)
        self._keys = others
        self._enc_keys = enc_keys  # reused for the shares that come back (one X25519 each)
        self._self_seed = seed
        self._own_share = (seed_shares[me], key_shares[me])
        self.stage = "shared"
        return ShareKeys(self.params.region, self.params.round, self.edge_id, ciphertexts)

    def on_shares(
        self, msg: ForwardedShares | dict[str, Any], update: npt.ArrayLike, *,
        integer_noise: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.int64]] | None = None,
    ) -> MaskedInput:
        """Stage 2: keep the neighbours' shares, then send the clipped, encoded update plus the
        self mask plus the signed pairwise masks of every neighbour whose shares arrived.

        Args:
            msg: the shares relayed to this edge.
            update: the float update of length ``params.dim`` (clipped here).
            integer_noise: distributed DP's hook: given the clipped, quantised update
                (int64, not reduced), returns it with this edge's integer noise share added
                (it is then reduced mod 2^32 and masked, so the noise survives the sum).

        Raises:
            SecAggMessageError: on shares from non-neighbours or an update of the wrong size.
            SecAggAuthError: if a share does not authenticate.
            SecAggThresholdError: if fewer than t - 1 neighbours' shares arrived.
        """
        m: ForwardedShares = self._expect("shared", msg, ForwardedShares)
        assert self._c_sk is not None
        assert self._s_sk is not None
        if not set(m.ciphertexts) <= set(self._keys):
            raise SecAggMessageError("shares relayed from edges that did not advertise to us")
        x = np.asarray(update)
        if x.shape != (self.params.dim,):
            raise SecAggMessageError(f"update has shape {x.shape}, expected ({self.params.dim},)")
        if integer_noise is None:
            encoded = self.params.codec.encode(x)
        else:
            noised = np.asarray(integer_noise(self.params.codec.quantize(x)), dtype=np.int64)
            if noised.shape != (self.params.dim,):
                raise SecAggMessageError(f"noised update has shape {noised.shape}")
            encoded = noised.astype(np.uint32)
        context = self.params.context()
        held: dict[str, tuple[int, int]] = {}
        for v, ct in m.ciphertexts.items():
            plain = crypto.decrypt_share(self._enc_keys[v], ct, context=context, sender=v,
                                         recipient=self.edge_id)
            try:
                held[v] = (
                    shamir.share_from_bytes(plain[: shamir.SHARE_BYTES]),
                    shamir.share_from_bytes(plain[shamir.SHARE_BYTES :]),
                )
            except ValueError as exc:
                raise SecAggMessageError(f"share from {v!r}: {exc}") from exc
        if len(held) + 1 < self.params.t:
            raise self._abort(f"shares from {len(held)} neighbours, threshold {self.params.t}")
        masked = encoded + expand(self._self_seed, self.params.dim)
        for v in sorted(held):
            seed = crypto.agree(self._s_sk, self._keys[v][1], b"mask", context)
            if pairwise_sign(self.edge_id, v) > 0:
                masked += expand(seed, self.params.dim)
            else:
                masked -= expand(seed, self.params.dim)
        self._held = held
        self.stage = "masked"
        return MaskedInput(
            self.params.region, self.params.round, self.edge_id, masked.astype("<u4").tobytes()
        )

    @property
    def checks_consistency(self) -> bool:
        """Whether this edge requires the consistency check (it holds identity keys)."""
        return self._sign is not None

    def _check_survivors(self, survivors: set[str]) -> None:
        if len(survivors) < self.params.t:
            raise SecAggPrivacyError(
                f"edge {self.edge_id}: {len(survivors)} survivors, threshold {self.params.t}"
            )
        if self.edge_id not in survivors:
            raise SecAggMessageError("the survivors omit this edge, which sent its input")
        if not survivors <= set(self.params.roster):
            raise SecAggMessageError("the survivors name edges outside the roster")

    def on_check(self, msg: ConsistencyCheck | dict[str, Any]) -> ConsistencySignature:
        """Stage 2b (consistency check): sign the survivor set U3 the fog announces, once.

        Raises:
            SecAggStageError: outside stage ``masked``, or an edge without identity keys.
            SecAggPrivacyError: fewer than t survivors.
            SecAggMessageError: a set omitting this edge, naming edges outside the roster, or
                naming a neighbour whose shares never reached this edge.
        """
        if self._sign is None:
            raise SecAggStageError(f"edge {self.edge_id}: no identity keys, no consistency check")
        m: ConsistencyCheck = self._expect("masked", msg, ConsistencyCheck)
        survivors = set(m.survivors)
        self._check_survivors(survivors)
        if not (survivors & self._neighbours) <= set(self._held):
            raise SecAggMessageError("the survivors name a neighbour that never shared with us")
        self._signed = frozenset(survivors)
        self._signed_message = consistency_message(self.params.region, self.params.round,
                                                   survivors)
        signature = self._sign(self._signed_message)
        self._signature = signature
        self.stage = "checked"
        return ConsistencySignature(self.params.region, self.params.round, self.edge_id,
                                    signature)

    def _consistent(self, m: UnmaskRequest) -> None:
        """The consistency rule: the request's U3 is the one signed here, and at least t
        members of this edge's neighbourhood (itself included) signed that same U3."""
        assert self._signed is not None
        assert self._verify is not None
        if set(m.survivors) != self._signed:
            raise self._refuse("the unmasking request names another survivor set than signed")
        allowed = self._neighbours | {self.edge_id}
        if not set(m.signatures) <= allowed:
            raise self._refuse("signatures relayed from outside this edge's neighbourhood")
        message = self._signed_message
        valid = 0
        for w in sorted(m.signatures):
            sig = m.signatures[w]
            # our own signature relayed back: byte equality, no verification needed
            if not (sig == self._signature if w == self.edge_id
                    else self._verify(w, message, sig)):
                raise self._refuse(f"the signature of {w!r} on the survivor set does not verify")
            valid += 1
        if valid < self.params.t:
            raise self._refuse(f"{valid} valid signatures on the survivor set, threshold "
                               f"{self.params.t}")

    def _refuse(self, why: str) -> SecAggConsistencyError:
        self.stage = "aborted"
        return SecAggConsistencyError(f"edge {self.edge_id}: {why}; nothing revealed")

    def on_unmask(self, msg: UnmaskRequest | dict[str, Any]) -> UnmaskResponse:
        """Stage 3: reveal, per neighbour, the self-mask seed share if it sent its masked input
        or the secret-key share if it dropped; never both, and only once per round. An edge
        with identity keys first checks the consistency signatures (:meth:`on_check`).

        Raises:
            SecAggPrivacyError: a second request, a request for both shares of one edge, for
                the key share of an edge listed as a survivor, or fewer than t survivors.
            SecAggConsistencyError: (a SecAggPrivacyError) another survivor set than signed, a
                forged or out-of-neighbourhood signature, or fewer than t valid ones: the
                round is aborted.
            SecAggMessageError: on ids this edge holds no share of, or a list omitting it.
        """
        if self.stage == "done":
            raise SecAggPrivacyError(f"edge {self.edge_id}: a second unmasking request refused")
        m: UnmaskRequest = self._expect(
            "checked" if self.checks_consistency else "masked", msg, UnmaskRequest)
        if self.checks_consistency:
            self._consistent(m)
        elif m.signatures:
            raise SecAggMessageError("signatures relayed to an edge without identity keys")
        both = set(m.self_mask_of) & set(m.secret_key_of)
        if both:
            raise SecAggPrivacyError(
                f"edge {self.edge_id}: refused to reveal both the self-mask and the secret-key "
                f"shares of {sorted(both)}"
            )
        survivors = set(m.survivors)
        self._check_survivors(survivors)
        if survivors & set(m.secret_key_of):
            raise SecAggPrivacyError("asked for the secret-key share of an edge that survived")
        if not set(m.self_mask_of) <= survivors:
            raise SecAggMessageError("asked for the self-mask share of an edge that dropped")
        holding = {*self._held, self.edge_id}
        if not (set(m.self_mask_of) | set(m.secret_key_of)) <= holding:
            raise SecAggMessageError("asked for shares this edge does not hold")

        def held(v: str) -> tuple[int, int]:
            return self._own_share if v == self.edge_id else self._held[v]

        response = UnmaskResponse(
            self.params.region, self.params.round, self.edge_id,
            {v: shamir.share_to_bytes(held(v)[0]) for v in m.self_mask_of},
            {v: shamir.share_to_bytes(held(v)[1]) for v in m.secret_key_of},
        )
        self.stage = "done"
        return response
