"""FogService: binds the pure :class:`~hierfl.fog.round.FogRound` to MQTT and Kafka.

Tasks (one TaskGroup, named ``fog[<id>].<task>``):

- ``mqtt``: persistent-session MQTT connection; update frames from this fog's edges are
  decoded off the event loop and queued for the core.
- ``models``: Kafka consumer of the global models topic (newest complete frame first).
- ``core``: feeds events to the state machine in order, fires round deadlines, and
  carries out its actions (publish the fog model retained, forward aggregates to Kafka).

The model fan-out to the edges (:class:`~hierfl.wire.downlink.Downlink`): every fog model is
published in full, retained, on the model topic, and as a delta against the previous one
(``downlink_delta``, encoded with ``model_codec``; else in full again) on the delta topic.

Bad input never stops the service: every rejected frame is counted by its error's
``reason``. Aggregates waiting to be forwarded survive broker outages (outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hierfl import topics
from hierfl.aggregation import make_aggregator
from hierfl.config import FogSettings
from hierfl.errors import HierflError, StoreError, TransportError, UnknownSenderError
from hierfl.fog.buffered import buffer_policy
from hierfl.fog.round import (
    Admit,
    FogRound,
    FogRoundConfig,
    FogState,
    Forward,
    PrivacyStop,
    PublishModel,
    RoundClosed,
    RoundSkipped,
)
from hierfl.fog.spool import Spool
from hierfl.fog.spool_commit import BURST_MAX, Burst, check_burst, take_burst
from hierfl.health import monitoring
from hierfl.metrics import ServiceMetrics
from hierfl.offload import Steps, offload
from hierfl.ratelimit import REJECT_LOG_INTERVAL_S, LogThrottle, suppressed_note
from hierfl.secagg.service import fog_secure_region
from hierfl.security.tier import tier_security
from hierfl.security.trust import fog_party
from hierfl.timeline import Timeline
from hierfl.transport.base import FrameConsumer, FrameProducer, MqttLink
from hierfl.transport.factory import BrokerTransports, Transports
from hierfl.transport.reconnect import Link, reconnect_loop
from hierfl.wire.codec import decode_frame, encode_frame
from hierfl.wire.downlink import Downlink, DownlinkMessages
from hierfl.wire.frames import (
    MAX_AGGREGATE_TIMING,
    AggregateFrame,
    ModelFrame,
    TimingSpan,
    UpdateFrame,
)
from hierfl.wire.signing import SigBlock, edge_proof

__all__ = ["FogService"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str  # "update" | "model"
    frame: Any
    size: int
    raw: bytes = b""
    sig: SigBlock | None = None
    arrived: float = 0.0  # wall clock, for the round's timeline


class FogService:
    """A fog aggregator process.

    Args:
        settings: the fog's settings.
        clock: time source (seconds), injectable for tests.
        transports: opens the broker links (default: the real brokers of ``settings``;
            :class:`~hierfl.transport.factory.MemoryTransports` for the simulator).

    Usage::

        service = FogService(FogSettings.load("fog.toml"))
        await service.run()          # until cancelled or service.stop()
    """

    def __init__(self, settings: FogSettings, *, clock: Any = time.monotonic,
                 transports: Transports | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.transports: Transports = transports or BrokerTransports()
        s = settings
        self.metrics = ServiceMetrics("fog", s.fog_id)
        self.security = tier_security(s.security, federation=s.federation,
                                      party_id=fog_party(s.fog_id), tier=f"fog {s.fog_id}",
                                      autosave=False,  # saved as accepted updates come
                                      deferred=frozenset({"update"}))  # counted once kept
        self.round = FogRound(
            FogRoundConfig(
                federation=s.federation,
                fog_id=s.fog_id,
                min_updates=s.min_updates,
                quorum=s.quorum,
                k2=s.k2,
                round_timeout_s=s.round_timeout_s,
                max_samples=s.max_samples,
                max_norm=s.max_norm,
                adaptive_norm_multiplier=s.adaptive_norm_multiplier,
                max_staleness=s.max_staleness,
                allowed_edges=frozenset(s.allowed_edges),
                resend_after_s=s.resend_after_s,
                early_limit=s.mqtt.queue_size,
                buffer=buffer_policy(s.aggregation, s.buffer_size, s.staleness_exponent,
                                     s.max_staleness),
                secure=s.secagg.mode == "secure",
                personalise_alpha=s.personalise_alpha,
            ),
            _fog_rule(s),
            privacy=_region_privacy(s),
        )
        if self.round.privacy is not None:
            p = s.privacy
            log.info("fog %s: differential privacy %s: sigma %g, C %g, q %g, delta %g, target "
                     "epsilon %s; %d releases so far (epsilon %.4g)", s.fog_id, p.mode,
                     p.noise_multiplier, p.clip_norm, p.sample_rate, p.delta, p.target_epsilon,
                     self.round.privacy.ledger.releases, self.round.privacy.ledger.epsilon())
        self._events: asyncio.Queue[_Event] = asyncio.Queue(maxsize=s.mqtt.queue_size)
        # events taken off the queue but not yet handled (the rest of a spool burst; updates
        # that came before the model): handled before the queue, in order
        self._backlog: deque[_Event] = deque()
        self._replay_dirty = False  # accepted updates' replay counters not yet on disk
        self._replay_saved_at = 0.0
        # accepted / rejected per base version, for monitors that attribute counts to rounds
        self._by_version: dict[int, dict[str, Any]] = {}
        # A provisioned fog (security.state_dir) spools by default: accepted updates survive
        # kill -9 (docs/configuration.md, spool_dir).
        spool_dir = s.spool_dir
        if spool_dir is None and s.security.enabled and s.security.state_dir is not None:
            spool_dir = s.security.state_dir / "spool"
        self._spool = Spool(spool_dir) if spool_dir is not None else None
        if self._spool is None:
            log.warning("fog %s: no spool_dir: updates accepted but not yet forwarded are lost "
                        "if this process is killed (edges re-send theirs when the fog comes "
                        "back at the same round; set spool_dir to keep them)", s.fog_id)
        self._replayed = False
        self._to_publish: ModelFrame | None = None
        self._downlink = Downlink(codec=_codec(s.model_codec), delta=s.downlink_delta,
                                  max_params=s.limits.max_params, signer=self.security.signer)
        self._prepared: DownlinkMessages | None = None
        self._resume: ModelFrame | None = None
        self._stats_at = float("-inf")
        self._mqtt: MqttLink | None = None
        self._producer: FrameProducer | None = None
        self._models: FrameConsumer | None = None  # the global models' consumer, connected
        self._model_due: bool | None = None  # what it was last told (FrameConsumer.expect)
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        # the last aggregates forwarded (bounded: each holds a model-sized delta)
        self.forwarded: deque[AggregateFrame] = deque(maxlen=8)
        self._encoded: tuple[AggregateFrame, bytes] | None = None  # the last one, as sent
        self._stored: AggregateFrame | None = None  # the aggregate in the spool
        self._model_stored: Any = None  # the downlink messages whose model is in the spool
        # the model a PublishModel named, and the updates folded in it
        self._folded: tuple[ModelFrame | None, frozenset[tuple[str, int]]] = (None, frozenset())
        self._steps = Steps()  # round steps a reconnect cannot cut in half
        # secagg.mode = "secure": one SecAgg+ round per fog model (hierfl/secagg/service.py)
        self.secagg = fog_secure_region(
            s, self.security, lambda r: self._events.put(_Event("secure", r, 0)),
            self.metrics.reject)
        # this fog's spans and its edges' per global version (hierfl.timeline), sent up with
        # each aggregate
        self.timeline = Timeline(s.fog_id, keep=4, observer=self.metrics.on_span)
        self.metrics.gauge_fn("model_version", lambda: self.round.version)
        self.metrics.gauge_fn("round_number", lambda: self.round.seq)
        if self._spool is not None:
            spool = self._spool
            # read-only count from the file names (a .tmp file is a write in flight)
            self.metrics.gauge_fn("spool_depth", spool.depth)

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stop.set()

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop` or cancellation, reconnecting with jittered backoff.

        Raises:
            BrokerRefusedError: on a fatal broker error (credentials, certificate, missing
                topic) or a broker unreachable for ``connect_attempts`` tries.
        """
        s = self.settings
        fed = s.federation

        async def connected() -> None:
            # With create_topics = false this checks the topics exist (a missing one is fatal).
            await self.transports.ensure_topics(s.kafka,
                                                [topics.aggregates(fed), topics.models(fed)])
            await self._run_connected()

        async with monitoring(self):  # metrics_port: /metrics, /healthz, /readyz
            await reconnect_loop(
                f"fog {s.fog_id}", connected,
                links=[Link("mqtt", s.mqtt.url, s.mqtt.connect_attempts),
                       Link("kafka", s.kafka.bootstrap, s.kafka.connect_attempts)],
                ready=self.ready, stop=self._stop, base_s=s.mqtt.reconnect_base_s,
                max_s=s.mqtt.reconnect_max_s, on_retry=lambda: self.metrics.inc("reconnects"),
            )

    async def _run_connected(self) -> None:
        s = self.settings
        fed, fog = s.federation, s.fog_id
        if self.round.version is None:
            resume = self._newer(self._stored_model(), await self._probe_retained_model())
            if (resume is not None and resume.scope == "fog" and resume.fog_id == fog
                    and self._downlink.held is None):
                self._downlink.seed(resume)  # exactly what the up-to-date edges hold
        else:
            resume = None
        will = (topics.status(fed, fog, fog), b"offline")
        async with (
            self.transports.mqtt(s.mqtt, client_id=f"hierfl-fog-{fed}-{fog}",
                                 clean_session=False, will=will,
                                 max_frame_bytes=s.limits.max_frame_bytes,
                                 on_reject=self._reject) as mqtt,
            self.transports.producer(s.kafka, client_id=f"hierfl-fog-{fog}") as producer,
            self.transports.consumer(
                s.kafka, topics.models(fed), client_id=f"hierfl-fog-{fog}-models",
                start="latest_frame", max_frame_bytes=s.limits.max_frame_bytes,
            ) as models,
            contextlib.AsyncExitStack() as update_links,
        ):
            self._mqtt, self._producer, self._models = mqtt, producer, models
            self._model_due = None
            self._pace_models()
            await self._subscribe_updates(mqtt, update_links)
            await mqtt.publish(topics.status(fed, fog, fog), b"online", retain=True)
            self._resume = resume
            self.ready.set()
            if self._to_publish is None and self._downlink.held is not None:
                # A broker restarted without persistence has lost the retained model: publish
                # it again on every (re)connection (edges ignore a model they hold).
                self._to_publish = self._downlink.held
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._ingest_mqtt(mqtt), name=f"fog[{fog}].mqtt")
                    tg.create_task(self._ingest_models(models), name=f"fog[{fog}].models")
                    tg.create_task(self._core(), name=f"fog[{fog}].core")
                    if self.secagg is not None:
                        tg.create_task(self.secagg.run(self.transports), name=f"fog[{fog}].secagg")
                    if s.privacy.mode in ("record", "untrusted_fog"):
                        tg.create_task(self._watch_budgets(), name=f"fog[{fog}].budgets")
                    stopper = tg.create_task(self._stop.wait(), name=f"fog[{fog}].stop")
                    await stopper
                    raise _Stopped
            except* _Stopped:
                pass
            finally:
                self._mqtt = self._producer = self._models = None
                with contextlib.suppress(TransportError):
                    await asyncio.wait_for(
                        mqtt.publish(topics.status(fed, fog, fog), b"offline", retain=True), 2
                    )

    def _pace_models(self) -> None:
        """Tell the models consumer whether a global model is due: before the first one, and
        from the moment the fog has an aggregate to forward until the next model arrives
        (``kafka.fetch_wait_due_ms``: on a broker that answers a fetch only when its wait
        runs out, fast polls then, idle ones while the edges train)."""
        r = self.round
        due = r.version is None or r.state is FogState.FORWARDED or r.unsent is not None
        if self._models is not None and due != self._model_due:
            self._models.expect(due)
            self._model_due = due

    def _stored_model(self) -> ModelFrame | None:
        """The fog model this fog wrote to its spool before it last published one."""
        data = self._spool.model() if self._spool is not None else None
        if data is None:
            return None
        try:
            frame = decode_frame(data, limits=self.settings.limits.decode_limits())
        except HierflError as exc:
            log.warning("fog %s: ignoring an unreadable stored fog model: %s",
                        self.settings.fog_id, exc)
            return None
        return frame if isinstance(frame, ModelFrame) else None

    @staticmethod
    def _newer(a: ModelFrame | None, b: ModelFrame | None) -> ModelFrame | None:
        """Of two fog models, the later one (the stored one on a tie: it is written first)."""
        if a is None or b is None:
            return a or b
        return a if (a.version, a.seq) >= (b.version, b.seq) else b

    async def _probe_retained_model(self) -> ModelFrame | None:
        """Read this fog's last published (retained) model, to resume after a restart."""
        s = self.settings
        fed, fog = s.federation, s.fog_id
        async with self.transports.mqtt(s.mqtt, client_id=f"hierfl-fog-{fed}-{fog}-probe",
                                        max_frame_bytes=s.limits.max_frame_bytes) as probe:
            await probe.subscribe(topics.model(fed, fog))
            try:
                async with asyncio.timeout(s.resume_wait_s):
                    async for inbound in probe.messages():
                        try:
                            frame = (await offload(
                                self.security.decode, inbound.payload,
                                limits=s.limits.decode_limits(), replay=False,
                            )).frame
                        except HierflError as exc:
                            self._reject(exc, "retained fog model")
                            return None
                        return frame if isinstance(frame, ModelFrame) else None
            except TimeoutError:
                return None
        return None

    # --- ingest -------------------------------------------------------------------------

    async def _subscribe_updates(self, mqtt: MqttLink,
                                 links: contextlib.AsyncExitStack) -> None:
        """Subscribe to the edges' update topics, before the fog says it is ready.

        A fog that knows its edges (trust bundle, or ``allowed_edges``) subscribes to each
        one's own update topic, spread over ``ingest_connections`` connections (bucket 0 is
        ``mqtt``; bucket ``i`` has the stable client id ``...-in<i>``), so the broker never
        delivers what anyone else publishes and a flooding edge fills only its bucket's
        socket. Without an edge list, the wildcard filter (any sender may be an edge).
        """
        s = self.settings
        fed, fog = s.federation, s.fog_id
        known = self._known_edges()
        if known is None:
            await mqtt.subscribe(topics.update_filter(fed, fog))
            self._updates = _UpdateLinks([mqtt], None)
            return
        buckets = [mqtt]
        buckets += [await links.enter_async_context(self.transports.mqtt(
            s.mqtt, client_id=f"hierfl-fog-{fed}-{fog}-in{i}", clean_session=False,
            max_frame_bytes=s.limits.max_frame_bytes, on_reject=self._reject))
            for i in range(1, s.ingest_connections)]
        updates = self._updates = _UpdateLinks(buckets, set())
        # A persistent session keeps the subscriptions of an earlier run: the wildcard (an
        # older version, or no edge list then), and edges that now hash to another bucket.
        wildcard = topics.update_filter(fed, fog)
        drop = [(link, wildcard) for link in buckets]
        drop += [(link, topics.update(fed, fog, e)) for e in sorted(known)
                 for i, link in enumerate(buckets) if i != updates.bucket(e)]
        await _in_batches([functools.partial(link.unsubscribe, f) for link, f in drop])
        await self._sync_updates(updates, known)

    async def _sync_updates(self, updates: _UpdateLinks, known: frozenset[str]) -> None:
        """Subscribe the known edges not quarantined; unsubscribe the others."""
        subscribed = updates.subscribed
        if subscribed is None:
            return
        s = self.settings
        breaker = self._flood_breaker()
        now = _now()
        want = {e for e in known if not breaker.quarantined(e, now)}

        def topic(edge: str) -> str:
            return topics.update(s.federation, s.fog_id, edge)

        add, remove = sorted(want - subscribed), sorted(subscribed - want)
        await _in_batches([functools.partial(updates.link(e).subscribe, topic(e)) for e in add])
        subscribed.update(add)
        await _in_batches([functools.partial(updates.link(e).unsubscribe, topic(e))
                           for e in remove])
        subscribed.difference_update(remove)

    def _flood_breaker(self) -> _Breaker:
        breaker: _Breaker | None = getattr(self, "_breaker", None)
        if breaker is None:
            s = self.settings
            breaker = self._breaker = _Breaker(s.flood_refusals, s.flood_window_s,
                                               s.flood_quarantine_s, s.flood_quarantine_max_s)
        return breaker

    async def _ingest_mqtt(self, mqtt: MqttLink) -> None:
        """Take messages off the clients as fast as they come, into one bounded lane per known
        edge (and one shared lane for every other sender), and judge them round-robin across
        lanes: a sender that floods fills, and loses, only its own lane, so the MQTT client's
        queue never overflows onto honest updates (it discarded them before). A sender with
        too many hard refusals is quarantined (:class:`_Breaker`): its topic is unsubscribed
        and what still arrives from it is dropped unread, until its quarantine ends."""
        updates: _UpdateLinks = getattr(self, "_updates", None) or _UpdateLinks([mqtt], None)
        lanes = _Lanes(self._known_edges)
        wake = asyncio.Event()
        fog = self.settings.fog_id
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._judge_lanes(lanes, wake), name=f"fog[{fog}].judge")
            tg.create_task(self._watch_updates(updates, wake), name=f"fog[{fog}].subscriptions")
            for i, link in enumerate(updates.links):
                tg.create_task(self._read_updates(link, lanes, wake), name=f"fog[{fog}].in{i}")

    async def _read_updates(self, link: MqttLink, lanes: _Lanes, wake: asyncio.Event) -> None:
        breaker = self._flood_breaker()
        async for inbound in link.messages():
            self.metrics.inc("received")
            self.metrics.inc("bytes_in", len(inbound.payload))
            sender = inbound.topic.rsplit("/", 1)[-1]
            if breaker.quarantined(sender, _now()):
                self.metrics.reject("flood.quarantined")  # in flight before the unsubscribe
                continue
            if not lanes.put(_Arrived(inbound.topic, inbound.payload, time.time())):
                self.metrics.reject("flood.lane_full")
                if lanes.has_own_lane(sender):  # it outpaces the judge: a hard refusal
                    self._strike(sender, "flood.lane_full", wake)

    def _strike(self, sender: str, reason: str, wake: asyncio.Event) -> None:
        """Count a hard refusal of ``sender``; quarantine it when over its budget."""
        s = self.settings
        backoff = self._flood_breaker().strike(sender, _now())
        if backoff is None:
            return
        self.metrics.inc("quarantines")
        wake.set()  # the subscriptions task unsubscribes it
        throttle: LogThrottle | None = getattr(self, "_quarantine_log", None)
        if throttle is None:
            throttle = self._quarantine_log = LogThrottle(REJECT_LOG_INTERVAL_S)
        suppressed = throttle.admit("quarantine")
        if suppressed is None:
            return
        how = ("its update topic is unsubscribed" if self._updates_known()
               else "what it sends is dropped unread (wildcard subscription: no edge list)")
        log.warning("fog %s: quarantined sender %r for %.0f s: more than %d hard refusals "
                    "within %.0f s (last: %s); %s%s", s.fog_id, sender, backoff,
                    s.flood_refusals, s.flood_window_s, reason, how,
                    suppressed_note(suppressed, "quarantines"))

    def _updates_known(self) -> bool:
        updates: _UpdateLinks | None = getattr(self, "_updates", None)
        return updates is not None and updates.subscribed is not None

    async def _watch_updates(self, updates: _UpdateLinks, wake: asyncio.Event) -> None:
        """Keep the per-edge subscriptions in step with the trust bundle (re-read at most once
        a second) and with quarantines (unsubscribe at once; subscribe again at the end)."""
        breaker = self._flood_breaker()
        while True:
            # the trust bundle is re-read once a second; without an edge list, no polling
            timeout = 1.0 if updates.subscribed is not None else None
            release = breaker.next_release()
            if release is not None:
                wait = max(0.0, release - _now())
                timeout = wait if timeout is None else min(timeout, wait)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await wake.wait()
            wake.clear()
            for sender in breaker.released(_now()):
                log.info("fog %s: quarantine of sender %r ended", self.settings.fog_id, sender)
            if updates.subscribed is not None:
                await self._sync_updates(updates, self._known_edges() or frozenset())

    def _known_edges(self) -> frozenset[str] | None:
        """Edges that get a lane (and a subscription) of their own: this fog's edges in the
        trust bundle (or the allow-list); None when any sender id may be an edge (signatures
        off, no allow-list)."""
        trust = self.security.trust
        if trust is not None:
            return trust.edges_of(self.settings.fog_id)
        if self.settings.allowed_edges:
            return frozenset(self.settings.allowed_edges)
        return None

    async def _judge_lanes(self, lanes: _Lanes, wake: asyncio.Event) -> None:
        base_limits = self.settings.limits.decode_limits()
        while True:
            inbound = await lanes.get()
            sender = inbound.topic.rsplit("/", 1)[-1]
            if self._flood_breaker().quarantined(sender, _now()):
                self.metrics.reject("flood.quarantined")  # queued before its quarantine
                continue
            try:
                parsed = topics.parse_mqtt(inbound.topic)
                if parsed.kind != "update":
                    continue
                # An update must fit the model held: its declared size is checked before
                # anything is allocated (before the first model, max_params bounds it).
                limits = dataclasses.replace(base_limits, expected_params=self.round.model_size)
                # signed: the signature is verified before anything is decompressed
                started = time.time()
                verified = await offload(self.security.decode, inbound.payload,
                                                   limits=limits)
                frame = verified.frame
                decoded = time.time()
                if not isinstance(frame, UpdateFrame):
                    raise UnknownSenderError(f"a {type(frame).__name__} on an update topic")
                if frame.edge_id != parsed.client or frame.fog_id != parsed.fog:
                    raise UnknownSenderError(
                        f"frame from edge {frame.fog_id}/{frame.edge_id} on the topic of "
                        f"{parsed.fog}/{parsed.client}"
                    )
            except HierflError as exc:
                self._reject(exc, inbound.topic)
                if _hard_refusal(exc.reason):
                    self._strike(sender, exc.reason, wake)
                continue
            if isinstance(frame, UpdateFrame):
                edge, v = frame.edge_id, frame.base_version
                self.timeline.add("fog.update_in", v, inbound.arrived, party=edge)
                self.timeline.add("fog.decode", v, started, decoded, party=edge)
            await self._events.put(_Event("update", frame, len(inbound.payload), inbound.payload,
                                          verified.sig))

    async def _ingest_models(self, models: FrameConsumer) -> None:
        limits = self.settings.limits.decode_limits()
        async for inbound in models.messages():
            arrived = time.time()
            if inbound.error is not None or not inbound.payload:
                self._reject(inbound.error or HierflError("empty"), "kafka:models")
                continue
            try:
                frame = (await offload(self.security.decode, inbound.payload,
                                                 limits=limits)).frame
            except HierflError as exc:
                self._reject(exc, "kafka:models")
                continue
            if isinstance(frame, ModelFrame) and frame.scope == "global":
                self.timeline.add("fog.model_in", frame.version, arrived, time.time())
                self.metrics.inc("models_received")
                self.metrics.inc("bytes_down", len(inbound.payload))
                await self._events.put(_Event("model", frame, len(inbound.payload)))

    def _count_for_version(self, what: str, reason: str | None = None) -> None:
        v = self.round.version
        if v is None:
            return
        rec = self._by_version.setdefault(v, {"accepted": 0, "rejected": {}})
        if reason is None:
            rec[what] += 1
        else:
            rec["rejected"][reason] = rec["rejected"].get(reason, 0) + 1
        while len(self._by_version) > 16:  # bounded: only recent versions matter
            del self._by_version[min(self._by_version)]

    def _reject(self, exc: HierflError, where: str) -> None:
        self.metrics.reject(exc.reason)  # exact; the log below is not
        self._count_for_version("rejected", exc.reason)
        # At most one line per reason per interval: a flood of junk must not become a flood
        # of log lines (10,000 junk frames once cost 22 s, logged one line each).
        throttle: LogThrottle | None = getattr(self, "_reject_log", None)
        if throttle is None:
            throttle = self._reject_log = LogThrottle(REJECT_LOG_INTERVAL_S)
        suppressed = throttle.admit(exc.reason)
        if suppressed is None:
            return
        log.info("fog %s: rejected input from %s: %s: %s%s", self.settings.fog_id, where,
                 exc.reason, exc, suppressed_note(suppressed, exc.reason))

    # --- core ---------------------------------------------------------------------------

    async def _core(self) -> None:
        # a step of the last connection that completed after it failed: carry out its actions
        for actions in await self._steps.settle():
            await self._apply(actions)
        await self._flush()
        while True:
            deadline = self.round.deadline  # the round's, or the resend timer's
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            try:
                if self._backlog:
                    event = self._backlog.popleft()
                else:
                    async with asyncio.timeout(timeout):
                        event = await self._events.get()
            except TimeoutError:
                # a deadline may close the round, and aggregation runs off the event loop
                version, started = self.round.version, time.time()
                actions = await self._steps.run(offload(self.round.on_tick, self.clock()))
                if any(isinstance(a, RoundClosed) for a in actions):
                    self.timeline.add("fog.aggregate", version, started, time.time())
                await self._apply(actions)
                continue
            if event.kind == "model":
                await self._on_model(event.frame)
            elif event.kind == "spent":  # record-level DP: the region's spent edges changed
                await self._apply(await self._steps.run(offload(
                    self.round.on_edges_spent, *event.frame, self.clock())))
            elif event.kind == "secure":  # the unmasked sum of a secure round
                actions = await self._steps.run(
                    offload(self.round.on_secure_sum, event.frame, self.clock()))
                if actions:  # its survivors' masked updates were accepted
                    for _ in event.frame.survivors:
                        self.metrics.inc("accepted")
                        self._count_for_version("accepted")
                await self._apply(actions)
            elif self._spool is not None and event.raw:
                await self._on_burst(self._burst(event))  # group commit: one fsync a burst
                if (self._events.empty() and not self._backlog
                        and time.monotonic() - self._replay_saved_at >= 1.0):
                    await self._save_replay()
            else:
                await self._on_update(event.frame, event.raw, event.sig)
                if self._events.empty() and time.monotonic() - self._replay_saved_at >= 1.0:
                    await self._save_replay()

    async def _on_model(self, frame: ModelFrame) -> None:
        opt = self.round.server_opt
        if self.settings.server_opt.name != "none" and (opt is None
                                                         or opt.size != frame.weights.size):
            self.round.server_opt = _region_optimizer(self.settings, frame.weights.size)
        resume, self._resume = self._resume, None
        now = self.clock()
        if resume is not None and self.round.version is None:
            stored = self._stored_aggregate(frame.version)
            folded = (self._spool.model_folded(resume.version, resume.seq)
                      if self._spool is not None else frozenset())
            actions = self.round.resume(frame, resume, now,
                                        forwarded=stored[0] if stored else None, folded=folded)
            log.info("fog %s: resumed v%s seq %s", self.settings.fog_id, self.round.version,
                     self.round.seq)
            if stored is not None and self.round.state is FogState.FORWARDED:
                # Killed after closing its cloud round: the round sends the same aggregate
                # again (the cloud refuses a copy it holds): these very bytes, on disk.
                log.info("fog %s: the aggregate for v%s was closed before the restart; "
                         "sending it again", self.settings.fog_id, frame.version)
                self._encoded = stored
                self._stored = stored[0]
        else:
            actions = self.round.on_global_model(frame, now)
        # updates that came before the model: judged after what the spool brings back
        early = [a for a in actions if isinstance(a, Admit)]
        await self._apply([a for a in actions if not isinstance(a, Admit)])
        if self._spool is not None and not self._replayed:
            self._replayed = True
            await self._replay_spool()
        # next, before the queue, in order (a spooling fog writes them as one burst)
        self._backlog.extendleft(reversed([_Event("update", a.frame, len(a.handle[0]), *a.handle)
                                           for a in early]))

    def _stored_aggregate(self, version: int | None) -> tuple[AggregateFrame, bytes] | None:
        """The aggregate for ``version`` this fog wrote to its spool before sending it."""
        stored = self._spool.forwarded() if self._spool is not None else None
        if stored is None or stored[0] != version:
            return None
        try:
            frame = decode_frame(stored[1], limits=self.settings.limits.decode_limits())
        except HierflError as exc:
            log.warning("fog %s: ignoring an unreadable stored aggregate: %s",
                        self.settings.fog_id, exc)
            return None
        if not isinstance(frame, AggregateFrame) or frame.fog_id != self.settings.fog_id:
            return None
        return frame, stored[1]

    async def _replay_spool(self) -> None:
        """Feed the frames accepted before a crash back into the (resumed) round."""
        assert self._spool is not None
        limits = dataclasses.replace(self.settings.limits.decode_limits(),
                                     expected_params=self.round.model_size)
        for rec in self._spool.records():  # single-update files and batch files alike
            v, edge, path = rec.version, rec.edge, rec.path
            verdict = self.round.spooled(v, rec.seq)
            if verdict == "drop":
                path.unlink(missing_ok=True)  # a batch file holds one round: all of it goes
                continue
            try:
                if rec.data is None:
                    raise rec.error or StoreError(f"unreadable spool record in {path.name}")
                raw = rec.data
                verified = self.security.decode(raw, limits=limits, replay=False)
                frame = verified.frame
            except (OSError, HierflError) as exc:
                log.warning("fog %s: dropping unreadable spool record %s[%s]: %s",
                            self.settings.fog_id, path.name, rec.index, exc)
                self.metrics.inc("spool_unreadable")
                if rec.index is None:  # a batch file goes with its round (drop_except)
                    path.unlink(missing_ok=True)
                continue
            # The file is named by the round that accepted it: (version, round seq, edge). The
            # update's own base seq may be older (max_staleness >= 1); the round decides.
            if not isinstance(frame, UpdateFrame) or (v, edge) != (
                frame.base_version, frame.edge_id
            ):
                if rec.index is None:
                    path.unlink(missing_ok=True)
                continue
            self.metrics.inc("spool_replayed")
            await self._on_update(frame, raw, verified.sig, replay=True,
                                  readmit=verdict == "readmit")

    async def _on_update(self, frame: UpdateFrame, raw: bytes = b"",
                         sig: SigBlock | None = None, *, replay: bool = False,
                         readmit: bool = False) -> None:
        if self.round.state is FogState.WAITING_MODEL or self.round.holds_updates:
            # the model has not arrived yet (or, buffered, the next global model): the round
            # keeps it, unjudged (bounded)
            if not self.round.on_early(frame, (raw, sig)):
                self.metrics.inc("dropped_queue_full")
            return
        try:
            actions = await self._steps.run(self._admit(frame, raw, sig, replay=replay,
                                                        readmit=readmit))
        except HierflError as exc:
            if replay and self._spool is not None:
                self._spool.drop_except((self.round.version or 0, self.round.seq))
            self._reject(exc, f"edge {frame.edge_id}")
            await self._publish_stats(force=False)
            return
        await self._apply(actions)

    async def _admit(self, frame: UpdateFrame, raw: bytes, sig: SigBlock | None, *,
                     replay: bool, readmit: bool = False) -> list[Any]:
        """Spool an update the round will take, then let the round take it.

        Durable first: once the round holds an update (and the edge's QoS 1 delivery is
        acknowledged) a kill -9 must not lose it. The checks run before the write, so a
        refused update costs no disk write. Run as one step (:class:`~hierfl.offload.Steps`):
        a connection failure in the middle does not cut it in half.

        Raises:
            HierflError: the round refused the update (nothing was spooled, or the file
                was removed again).
        """
        key = (self.round.version or 0, self.round.seq)
        spooled = None
        started = time.time()
        if self._spool is not None and raw and not replay:
            await offload(self.round.check_update, frame)  # refused here: no write
            spooled = await offload(self._spool.put_batch, key[0], key[1],
                                    [(frame.edge_id, raw)])
        try:
            # Aggregation may run here (when this update closes the round): off the loop.
            admitted = time.time()
            actions = await offload(
                self.round.on_update, frame, self.clock(), readmit=readmit,
                proof=None if sig is None else edge_proof(sig, frame.edge_id))
        except HierflError:
            if spooled is not None:  # the round moved on while the file was written
                spooled.unlink(missing_ok=True)
            raise
        self._accepted(frame, actions, started, admitted, time.time(), replay=replay, sig=sig)
        return actions

    def _accepted(self, frame: UpdateFrame, actions: list[Any], started: float,
                  admitted: float, done: float, *, replay: bool,
                  sig: SigBlock | None = None) -> None:
        """Count an update the round took (after its spool write) and record its spans."""
        version = frame.base_version
        tl = self.timeline
        # the edge's own spans, then the fog's: admission (checks, spool) and, when this
        # update closed the round, the aggregation it ran
        for t in frame.timing:
            tl.add(t.name, version, t.start, t.end, party=frame.edge_id)
        closed = any(isinstance(a, RoundClosed) for a in actions)
        tl.add("fog.admit", version, started, admitted if closed else done,
               party=frame.edge_id)
        if closed:
            tl.add("fog.aggregate", version, admitted, done)
        self.metrics.inc("accepted")
        self.metrics.seen(frame.edge_id)
        self._count_for_version("accepted")
        if self.security.verifier is not None and sig is not None:
            # only the counters of updates the fog kept persist (not of those still queued)
            self.security.verifier.replay.commit(sig)
        if self.security.verifier is not None and not replay:
            # Replay counters become durable after the update they cover (spooled above): a
            # crash in between lets the edge's re-sent copy in (the round refuses a second
            # copy), instead of refusing, as a replay, an update the fog never kept. They are
            # written at most once a second while updates come (when the queue drains) and
            # always before a model or aggregate that folds the update leaves (_apply): the
            # file holds every counter the fog knew, and rewriting it per update cost a fog
            # 100 edges x 100 counters per round (docs/scale.md)
            self._replay_dirty = True

    def _burst(self, first: _Event) -> list[_Event]:
        """``first`` and the updates queued right behind it (group commit): up to
        ``BURST_MAX``, stopping before anything else and before a second update of an edge
        already in the burst (both would need one file name); those stay first in line."""
        burst, edges = [first], {first.frame.edge_id}
        while len(burst) < BURST_MAX:
            if self._backlog:
                ev = self._backlog.popleft()
            else:
                try:
                    ev = self._events.get_nowait()
                except asyncio.QueueEmpty:
                    break
            if ev.kind != "update" or not ev.raw or ev.frame.edge_id in edges:
                self._backlog.appendleft(ev)
                break
            burst.append(ev)
            edges.add(ev.frame.edge_id)
        return burst

    async def _on_burst(self, burst: list[_Event]) -> None:
        """Admit a burst of updates with one durable spool write (see :meth:`_admit_burst`)."""
        if self.round.state is FogState.WAITING_MODEL or self.round.holds_updates:
            for ev in burst:  # kept unjudged until the model comes (no spool write)
                await self._on_update(ev.frame, ev.raw, ev.sig)
            return
        actions = await self._steps.run(self._admit_burst(burst))
        await self._publish_stats(force=False)  # refusals, if any (rate-limited)
        await self._apply(actions)

    async def _admit_burst(self, burst: list[_Event]) -> list[Any]:
        """Group commit: check every update of ``burst``, write those that pass into one
        spool batch file made durable with one fsync (and one of the directory), then let
        the round take them in order.

        An update counts as accepted (joins the round, counted, foldable into a model that
        leaves the fog) only after its batch is durable: a crash before that loses no
        accepted update (the edge's QoS 1 delivery was acknowledged on receipt, as for a
        single update, and the edge re-sends when the fog comes back at the same round).
        Updates the round then refuses are removed from the batch file again; when one of
        them closes the round, the rest go back to the front of the line, to be judged and
        spooled under the next round. Run as one step (:class:`~hierfl.offload.Steps`).

        Returns:
            The round's actions, in order.
        """
        assert self._spool is not None
        started = time.time()
        key = (self.round.version or 0, self.round.seq)
        fit: list[_Event] = []
        refusals = await offload(check_burst, self.round, [ev.frame for ev in burst])
        for ev, exc in zip(burst, refusals, strict=True):
            if exc is None:
                fit.append(ev)
            else:  # refused before the write: costs no disk
                self._reject(exc, f"edge {ev.frame.edge_id}")
        if not fit:
            return []
        path = await offload(self._spool.put_batch, key[0], key[1],
                             [(ev.frame.edge_id, ev.raw) for ev in fit])
        # durable: from here on each may join the round
        proofs = [None if ev.sig is None else edge_proof(ev.sig, ev.frame.edge_id)
                  for ev in fit]
        taken: Burst = await offload(take_burst, self.round, key,
                                     [ev.frame for ev in fit], proofs, self.clock())
        actions: list[Any] = []
        for i, outcome, admitted, done in taken.outcomes:
            frame = fit[i].frame
            if isinstance(outcome, HierflError):
                self._reject(outcome, f"edge {frame.edge_id}")
                continue
            self._accepted(frame, outcome, started, admitted, done, replay=False,
                           sig=fit[i].sig)
            actions += outcome
        self._backlog.extendleft(reversed(fit[taken.stopped:]))
        if len(taken.kept) < len(fit):
            await offload(self._spool.keep_only, path, taken.kept)
        return actions

    async def _save_replay(self) -> None:
        """Write the replay counters if an accepted update changed them since the last write."""
        if self._replay_dirty and self.security.verifier is not None:
            self._replay_dirty = False
            self._replay_saved_at = time.monotonic()
            await offload(self.security.verifier.replay.save)

    async def _apply(self, actions: list[Any]) -> None:
        if any(isinstance(a, PublishModel | Forward) for a in actions):
            await self._save_replay()  # before anything that folds those updates leaves
        for a in actions:
            if isinstance(a, PublishModel):
                self._to_publish = a.frame
                if self.secagg is not None:
                    self.secagg.model_published(a.frame.version, a.frame.seq, a.frame.weights.size)
                self._folded = (a.frame, a.folded)
            elif isinstance(a, Forward):
                # the round holds it until on_sent (its outbox): a cancellation cannot lose it
                if a.reason == "resend":
                    self.metrics.inc("aggregates_resent")
                    self._encoded = None  # signed afresh: the replay guard refuses a copy
                else:
                    self.forwarded.append(a.frame)
            elif isinstance(a, RoundClosed):
                self.metrics.inc("fog_rounds")
                self.metrics.set("last_round_edges", len(a.contributors))
                log.info("fog %s: fog round %d of v%d closed with %d edges%s",
                         self.settings.fog_id, a.fog_round, a.version, len(a.contributors),
                         " (deadline)" if a.timed_out else "")
            elif isinstance(a, RoundSkipped):
                self.metrics.inc("rounds_skipped")
                self.metrics.inc(f"rounds_skipped_{a.reason}")
            elif isinstance(a, PrivacyStop) and a.record:
                self.metrics.set("privacy_budget_spent", 1)  # round.py logged why
            elif isinstance(a, PrivacyStop):
                self.metrics.set("privacy_budget_spent", 1)
                log.warning("fog %s: privacy budget spent: no more releases from this region "
                            "(%d releases, epsilon %.4g at delta %g, target %s)",
                            self.settings.fog_id, a.releases, a.epsilon,
                            self.settings.privacy.delta, self.settings.privacy.target_epsilon)
        if self.round.privacy is not None:
            ledger = self.round.privacy.ledger
            self.metrics.set("privacy_epsilon", ledger.epsilon())
            self.metrics.set("privacy_releases", ledger.releases)
        await self._flush()
        await self._publish_stats()

    async def _watch_budgets(self) -> None:
        """Count this fog's edges whose own privacy budget is spent (record and
        untrusted_fog modes): each says so in its retained status (``budget_spent``). Its own
        MQTT connection, off the update path; only a DP fog opens it."""
        s = self.settings
        spent: set[str] = set()
        announced: set[str] = set()  # the region, when neither trust bundle nor allow-list
        async with self.transports.mqtt(
            s.mqtt, client_id=f"hierfl-fog-{s.federation}-{s.fog_id}-status",
        ) as link:
            await link.subscribe(topics.status_filter(s.federation, s.fog_id))
            async for inbound in link.messages():
                edge = inbound.topic.rsplit("/", 1)[-1]
                if edge == s.fog_id:
                    continue
                if inbound.payload == b"budget_spent":
                    if edge not in spent:
                        log.info("fog %s: edge %s has spent its privacy budget", s.fog_id, edge)
                    spent.add(edge)
                else:
                    spent.discard(edge)  # a new budget (an operator's decision)
                self.metrics.set("edges_budget_spent", len(spent))
                announced.add(edge)
                if s.privacy.mode == "record":  # the round closes when nothing more can come
                    region = self._known_edges() or frozenset(announced)
                    await self._events.put(_Event("spent", (frozenset(spent), region), 0))

    def _forward_timing(self, version: int) -> Callable[[], tuple[TimingSpan, ...]]:
        """The aggregate's timing, read once its body is compressed: the ``fog.forward`` span
        covers the encoding (the spool write and the send follow it)."""
        started = time.time()

        def timing() -> tuple[TimingSpan, ...]:
            self.timeline.add("fog.forward", version, started, time.time())
            return self.timeline.wire(version, own_party=self.settings.fog_id, take=False,
                                      limit=MAX_AGGREGATE_TIMING)

        return timing

    async def _publish_stats(self, *, force: bool = True) -> None:
        """Publish the counters retained on the fog's stats topic (monitoring, best effort).

        Rejections alone publish at most twice a second, so a flood of junk cannot turn
        the fog into an amplifier.
        """
        now = self.clock()
        if self._mqtt is None or (not force and now - self._stats_at < 0.5):
            return
        self._stats_at = now
        s = self.settings
        snap = self.metrics.snapshot()
        snap.update(version=self.round.version, seq=self.round.seq,
                    state=self.round.state.value, time=time.time(),
                    by_version={str(v): rec for v, rec in self._by_version.items()})
        with contextlib.suppress(TransportError):
            await self._mqtt.publish(topics.stats(s.federation, s.fog_id),
                                     json.dumps(snap).encode(), retain=True, timeout=5)

    async def _flush(self) -> None:
        """Deliver pending actions; on failure they stay queued for the next connection."""
        s = self.settings
        if self._to_publish is not None and self._mqtt is not None:
            frame = self._to_publish
            published = time.time()
            out = self._prepared
            if out is None or out.target is not frame:
                # Encoded once per model: a retry after a reconnect sends the same bytes.
                out = self._prepared = await offload(self._downlink.prepare, frame)
            storing: asyncio.Future[None] | None = None
            if self._spool is not None and self._model_stored is not out:
                # On disk: the fog resumes from it even if the broker loses it.
                # what is folded in it, when the round said so (not for a re-announcement of
                # the held model on reconnection: the record written with it stands)
                target, (of, folded) = out.target, self._folded
                record = None if of is not target else {
                    "version": target.version, "seq": target.seq, "folded": sorted(folded)}
                storing = asyncio.ensure_future(offload(self._spool.put_model, out.full, record))
                if record is not None and record["folded"]:
                    # Updates are folded in it: on disk FIRST. A fog that resumed from this
                    # model without its record would fold them again from its spool.
                    await storing
                    storing = None
                    self._model_stored = out
                # else nothing is folded in it (a fresh global model: every round when k2 is
                # 1): the write overlaps the publishes, off the round's critical path (it
                # cost 3-60 ms per round here). A fog killed before the write lands resumes
                # from the retained copy, which carries nothing to refold, or, if the broker
                # lost that too, from its previous model, as if killed just before publishing,
                # and the cloud's model stream brings this one again.
            try:
                # Full model first: a fog that dies in between resumes from it, resends it.
                await self._mqtt.publish(topics.model(s.federation, s.fog_id), out.full,
                                         retain=True)
                self.metrics.inc("bytes_down_edges", len(out.full))
                await self._mqtt.publish(topics.model_delta(s.federation, s.fog_id), out.stream)
                self.metrics.inc("bytes_down_stream", len(out.stream))
            finally:
                if storing is not None:  # landed before anything else happens, even on failure
                    await asyncio.shield(storing)
                    self._model_stored = out
            self.metrics.inc("model_deltas_sent" if out.is_delta else "models_streamed_full")
            self._downlink.commit(out)
            self.timeline.add("fog.publish", frame.version, published, time.time())
            if self._to_publish is frame:
                self._to_publish = None
        self._pace_models()  # an aggregate to send: the next global model is due
        while (agg := self.round.unsent) is not None and self._producer is not None:
            if self._encoded is not None and self._encoded[0] is agg:
                data = self._encoded[1]
            else:
                data = await offload(encode_frame, agg, codec=_codec(s.cloud_codec),
                                     signer=self.security.signer,
                                     timing=self._forward_timing(agg.base_version))
                self._encoded = (agg, data)
            if self._spool is not None and self._stored is not agg:
                # Durable before it is sent: a fog killed from here on resumes as forwarded
                # and sends these bytes again (FogRound.resume); the round's updates stay
                # spooled until it is sent.
                await offload(self._spool.put_forwarded, agg.base_version, data)
                self._stored = agg
            await self._producer.send_frame(
                topics.aggregates(s.federation), key=s.fog_id.encode(), frame=data
            )
            self.round.on_sent(agg, self.clock())
            self.metrics.inc("aggregates_forwarded")
            self.metrics.inc("bytes_up", len(data))
            log.info("fog %s: forwarded aggregate for v%d (%d edges, %d samples)", s.fog_id,
                     agg.base_version, len(agg.contributors), agg.num_samples)
        if (self._spool is not None and self._replayed and self._to_publish is None
                and self.round.unsent is None):
            # Everything folded so far is durable (retained fog model / Kafka aggregate):
            # only the open round's frames still need the spool.
            open_round = None
            if self.round.state is FogState.COLLECTING and self.round.version is not None:
                open_round = (self.round.version, self.round.seq)
            await offload(self._spool.drop_except, open_round)
            if self.round.version is not None:
                await offload(self._spool.drop_forwarded, before=self.round.version)
        self._pace_models()


