"""SecAgg+ over MQTT: the fog's and the edge's drivers around the protocol's state machines.

The drivers carry :class:`~hierfl.secagg.server.FogSecAgg` and
:class:`~hierfl.secagg.client.EdgeSecAgg` over the region's MQTT topics
(:func:`hierfl.topics.secagg_begin`, :func:`~hierfl.topics.secagg_up`,
:func:`~hierfl.topics.secagg_down`), every message in a signed envelope
(:mod:`hierfl.secagg.envelope`). They own no connection: the caller subscribes to
:meth:`filters`, passes each inbound message to ``handle`` and gives them a ``publish``
coroutine, so a fog or an edge runs them on the MQTT client it already has.

One round (docs/secure-aggregation.md)::

    fog  -> all   secagg/begin     BeginRound: round, roster, dim, codec, k, t (signed by the fog)
    edge -> fog   secagg/up/E      advertise (signed by E)
    fog  -> E     secagg/down/E    adverts: E's neighbours' signed advertisements, relayed as is
    edge -> fog   secagg/up/E      shares
    fog  -> E     secagg/down/E    forwarded
    edge -> fog   secagg/up/E      masked (the clipped, encoded, masked update)
    fog  -> E     secagg/down/E    check: the survivor set U3 (the consistency check)
    edge -> fog   secagg/up/E      consistency: E's identity-key signature on (round, U3)
    fog  -> E     secagg/down/E    unmask, with E's neighbours' signatures on U3
    edge -> fog   secagg/up/E      reveal            -> the fog computes the sum

The fog closes a stage when every edge still in the round has sent, or at the stage's deadline;
edges that sent nothing by then have dropped. Below the threshold the round is refused
(:class:`~hierfl.secagg.errors.SecAggThresholdError`, counted in :attr:`FogSecAggDriver.refused`),
never wrong. Every message from the broker is hostile: a bad one raises a typed error inside
``handle``, is counted in ``rejected`` by its ``reason`` and logged, and changes nothing; it
never ends a driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hierfl import topics
from hierfl.errors import HierflError, ReplayError
from hierfl.secagg.client import EdgeSecAgg
from hierfl.secagg.encoding import FixedPoint
from hierfl.secagg.envelope import (
    open_envelope,
    seal,
    sign_consistency,
    verify_consistency,
)
from hierfl.secagg.errors import SecAggError, SecAggMessageError, SecAggStageError
from hierfl.secagg.messages import AdvertiseKeys, KeyRoster, parse
from hierfl.secagg.params import SecAggParams
from hierfl.secagg.server import FogSecAgg, SecAggResult
from hierfl.security.trust import TrustStore
from hierfl.wire.signing import Signer

__all__ = [
    "BeginRound",
    "EdgeSecAggDriver",
    "FogSecAggDriver",
    "Publish",
    "StageDeadlines",
]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
UpdateSource = Callable[["BeginRound"], "Awaitable[npt.ArrayLike] | npt.ArrayLike"]
IntegerNoise = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.int64]]

_EDGE_STAGES = ("advertise", "shares", "masked", "consistency", "reveal")


@dataclass(frozen=True, slots=True)
class StageDeadlines:
    """Seconds the fog waits for each stage's messages before it closes the stage.

    ``masked_s`` covers the edges' local training when they train after advertising;
    ``check_s`` is the consistency check's (None: the check and the unmasking share
    ``unmask_s``, the check at most half of it, so the round fits the four deadlines).
    """

    advertise_s: float = 10.0
    share_s: float = 10.0
    masked_s: float = 60.0
    unmask_s: float = 10.0
    check_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("advertise_s", "share_s", "masked_s", "unmask_s", "check_s"):
            v = getattr(self, name)
            if v is None and name == "check_s":
                continue
            if not (math.isfinite(v) and v > 0):
                raise SecAggError(f"{name} must be finite and > 0, got {v}")


@dataclass(frozen=True, slots=True)
class BeginRound:
    """The fog's opening of a round: everything the edges need to build the same
    :class:`~hierfl.secagg.params.SecAggParams` (signed by the fog; each edge checks it
    against its own settings before it takes part)."""

    region: str
    round: int
    roster: tuple[str, ...]
    dim: int
    clip_norm: float
    scale: float
    degree: int
    threshold: int

    def to_wire(self) -> dict[str, Any]:
        """The msgpack-ready dict (``kind = "begin"``)."""
        return {"kind": "begin", "region": self.region, "round": self.round,
                "roster": list(self.roster), "dim": self.dim, "clip_norm": self.clip_norm,
                "scale": self.scale, "degree": self.degree, "threshold": self.threshold}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> BeginRound:
        """Validate an untrusted ``begin`` dict.

        Raises:
            SecAggMessageError: on missing or extra fields or wrong types.
        """
        want = {"kind", "region", "round", "roster", "dim", "clip_norm", "scale", "degree",
                "threshold"}
        if set(d) != want or d["kind"] != "begin":
            raise SecAggMessageError("begin: fields missing or unexpected")
        ints = [d[k] for k in ("round", "dim", "degree", "threshold")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            raise SecAggMessageError("begin: round, dim, degree and threshold must be integers")
        floats = [d["clip_norm"], d["scale"]]
        if not all(isinstance(v, float | int) and not isinstance(v, bool) for v in floats):
            raise SecAggMessageError("begin: clip_norm and scale must be numbers")
        roster = d["roster"]
        if (not isinstance(roster, list) or not isinstance(d["region"], str)
                or not all(isinstance(e, str) for e in roster)):
            raise SecAggMessageError("begin: region and roster must be strings")
        return cls(d["region"], d["round"], tuple(roster), d["dim"], float(d["clip_norm"]),
                   float(d["scale"]), d["degree"], d["threshold"])

    def params(self) -> SecAggParams:
        """The round's parameters.

        Raises:
            SecAggError: if they are inconsistent (overflowing codec, threshold below an
                honest majority of a neighbourhood, bad roster...).
        """
        codec = FixedPoint(self.clip_norm, self.scale, len(self.roster))
        return SecAggParams(self.region, self.round, self.roster, self.dim, codec,
                            degree=self.degree, threshold=self.threshold)


def _edge_of_topic(topic: str, federation: str, fog: str) -> str:
    prefix = topics.secagg_up(federation, fog, "")
    if not topic.startswith(prefix):
        raise SecAggMessageError(f"topic {topic!r} is not a secagg uplink of {fog}")
    return topic[len(prefix):]


class FogSecAggDriver:
    """The fog's side: opens rounds, relays, enforces the stage deadlines, computes the sum.

    Args:
        federation: the federation id.
        fog: this fog's id (the region).
        signer: the fog's signer (``fog/<fog>``).
        trust: the trust store the edges' envelopes are checked against.
        publish: ``publish(topic, payload)`` on the fog's MQTT client (QoS 1).
        clip_norm: the L2 bound edges clip to before masking.
        scale: the fixed-point scale (None: the largest that cannot overflow the region).
        degree: k (None: the complete graph up to 32 edges, else 2 ceil(log2 n)).
        threshold: t (None: floor(2 (k + 1) / 3) + 1).
        deadlines: per-stage deadlines.
        max_bytes: largest envelope accepted.
    """

    #: the protocol's state machine (a test may substitute a dishonest fog's)
    round_class: type[FogSecAgg] = FogSecAgg

    def __init__(self, *, federation: str, fog: str, signer: Signer, trust: TrustStore,
                 publish: Publish, clip_norm: float, scale: float | None = None,
                 degree: int | None = None, threshold: int | None = None,
                 deadlines: StageDeadlines | None = None, max_bytes: int = 1 << 30,
                 clock: Callable[[], float] = time.monotonic,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.federation, self.fog = federation, fog
        self.signer, self.trust, self.publish = signer, trust, publish
        self.clip_norm, self.scale, self.degree, self.threshold = (clip_norm, scale, degree,
                                                                   threshold)
        self.deadlines = deadlines or StageDeadlines()
        self.max_bytes = max_bytes
        self.clock = clock
        self.on_reject = on_reject
        #: refused inbound messages by reason (never raised out of :meth:`handle`)
        self.rejected: Counter[str] = Counter()
        #: rounds refused (below the threshold, or a recovery that did not check out)
        self.refused: Counter[str] = Counter()
        self.completed = 0
        self.last_round_s: dict[str, float] = {}
        self._round: FogSecAgg | None = None
        self._adverts: dict[str, bytes] = {}
        #: edge -> (counter, payload hash, signature) of its masked input in the last round
        self.proofs: dict[str, tuple[int, bytes, bytes]] = {}
        self._arrived: dict[str, set[str]] = {k: set() for k in _EDGE_STAGES}
        self._wake = asyncio.Event()

    def filters(self) -> list[str]:
        """MQTT filters the fog must subscribe to."""
        return [topics.secagg_up_filter(self.federation, self.fog)]

    def handle(self, topic: str, payload: bytes) -> None:
        """One inbound message on an uplink topic: verify, feed the round, count refusals."""
        try:
            edge = _edge_of_topic(topic, self.federation, self.fog)
            opened = open_envelope(payload, trust=self.trust, federation=self.federation,
                                   fog=self.fog, max_bytes=self.max_bytes, edge=edge)
            kind = opened.body["kind"]
            if kind not in _EDGE_STAGES:
                raise SecAggStageError(f"fog: a {kind!r} is a fog-to-edge message")
            if self._round is None:
                raise SecAggStageError(f"fog: {kind!r} from {edge!r} while no round is open")
            self._round.receive(opened.body, sender=edge)
        except HierflError as exc:
            self.rejected[exc.reason] += 1
            if self.on_reject is not None:
                self.on_reject(exc.reason)
            log.info("fog %s: secagg message on %s refused: %s: %s", self.fog, topic,
                     exc.reason, exc)
            return
        if kind == "advertise":
            self._adverts[edge] = bytes(payload)
        elif kind == "masked":  # signed as the edge's update: the aggregate's provenance
            self.proofs[edge] = (opened.counter, opened.payload_hash, opened.signature)
        self._arrived[kind].add(edge)
        self._wake.set()

    async def _send(self, messages: Mapping[str, dict[str, Any]]) -> None:
        await asyncio.gather(*(
            self.publish(topics.secagg_down(self.federation, self.fog, e),
                         seal(self.signer, self.fog, m))
            for e, m in messages.items()
        ))

    async def _collect(self, kind: str, expected: set[str], timeout: float) -> None:
        deadline = self.clock() + timeout
        while not expected <= self._arrived[kind]:
            left = deadline - self.clock()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(left, 0.5))

    def begin(self, round_id: int, roster: tuple[str, ...] | list[str], dim: int,
              scale: float | None = None) -> BeginRound:
        """The opening of round ``round_id`` for ``roster`` (validated here); ``scale``
        overrides the driver's for this round (distributed DP sizes it per round).

        Raises:
            SecAggError: if the parameters are inconsistent.
        """
        n = len(roster)
        scale = self.scale if scale is None else scale
        codec = (FixedPoint.for_region(n, self.clip_norm) if scale is None
                 else FixedPoint(self.clip_norm, scale, n))
        params = SecAggParams(self.fog, round_id, tuple(roster), dim, codec,
                              degree=self.degree, threshold=self.threshold)
        return BeginRound(self.fog, round_id, params.roster, dim, codec.clip_norm,
                          codec.scale, params.k, params.t)

    def _consistency_verifier(self, rnd: int) -> Callable[[str, bytes, bytes], bool]:
        def verify(edge: str, message: bytes, signature: bytes) -> bool:
            return verify_consistency(self.trust, self.federation, self.fog, rnd, edge,
                                      message, signature)
        return verify

    async def run_round(self, round_id: int, roster: tuple[str, ...] | list[str],
                        dim: int, scale: float | None = None) -> SecAggResult:
        """Run one round over MQTT and return the region's sum.

        Args:
            round_id: the round's number (binds every key and share to it; never reuse one).
            roster: the edges that may take part.
            dim: the update's length.
            scale: this round's fixed-point scale (None: the driver's).

        Returns:
            The unmasked sum of the edges whose masked input arrived, and who dropped when.

        Raises:
            SecAggThresholdError: fewer than t edges (or shares) are left at some stage:
                the round is refused (counted in :attr:`refused`).
            SecAggRecoveryError: a rebuilt key does not match its advertisement.
        """
        begin = self.begin(round_id, roster, dim, scale)
        sm = self.round_class(begin.params(), consistency=True,
                              verify=self._consistency_verifier(round_id))
        region, d = self.fog, self.deadlines
        self._round, self._adverts, self.proofs = sm, {}, {}
        self._arrived = {k: set() for k in _EDGE_STAGES}
        times: dict[str, float] = {}
        t0 = self.clock()
        try:
            await self.publish(topics.secagg_begin(self.federation, region),
                               seal(self.signer, region, begin.to_wire()))
            await self._collect("advertise", set(begin.roster), d.advertise_s)
            times["advertise"] = self.clock() - t0
            rosters = sm.close_advertise()
            await self._send({
                u: {"kind": "adverts", "region": region, "round": round_id, "recipient": u,
                    "adverts": [self._adverts[v] for v in sorted(kr.keys)]}
                for u, kr in rosters.items()
            })
            await self._collect("shares", set(rosters), d.share_s)
            times["share"] = self.clock() - t0
            forwarded = sm.close_share()
            await self._send({u: m.to_wire() for u, m in forwarded.items()})
            await self._collect("masked", set(forwarded), d.masked_s)
            times["masked"] = self.clock() - t0
            checks = sm.close_masked_check()
            t_check = self.clock()
            await self._send({u: m.to_wire() for u, m in checks.items()})
            await self._collect("consistency", set(checks),
                                d.unmask_s / 2 if d.check_s is None else d.check_s)
            times["check"] = self.clock() - t0
            requests = sm.close_check()
            await self._send({u: m.to_wire() for u, m in requests.items()})
            # without its own check_s, the check shares unmask_s with the unmasking (which
            # gets at least half of it), so a round never outlasts the four deadlines
            await self._collect("reveal", set(requests), d.unmask_s if d.check_s is not None
                                else max(d.unmask_s - (self.clock() - t_check), d.unmask_s / 2))
            result = sm.finish()
            times["unmask"] = self.clock() - t0
        except SecAggError as exc:
            self.refused[exc.reason] += 1
            log.warning("fog %s: secure round %d refused: %s", region, round_id, exc)
            raise
        finally:
            self._round = None
            for reason, count in sm.rejected.items():
                log.debug("fog %s: round %d refused %d x %s", region, round_id, count, reason)
        self.completed += 1
        self.last_round_s = times
        log.info("fog %s: secure round %d summed %d of %d edges (dropped: %s; stages closed "
                 "at %s s)", region, round_id, len(result.survivors), len(begin.roster),
                 result.dropped or "none", "/".join(f"{v:.3f}" for v in times.values()))
        return result


@dataclass
class _EdgeRound:
    begin: BeginRound
    sm: EdgeSecAgg
    sent: list[str] = field(default_factory=list)
    noise: IntegerNoise | None = None
    #: this edge's own signed advertisement as sent (the fog relays it back: no need to
    #: verify our own signature, byte equality is enough)
    advert: tuple[bytes, dict[str, Any]] = (b"", {})


class EdgeSecAggDriver:
    """The edge's side: answers its fog's round, verifying every relayed key's signature.

    Args:
        federation: the federation id.
        fog: the edge's fog (its region).
        edge: this edge's id.
        signer: the edge's signer (``edge/<fog>/<edge>``).
        trust: the trust store the fog's and the neighbours' envelopes are checked against.
        publish: ``publish(topic, payload)`` on the edge's MQTT client.
        update: called with the round's :class:`BeginRound` when the masked input is due
            (after the shares arrived, so training may overlap the key exchange); returns the
            float update of length ``dim`` (may be a coroutine function).
        clip_norm: the bound this edge is configured with; a round announcing another is
            refused (None: follow the fog's).
        min_roster: the fewest edges a round may have (a fog cannot shrink the crowd an
            update hides in below it).
        integer_noise: distributed DP's hook (:meth:`EdgeSecAgg.on_shares`).
        integer_noise_for: distributed DP: called with each round's ``begin``, returns that
            round's hook (the noise depends on the roster's size and the dimension); an error
            it raises refuses the round (counted). Overrides ``integer_noise``.
        stop_after: fault injection: go silent after sending this stage's message
            (``advertise``, ``shares``, ``masked`` or ``consistency``); None in service.
        random_bytes: randomness for keys, seeds and shares.
    """

    def __init__(self, *, federation: str, fog: str, edge: str, signer: Signer,
                 trust: TrustStore, publish: Publish, update: UpdateSource,
                 clip_norm: float | None = None, min_roster: int = 2,
                 integer_noise: IntegerNoise | None = None, stop_after: str | None = None,
                 integer_noise_for: Callable[[BeginRound], IntegerNoise] | None = None,
                 max_bytes: int = 1 << 30,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 on_reject: Callable[[str], None] | None = None) -> None:
        if stop_after not in (None, "advertise", "shares", "masked", "consistency"):
            raise ValueError(f"stop_after must be advertise, shares, masked or consistency, "
                             f"not {stop_after}")
        self.federation, self.fog, self.edge = federation, fog, edge
        self.signer, self.trust, self.publish = signer, trust, publish
        self.update, self.clip_norm, self.min_roster = update, clip_norm, min_roster
        self.integer_noise, self.stop_after = integer_noise, stop_after
        self.integer_noise_for = integer_noise_for
        self.max_bytes, self.random_bytes = max_bytes, random_bytes
        self.on_reject = on_reject
        #: refused inbound messages by reason (never raised out of :meth:`handle`)
        self.rejected: Counter[str] = Counter()
        #: rounds this edge answered the unmasking request of
        self.completed: list[int] = []
        self._round: _EdgeRound | None = None
        self._last_round = -1

    def filters(self) -> list[str]:
        """MQTT topics the edge must subscribe to."""
        return [topics.secagg_begin(self.federation, self.fog),
                topics.secagg_down(self.federation, self.fog, self.edge)]

    async def handle(self, topic: str, payload: bytes) -> None:
        """One inbound message from the fog: verify, step the protocol, answer."""
        try:
            opened = open_envelope(payload, trust=self.trust, federation=self.federation,
                                   fog=self.fog, max_bytes=self.max_bytes)
            kind = opened.body["kind"]
            if topic == topics.secagg_begin(self.federation, self.fog) and kind == "begin":
                await self._on_begin(BeginRound.from_wire(opened.body))
            elif topic == topics.secagg_down(self.federation, self.fog, self.edge):
                await self._on_down(kind, opened.body)
            else:
                raise SecAggStageError(f"edge: a {kind!r} on {topic!r}")
        except HierflError as exc:
            self.rejected[exc.reason] += 1
            if self.on_reject is not None:
                self.on_reject(exc.reason)
            log.info("edge %s: secagg message on %s refused: %s: %s", self.edge, topic,
                     exc.reason, exc)

    async def _send(self, message: dict[str, Any], stage: str) -> bytes:
        assert self._round is not None
        self._round.sent.append(stage)
        payload = seal(self.signer, self.fog, message)
        await self.publish(topics.secagg_up(self.federation, self.fog, self.edge), payload)
        return payload

    async def _on_begin(self, b: BeginRound) -> None:
        if b.region != self.fog:
            raise SecAggMessageError(f"a round of region {b.region!r}, not {self.fog!r}")
        if b.round <= self._last_round:
            raise ReplayError(f"round {b.round} opened again (last {self._last_round})")
        if self.edge not in b.roster:
            raise SecAggMessageError(f"round {b.round}: the roster omits {self.edge!r}")
        if len(set(b.roster)) < self.min_roster:
            raise SecAggMessageError(
                f"round {b.round}: {len(set(b.roster))} edges, fewer than {self.min_roster}"
            )
        if self.clip_norm is not None and b.clip_norm != self.clip_norm:
            raise SecAggMessageError(
                f"round {b.round}: clip_norm {b.clip_norm}, this edge's is {self.clip_norm}"
            )
        noise = (self.integer_noise if self.integer_noise_for is None
                 else self.integer_noise_for(b))
        rnd = b.round

        def sign(message: bytes) -> bytes:
            return sign_consistency(self.signer, self.fog, rnd, message)

        def verify(edge: str, message: bytes, signature: bytes) -> bool:
            return verify_consistency(self.trust, self.federation, self.fog, rnd, edge,
                                      message, signature)

        sm = EdgeSecAgg(b.params(), self.edge, random_bytes=self.random_bytes, sign=sign,
                        verify=verify)
        self._last_round = b.round
        self._round = r = _EdgeRound(b, sm, noise=noise)
        advert = sm.advertise().to_wire()
        r.advert = (await self._send(advert, "advertise"), advert)
        if self.stop_after == "advertise":
            self._round = None

    def _verified_roster(self, body: dict[str, Any], r: _EdgeRound) -> KeyRoster:
        """The roster rebuilt from the neighbours' own signed advertisements."""
        want = {"kind", "region", "round", "recipient", "adverts"}
        adverts = body.get("adverts")
        if set(body) != want or not isinstance(adverts, list):
            raise SecAggMessageError("adverts: fields missing or unexpected")
        if (body["region"], body["round"], body["recipient"]) != (
                self.fog, r.begin.round, self.edge):
            raise SecAggMessageError("adverts for another region, round or edge")
        keys: dict[str, list[bytes]] = {}
        for raw in adverts:
            if not isinstance(raw, bytes):
                raise SecAggMessageError("adverts must be signed envelopes")
            if raw == r.advert[0]:  # our own, byte for byte
                m = parse(r.advert[1])
            else:
                m = parse(open_envelope(raw, trust=self.trust, federation=self.federation,
                                        fog=self.fog, max_bytes=4096).body)
            if not isinstance(m, AdvertiseKeys):
                raise SecAggMessageError(f"a relayed {m.kind!r} among the adverts")
            if (m.region, m.round) != (self.fog, r.begin.round) or m.sender in keys:
                raise SecAggMessageError(f"advert of {m.sender!r} is not of this round")
            keys[m.sender] = [m.c_pk, m.s_pk]
        return KeyRoster(self.fog, r.begin.round, self.edge, keys)

    async def _on_down(self, kind: str, body: dict[str, Any]) -> None:
        r = self._round
        if r is None:
            raise SecAggStageError(f"edge {self.edge}: a {kind!r} outside a round")
        if kind == "adverts":
            await self._send(r.sm.on_roster(self._verified_roster(body, r)).to_wire(), "shares")
            if self.stop_after == "shares":
                self._round = None
        elif kind == "forwarded":
            if r.sm.stage != "shared":  # before the (slow) update, not after
                raise SecAggStageError(f"edge {self.edge}: forwarded in stage {r.sm.stage!r}")
            x = self.update(r.begin)
            if inspect.isawaitable(x):
                x = await x
            out = r.sm.on_shares(body, np.asarray(x, dtype=np.float64),
                                 integer_noise=r.noise)
            await self._send(out.to_wire(), "masked")
            if self.stop_after == "masked":
                self._round = None
        elif kind == "check":
            await self._send(r.sm.on_check(body).to_wire(), "consistency")
            if self.stop_after == "consistency":
                self._round = None
        elif kind == "unmask":
            await self._send(r.sm.on_unmask(body).to_wire(), "reveal")
            self.completed.append(r.begin.round)
        else:
            raise SecAggStageError(f"edge {self.edge}: unexpected {kind!r}")
