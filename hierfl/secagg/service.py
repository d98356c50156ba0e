"""Secure aggregation inside the fog and edge services (``secagg.mode = "secure"``).

The fog (:class:`FogSecureRegion`) runs one SecAgg+ round (:mod:`hierfl.secagg.driver`) for
each fog model it publishes, on an MQTT session of its own, and hands the unmasked sum to its
round (:meth:`hierfl.fog.round.FogRound.on_secure_sum`), which closes the fog round with the
mean of the survivors' clipped updates. The round id binds the SecAgg+ round to the fog model:
``version * 2^20 + seq``.

The edge (:class:`EdgeSecureLink`) trains exactly as in robust mode, but instead of publishing
its update frame it offers the update's delta to the link; the link answers the fog's round for
the model the delta was trained on, and the delta leaves the edge only clipped, encoded and
masked. An edge follows its fog's mode: it is configured ``secure`` like its fog, and takes the
round's parameters from the fog's signed announcement, refusing one whose ``clip_norm``
differs from its own (docs/secure-aggregation.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from hierfl.errors import ConfigError
from hierfl.secagg.ddp import edge_noise_for, round_params, secure_ddp
from hierfl.secagg.driver import BeginRound, EdgeSecAggDriver, FogSecAggDriver, StageDeadlines
from hierfl.secagg.envelope import SEQ_BITS, round_id, split_round_id
from hierfl.secagg.errors import SecAggError, SecAggThresholdError
from hierfl.wire.frames import EdgeProof

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from hierfl.config import EdgeSettings, FogSettings, SecAggSettings

__all__ = ["SEQ_BITS", "EdgeSecureLink", "FogSecureRegion", "SecureSum", "codec_clip",
           "edge_secure_link", "fog_secure_region", "round_id", "split_round_id",
           "weighted_vector"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class SecureSum:
    """What a secure fog round hands to :meth:`FogRound.on_secure_sum`."""

    version: int
    seq: int
    survivors: tuple[str, ...]
    sum: npt.NDArray[np.float64]
    dropped: dict[str, str] = field(default_factory=dict)
    #: survivor -> the signed claims of its masked input (an update of (version, seq))
    proofs: dict[str, EdgeProof] = field(default_factory=dict)
    #: weighted mode: the sum of the survivors' weights (``sum`` is then of ``w x``); None:
    #: each survivor counts once
    weight: float | None = None
    #: distributed DP: the round's :class:`~hierfl.privacy.distributed.DistributedDP` (the sum
    #: carries one Skellam share per survivor; the fog's ledger accounts it); None: off
    dp_params: Any = None


def codec_clip(s: SecAggSettings) -> float:
    """The L2 bound of the vector an edge masks: ``clip_norm``, or, weighted, the bound of
    ``(w x, w)`` with ``|x| <= clip_norm`` and ``w <= max_weight``."""
    return s.max_weight * math.hypot(s.clip_norm, 1.0) if s.weighted else s.clip_norm


def weighted_vector(delta: npt.ArrayLike, weight: int,
                    s: SecAggSettings) -> npt.NDArray[np.float64]:
    """What a weighted edge masks: ``(w clip(delta), w)``, ``w`` capped at ``max_weight``.

    Raises:
        SecAggError: for a delta holding NaN or Inf.
    """
    x = np.asarray(delta, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise SecAggError("the update holds NaN or Inf")
    norm = float(np.linalg.norm(x))
    if norm > s.clip_norm:
        x = x * (s.clip_norm / norm)
    w = float(min(max(int(weight), 1), s.max_weight))
    return np.append(x * w, w)


def _deadlines(s: SecAggSettings) -> StageDeadlines:
    return StageDeadlines(s.advertise_s, s.share_s, s.masked_s, s.unmask_s)


class FogSecureRegion:
    """The fog's secure rounds: one per fog model published, on an MQTT session of its own.

    Args:
        settings: the fog's settings (``secagg.mode = "secure"``).
        security: the fog's :class:`~hierfl.security.tier.TierSecurity` (signatures required).
        submit: awaited with each :class:`SecureSum` (the service queues it for its round).
        on_reject: called with the reason of each refused message and refused round.

    Raises:
        ConfigError: if signatures are off (the key advertisements must be signed).
    """

    def __init__(self, settings: FogSettings, security: Any,
                 submit: Callable[[SecureSum], Awaitable[None]],
                 on_reject: Callable[[str], None] | None = None) -> None:
        if security.signer is None or security.trust is None:
            raise ConfigError(f"fog {settings.fog_id}: secagg.mode = 'secure' needs signatures")
        self.settings, self.security, self.submit = settings, security, submit
        self.on_reject = on_reject
        self._wanted: asyncio.Queue[tuple[int, int, int]] = asyncio.Queue()
        self.driver: FogSecAggDriver | None = None

    def model_published(self, version: int, seq: int, dim: int) -> None:
        """A fog round opened on model ``(version, seq)``: run its secure round."""
        self._wanted.put_nowait((version, seq, dim))

    def roster(self) -> tuple[str, ...]:
        """The region's edges: the trust bundle's (revoked excluded), within allowed_edges."""
        edges = set(self.security.trust.edges_of(self.settings.fog_id))
        if self.settings.allowed_edges:
            edges &= set(self.settings.allowed_edges)
        return tuple(sorted(edges))

    async def run(self, transports: Any) -> None:
        """Connect, then run each wanted round (a newer model cancels the round in flight)."""
        s = self.settings
        sec = s.secagg
        async with transports.mqtt(
            s.mqtt, client_id=f"hierfl-fog-{s.federation}-{s.fog_id}-secagg",
            max_frame_bytes=s.limits.max_frame_bytes,
        ) as mqtt:
            async def publish(topic: str, payload: bytes) -> None:
                await mqtt.publish(topic, payload)

            driver = self.driver = FogSecAggDriver(
                federation=s.federation, fog=s.fog_id, signer=self.security.signer,
                trust=self.security.trust, publish=publish, clip_norm=codec_clip(sec),
                scale=sec.scale, degree=sec.degree, threshold=sec.threshold,
                deadlines=_deadlines(sec), max_bytes=s.limits.max_frame_bytes,
                on_reject=self.on_reject,
            )
            for f in driver.filters():
                await mqtt.subscribe(f)

            async def pump() -> None:
                async for m in mqtt.messages():
                    driver.handle(m.topic, m.payload)

            async with asyncio.TaskGroup() as tg:
                tg.create_task(pump(), name=f"fog[{s.fog_id}].secagg-in")
                current: asyncio.Task[None] | None = None
                while True:
                    version, seq, dim = await self._wanted.get()
                    while not self._wanted.empty():  # only the newest model matters
                        version, seq, dim = self._wanted.get_nowait()
                    if current is not None and not current.done():
                        current.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await current
                    current = tg.create_task(self._one(driver, version, seq, dim))

    async def _one(self, driver: FogSecAggDriver, version: int, seq: int, dim: int) -> None:
        """The fog model's secure round; one refused below the threshold (edges not yet
        connected, too many dropouts) is tried again under a new round id until it succeeds
        or a newer model cancels it (at most one attempt per ``advertise_s``)."""
        weighted = self.settings.secagg.weighted
        attempt = 0
        dp_params = None
        while True:
            try:
                roster = self.roster()
                scale = None
                if secure_ddp(self.settings.privacy, self.settings.secagg):
                    # distributed DP: the scale sized for this roster's noise (edges check it)
                    dp_params = round_params(self.settings.privacy, roster_size=len(roster),
                                             dim=dim)
                    scale = dp_params.scale
                result = await driver.run_round(round_id(version, seq, attempt), roster,
                                                dim + 1 if weighted else dim, scale)
                break
            except (SecAggError, ConfigError) as exc:
                if self.on_reject is not None:
                    self.on_reject(exc.reason)
                retry = isinstance(exc, SecAggThresholdError) and attempt < 255
                log.log(logging.WARNING if retry else logging.ERROR,
                        "fog %s: secure round of (v%d, seq %d) refused: %s%s",
                        self.settings.fog_id, version, seq, exc,
                        "; trying again" if retry else "")
                if not retry:
                    return
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # a cancellation that a finishing wait_for swallowed (seen at shutdown:
                    # the round retried forever and the fog never stopped)
                    raise asyncio.CancelledError from None
                attempt += 1
                await asyncio.sleep(0.5)
        proofs = {e: EdgeProof(e, version, seq, *driver.proofs[e])
                  for e in result.survivors if e in driver.proofs}
        total, weight = result.sum, None
        if weighted:
            total, weight = result.sum[:-1], float(result.sum[-1])
        await self.submit(SecureSum(version, seq, result.survivors, total,
                                    dict(result.dropped), proofs, weight, dp_params))


class EdgeSecureLink:
    """The edge's secure rounds, on the edge's own MQTT connection.

    Args:
        settings: the edge's settings (``secagg.mode = "secure"``).
        security: the edge's :class:`~hierfl.security.tier.TierSecurity`.
        on_reject: called with the reason of each refused message.
        integer_noise: distributed DP's hook (see :class:`EdgeSecAggDriver`).
        integer_noise_for: distributed DP's per-round hook factory (see
            :class:`EdgeSecAggDriver`; :func:`hierfl.secagg.ddp.edge_noise_for`).

    Raises:
        ConfigError: if signatures are off.
    """

    def __init__(self, settings: EdgeSettings, security: Any,
                 on_reject: Callable[[str], None] | None = None,
                 integer_noise: Any = None, integer_noise_for: Any = None) -> None:
        if security.signer is None or security.trust is None:
            raise ConfigError(f"edge {settings.edge_id}: secagg.mode = 'secure' needs "
                              "signatures")
        self.settings = settings
        self._deltas: dict[tuple[int, int], npt.NDArray[np.float64]] = {}
        self._offered = asyncio.Event()
        self._offers, self._warned = 0, False
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._publish: Callable[[str, bytes], Awaitable[None]] | None = None

        async def publish(topic: str, payload: bytes) -> None:
            if self._publish is None:
                raise SecAggError("not connected")
            await self._publish(topic, payload)

        self.driver = EdgeSecAggDriver(
            federation=settings.federation, fog=settings.fog_id, edge=settings.edge_id,
            signer=security.signer, trust=security.trust, publish=publish,
            update=self._update, clip_norm=codec_clip(settings.secagg),
            min_roster=settings.secagg.min_roster, integer_noise=integer_noise,
            integer_noise_for=integer_noise_for,
            max_bytes=settings.limits.max_frame_bytes, on_reject=on_reject,
        )
        self._topics = frozenset(self.driver.filters())

    async def attach(self, mqtt: Any) -> None:
        """Subscribe the round's topics on a (new) connection."""
        async def publish(topic: str, payload: bytes) -> None:
            await mqtt.publish(topic, payload)

        self._publish = publish
        for f in self._topics:
            await mqtt.subscribe(f)

    def take(self, topic: str, payload: bytes) -> bool:
        """Queue ``payload`` if it came on a secagg topic (True), else leave it (False)."""
        if topic not in self._topics:
            return False
        self._inbox.put_nowait((topic, payload))
        return True

    async def serve(self) -> None:
        """Answer queued messages in order (one round's steps never interleave)."""
        while True:
            topic, payload = await self._inbox.get()
            await self.driver.handle(topic, payload)

    def offer(self, version: int, seq: int, delta: npt.NDArray[np.float32],
              num_samples: int = 1) -> None:
        """The update trained on fog model ``(version, seq)`` on ``num_samples`` samples: it
        leaves only masked (weighted mode: as ``(w x, w)``). An update holding NaN or Inf is
        refused (counted): the edge then drops out of that round.
        """
        sec = self.settings.secagg
        try:
            vec = (weighted_vector(delta, num_samples, sec) if sec.weighted
                   else np.asarray(delta, dtype=np.float64))
        except SecAggError as exc:  # never crash the training loop: this round goes without it
            self.driver.rejected[exc.reason] += 1
            log.warning("edge %s: update of (v%d, seq %d) not offered: %s",
                        self.settings.edge_id, version, seq, exc)
            return
        self._deltas[(version, seq & ((1 << SEQ_BITS) - 1))] = vec
        self._offers += 1
        if self._offers == 3 and not self.driver.completed and not self._warned:
            self._warned = True  # a robust fog never opens a round: say so, once
            log.warning("edge %s: secagg.mode = 'secure', but fog %s has not completed a "
                        "secure round for any of the 3 updates trained so far: its updates "
                        "leave only masked, so check that the fog is secure too "
                        "(docs/secure-aggregation.md)", self.settings.edge_id,
                        self.settings.fog_id)
        while len(self._deltas) > 4:
            del self._deltas[next(iter(self._deltas))]
        self._offered.set()

    async def _update(self, begin: BeginRound) -> npt.NDArray[np.float64]:
        key = split_round_id(begin.round)
        timeout = self.settings.secagg.masked_s
        try:
            async with asyncio.timeout(timeout):
                while key not in self._deltas:
                    self._offered.clear()
                    await self._offered.wait()
        except TimeoutError:
            raise SecAggError(f"no update trained on (v{key[0]}, seq {key[1]}) within "
                              f"{timeout} s: this edge drops out of the round") from None
        return self._deltas[key]


def fog_secure_region(settings: FogSettings, security: Any,
                      submit: Callable[[SecureSum], Awaitable[None]],
                      on_reject: Callable[[str], None] | None = None) -> FogSecureRegion | None:
    """The fog's secure rounds, or None in robust mode."""
    if settings.secagg.mode != "secure":
        return None
    return FogSecureRegion(settings, security, submit, on_reject)


def edge_secure_link(settings: EdgeSettings, security: Any,
                     on_reject: Callable[[str], None] | None = None) -> EdgeSecureLink | None:
    """The edge's secure rounds, or None in robust mode (with distributed DP, each round's
    masked input carries the edge's Skellam share: hierfl/secagg/ddp.py)."""
    if settings.secagg.mode != "secure":
        return None
    noise_for = (edge_noise_for(settings.privacy)
                 if secure_ddp(settings.privacy, settings.secagg) else None)
    return EdgeSecureLink(settings, security, on_reject, integer_noise_for=noise_for)