def _region_optimizer(s: FogSettings, size: int) -> Any:
    """The fog's server optimiser for its region (hierfl/optim/server.py), or None."""
    from hierfl.optim.server import make_server_optimizer  # noqa: PLC0415

    return make_server_optimizer(s.server_opt.name, size, **s.server_opt.params())


def _fog_rule(s: FogSettings) -> Any:
    """The fog's aggregation rule, wrapped with the Gaussian mechanism under device-level DP."""
    rule = make_aggregator(s.aggregator, s.aggregator_params)
    p = s.privacy
    if p.mode not in ("trusted_fog", "untrusted_fog"):
        return rule
    from hierfl.privacy.mechanisms import (  # noqa: PLC0415
        AdaptiveClip,
        effective_noise_multiplier,
    )
    from hierfl.privacy.wrappers import DPAggregator  # noqa: PLC0415

    adaptive = None
    sigma_updates = None
    if p.adaptive_clip and p.mode == "trusted_fog":
        adaptive = AdaptiveClip(p.clip_norm, p.target_quantile, p.clip_learning_rate,
                                p.count_noise_multiplier)
        sigma_updates = effective_noise_multiplier(p.noise_multiplier, p.count_noise_multiplier)
    return DPAggregator(rule, clip_norm=p.clip_norm, noise_multiplier=p.noise_multiplier,
                        expected_updates=_expected_updates(s),
                        add_noise=p.mode == "trusted_fog", adaptive=adaptive,
                        noise_multiplier_updates=sigma_updates,
                        clip_in_place=True)  # FogRound._close stacks afresh: no copy


def _expected_updates(s: FogSettings) -> int:
    """m, the fixed denominator: the setting, else q x the listed edges, else min_updates."""
    p = s.privacy
    if p.expected_updates is not None:
        return p.expected_updates
    if p.sample_rate < 1.0 and s.allowed_edges:
        return max(1, round(p.sample_rate * len(s.allowed_edges)))  # = the fixed sample size
    return s.min_updates


def _region_privacy(s: FogSettings) -> Any:
    """The region's ledger and budget (None unless a device-level DP mode is on).

    Raises:
        LedgerCorruptError: the ledger on disk is unreadable (never reset silently).
    """
    p = s.privacy
    if p.mode not in ("trusted_fog", "untrusted_fog"):
        return None
    if p.mode == "untrusted_fog" and s.secagg.mode == "secure":
        from hierfl.secagg.ddp import distributed_region  # noqa: PLC0415

        return distributed_region(s)  # distributed DP: the Skellam ledger of the sums
    from hierfl.privacy.ledger import LEDGER_FILE, PrivacyLedger  # noqa: PLC0415
    from hierfl.privacy.region import RegionPrivacy  # noqa: PLC0415

    folder = p.ledger_folder(s.spool_dir, s.security.state_dir)
    assert folder is not None  # FogSettings refuses DP without one
    # untrusted_fog: the edges add the noise shares (and account for themselves as local DP);
    # the region's sum then carries sigma C, accounted here as in trusted_fog
    ledger = PrivacyLedger(folder / LEDGER_FILE, population=s.fog_id,
                           noise_multiplier=p.noise_multiplier, sample_rate=p.sample_rate,
                           delta=p.delta, method=p.accountant,
                           fixed_from=(len(s.allowed_edges) if p.sampling == "fixed"
                                       and p.sample_rate < 1.0 else 0))
    return RegionPrivacy(ledger, clip_norm=p.clip_norm, target_epsilon=p.target_epsilon,
                         k2=s.k2, population=tuple(sorted(s.allowed_edges)))


class _Lanes:
    """Bounded per-sender lanes of inbound MQTT messages, served round-robin.

    A known edge has a lane of ``_LANE`` messages; every other sender shares one lane of
    ``_SHARED_LANE``. When a lane is full its oldest message is dropped (the newest update of a
    sender is the one that matters). Known edges are re-read at most once a second.
    """

    def __init__(self, known: Any) -> None:
        self._known_fn = known
        self._known: frozenset[str] | None = known()
        self._known_at = _now()  # the loop's clock (virtual in the simulator)
        self._lanes: dict[str, deque[Any]] = {}
        self._order: deque[str] = deque()  # lanes with messages, in serving order
        self._ready = asyncio.Event()

    def _lane_of(self, topic: str) -> str:
        now = _now()
        if now - self._known_at > 1.0:
            self._known, self._known_at = self._known_fn(), now
        client = topic.rsplit("/", 1)[-1]
        if self._known is None:
            return client if len(self._lanes) < _MAX_OPEN_LANES or client in self._lanes else "?"
        return client if client in self._known else "?"

    def put(self, inbound: Any) -> bool:
        """Queue ``inbound``; False when it pushed out an older message of its lane."""
        key = self._lane_of(inbound.topic)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
        dropped = len(lane) >= (_SHARED_LANE if key == "?" else _LANE)
        if dropped:
            lane.popleft()
        if not lane:
            self._order.append(key)
        lane.append(inbound)
        self._ready.set()
        return not dropped

    def has_own_lane(self, client: str) -> bool:
        """Whether ``client``'s messages go to a lane of their own (not the shared one)."""
        return self._lane_of(f"/{client}") != "?"

    async def get(self) -> Any:
        """The next message, taking lanes in turn."""
        while not self._order:
            self._ready.clear()
            await self._ready.wait()
        key = self._order.popleft()
        lane = self._lanes[key]
        item = lane.popleft()
        if lane:
            self._order.append(key)
        else:
            del self._lanes[key]
        return item


_LANE = 8
_SHARED_LANE = 256
_MAX_OPEN_LANES = 4096
# Refusals no honest edge causes: malformed, badly signed, misshapen or misaddressed frames, and
# a lane overflowing. Not counted: replays, stale and duplicate updates, and partial chunked
# frames, which honest edges cause after restarts and broken connections.
_SOFT_WIRE = frozenset({"wire.replay", "wire.chunk_incomplete"})
_HARD_VALIDATION = frozenset({"validation.shape", "validation.sender", "validation.recipient",
                              "flood.lane_full"})
_MAX_TRACKED = 4096  # senders whose refusals the breaker remembers (ids may be untrusted)
_SUBSCRIBE_BATCH = 64  # SUBSCRIBE / UNSUBSCRIBE requests in flight at once


@dataclass(frozen=True, slots=True)
class _Arrived:
    """An inbound MQTT message and when it arrived (wall clock, for the timeline)."""

    topic: str
    payload: bytes
    arrived: float


def _now() -> float:
    """The event loop's clock: real monotonic time, or the simulator's virtual time."""
    return asyncio.get_running_loop().time()


def _hard_refusal(reason: str) -> bool:
    return (reason.startswith("wire.") and reason not in _SOFT_WIRE) or reason in _HARD_VALIDATION


class _Breaker:
    """Per-sender circuit breaker: more than ``budget`` hard refusals within ``window_s``
    quarantine a sender for ``base_s``, doubled (up to ``max_s``) when it trips again within
    ``max_s`` of its last quarantine's end."""

    def __init__(self, budget: int, window_s: float, base_s: float, max_s: float) -> None:
        self.budget, self.window_s, self.base_s, self.max_s = budget, window_s, base_s, max_s
        self._hits: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}
        self._last: dict[str, tuple[float, float]] = {}  # sender -> (backoff, its end)

    def quarantined(self, sender: str, now: float) -> bool:
        until = self._until.get(sender)
        return until is not None and now < until

    def strike(self, sender: str, now: float) -> float | None:
        """Count one hard refusal; the quarantine's length when this one trips it."""
        if self.quarantined(sender, now):
            return None
        hits = self._hits.get(sender)
        if hits is None:
            if len(self._hits) >= _MAX_TRACKED:
                del self._hits[next(iter(self._hits))]
            hits = self._hits[sender] = deque()
        hits.append(now)
        while hits[0] <= now - self.window_s:
            hits.popleft()
        if len(hits) <= self.budget:
            return None
        del self._hits[sender]
        backoff = self.base_s
        last = self._last.pop(sender, None)
        if last is not None and now - last[1] <= self.max_s:
            backoff = min(self.max_s, last[0] * 2)
        self._until[sender] = now + backoff
        self._last[sender] = (backoff, now + backoff)
        while len(self._last) > _MAX_TRACKED:
            del self._last[next(iter(self._last))]
        return backoff

    def next_release(self) -> float | None:
        return min(self._until.values(), default=None)

    def released(self, now: float) -> list[str]:
        """Senders whose quarantine has ended (each reported once)."""
        done = [k for k, until in self._until.items() if until <= now]
        for k in done:
            del self._until[k]
        return done


@dataclass(slots=True)
class _UpdateLinks:
    """The connections update topics come in on; ``subscribed`` is None for the wildcard."""

    links: list[MqttLink]
    subscribed: set[str] | None

    def bucket(self, edge: str) -> int:
        return zlib.crc32(edge.encode()) % len(self.links)  # stable across restarts

    def link(self, edge: str) -> MqttLink:
        return self.links[self.bucket(edge)]


async def _in_batches(calls: list[Callable[[], Awaitable[None]]]) -> None:
    """Run ``calls``, at most ``_SUBSCRIBE_BATCH`` at once (each waits for the broker)."""
    for i in range(0, len(calls), _SUBSCRIBE_BATCH):
        await asyncio.gather(*(call() for call in calls[i : i + _SUBSCRIBE_BATCH]))


def _codec(spec: str) -> str | None:
    return None if spec == "raw" else spec


class _Stopped(Exception):
    pass
