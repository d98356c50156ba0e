"""CloudService: Kafka ingest of fog aggregates, the model store, and the model fan-out.

On start the service loads the newest checkpoint (or the configured initial model as
version 0) and publishes it. Each closed round is checkpointed *before* it is published
and *before* the consumed offsets are committed, so a crash at any point either replays
aggregates that are then refused as stale, or replays the round from scratch: an
aggregate is never applied twice, and one that was received is never lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from hierfl import topics
from hierfl.aggregation import make_aggregator
from hierfl.cloud.round import CloudAction, CloudRound, CloudRoundConfig, Commit, NewGlobal
from hierfl.config import CloudSettings
from hierfl.errors import (
    ConfigError,
    HierflError,
    SignatureError,
    WireFormatError,
)
from hierfl.fog.buffered import buffer_policy
from hierfl.health import monitoring
from hierfl.metrics import ServiceMetrics
from hierfl.model.store import Checkpoint, ModelStore, load_weights_file
from hierfl.offload import Steps, offload
from hierfl.ratelimit import REJECT_LOG_INTERVAL_S, LogThrottle, suppressed_note
from hierfl.security.tier import tier_security
from hierfl.security.trust import TrustStore, cloud_party
from hierfl.timeline import Timeline, TimelineLog, build, emit_otel, from_wire, otel_available
from hierfl.transport.base import FrameConsumer, FrameProducer, Inbound
from hierfl.transport.factory import BrokerTransports, Transports
from hierfl.transport.reconnect import Link, reconnect_loop
from hierfl.wire.codec import encode_frame
from hierfl.wire.frames import AggregateFrame, EdgeProof, ModelFrame
from hierfl.wire.signing import SigBlock, verify_proof

__all__ = ["CloudService"]

log = logging.getLogger(__name__)


class CloudService:
    """The cloud aggregator process.

    Args:
        settings: the cloud's settings.
        clock: time source (seconds), injectable for tests.
        transports: opens the broker links (default: the real brokers of ``settings``).

    Usage::

        service = CloudService(CloudSettings.load("cloud.toml"))
        await service.run()      # until cancelled, stop(), or max_versions is reached
    """

    def __init__(self, settings: CloudSettings, *, clock: Any = time.monotonic,
                 transports: Transports | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.transports: Transports = transports or BrokerTransports()
        self.metrics = ServiceMetrics("cloud", settings.federation)
        # Replay counters are durable with the checkpoints, not on every record: after a
        # restart the aggregates consumed but not yet applied are read again and must pass.
        self.security = tier_security(settings.security, federation=settings.federation,
                                      party_id=cloud_party(), tier="cloud", replay_file=None)
        self.store = ModelStore(settings.store_dir, keep=settings.keep_versions)
        ckpt = self.store.latest()
        if ckpt is None:
            if settings.initial_model is None:
                raise ConfigError(
                    f"model store {settings.store_dir} is empty and no initial_model is set"
                )
            weights, layout = load_weights_file(settings.initial_model)
            ckpt = self.store.save(0, weights, layout, {
                "parent": None, "round": 0, "fogs": {}, "metrics": {}, "created_at": time.time(),
                "lineage": {"aggregates": [], "signed": self.security.enabled},
                "replay": {},
            }, sign=None if self.security.signer is None else self.security.signer.sign_record)
            log.info("cloud: version 0 from %s (%d parameters)", settings.initial_model,
                     weights.size)
        else:
            log.info("cloud: resuming from checkpoint v%d", ckpt.version)
        if self.security.verifier is not None:
            self.security.verifier.replay.seed(dict(ckpt.meta.get("replay") or {}))
        server_opt = _server_optimizer(settings, ckpt)
        self._sigs: dict[str, SigBlock] = {}  # fog -> signature of its held aggregate
        self._provenance: dict[str, tuple[EdgeProof, ...]] = {}
        self.round = CloudRound(
            CloudRoundConfig(
                federation=settings.federation,
                fogs=frozenset(settings.fogs),
                min_fogs=settings.min_fogs,
                round_timeout_s=settings.round_timeout_s,
                max_samples_per_edge=settings.max_samples_per_edge,
                buffer=buffer_policy(settings.aggregation, settings.buffer_size,
                                     settings.staleness_exponent, settings.max_staleness),
            ),
            make_aggregator(settings.aggregator, settings.aggregator_params),
            version=ckpt.version,
            weights=ckpt.weights,
            layout=ckpt.layout,
            server_opt=server_opt,
            control=_scaffold_control(settings, ckpt),
        )
        self._latest: Checkpoint = ckpt
        # differential privacy: the worst region's account, resumed from the checkpoint
        self.privacy = None
        if settings.privacy.enabled:
            from hierfl.privacy.federation import FederationPrivacy  # noqa: PLC0415

            p = settings.privacy
            self.privacy = FederationPrivacy.restore(
                ckpt.meta.get("privacy"), mode=p.mode, delta=p.delta,
                target_epsilon=p.target_epsilon, method=p.accountant)
            if self.privacy.stopped:
                log.warning("cloud: v%d is the final model (%s, epsilon %.4g at delta %g)",
                            ckpt.version, self.privacy.status, self.privacy.epsilon(), p.delta)
            self._wait_for_unspent_regions()
        self._steps = Steps()  # round steps a reconnect cannot cut in half
        self._published_version = -1
        # every tier's spans per version; one RoundTimeline per round (hierfl.timeline)
        self.timeline = Timeline("cloud", keep=4, observer=self.metrics.on_span)
        self.metrics.gauge_fn("model_version", lambda: self.round.version)
        self.metrics.gauge_fn("round_number", lambda: self.round.version + 1)  # being built
        self.metrics.gauge_fn("fogs_reported", lambda: len(self.round.reported))
        self._publish_started: dict[int, float] = {}
        self._timeline_log = (TimelineLog(settings.store_dir / "timeline.jsonl",
                                          settings.timeline_keep) if settings.timeline else None)
        self._otel = settings.otel and otel_available()
        self.last_timeline: Any = None  # the newest RoundTimeline
        self._connection = 0  # bumped on every (re)connection: commit positions name it
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.finished = asyncio.Event()

    def _wait_for_unspent_regions(self) -> None:
        """Record-level DP: stop expecting the regions that reported ``dp.region_spent`` (they
        send no more aggregates), so later rounds close when the others reported, not at the
        deadline (hierfl/privacy/record.py)."""
        assert self.privacy is not None
        cfg = self.round.config
        keep = cfg.fogs - self.privacy.spent_regions()
        if keep and keep != cfg.fogs:
            self.round.config = dataclasses.replace(cfg, fogs=keep,
                                                    min_fogs=min(cfg.min_fogs, len(keep)))
            log.info("cloud: regions %s have spent their privacy budget; waiting for %s only",
                     ", ".join(sorted(cfg.fogs - keep)), ", ".join(sorted(keep)))

    @property
    def version(self) -> int:
        """The newest global version."""
        return self.round.version

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stop.set()

    def _done(self) -> bool:
        if self.privacy is not None and self.privacy.stopped:
            return True  # the privacy budget cannot pay for another round
        mv = self.settings.max_versions
        return mv is not None and self.round.version >= mv

    async def run(self) -> None:
        """Run until :meth:`stop`, cancellation, or ``max_versions``; reconnect on failures.

        Raises:
            BrokerRefusedError: on a fatal broker error (credentials, certificate, missing
                topic) or a cluster unreachable for ``kafka.connect_attempts`` tries.
        """
        s = self.settings

        async def connected() -> None:
            # With create_topics = false this checks the topics exist (a missing one is fatal).
            await self.transports.ensure_topics(
                s.kafka, [topics.aggregates(s.federation), topics.models(s.federation)]
            )
            await self._run_connected()

        async with monitoring(self):  # metrics_port: /metrics, /healthz, /readyz
            await reconnect_loop(
                "cloud", connected,
                links=[Link("kafka", s.kafka.bootstrap, s.kafka.connect_attempts)],
                ready=self.ready, stop=self._stop,
                on_retry=lambda: self.metrics.inc("reconnects"),
            )

    async def _run_connected(self) -> None:
        s = self.settings
        fed = s.federation
        async with (
            self.transports.producer(s.kafka, client_id=f"hierfl-cloud-{fed}") as producer,
            self.transports.consumer(
                s.kafka, topics.aggregates(fed), client_id=f"hierfl-cloud-{fed}",
                group_id=f"hierfl-cloud-{fed}", start="committed",
                max_frame_bytes=s.limits.max_frame_bytes,
            ) as consumer,
        ):
            # The cloud waits for aggregates whenever it runs: a round is always open
            # (kafka.fetch_wait_due_ms, when set, is its fetch wait throughout)
            consumer.expect(True)
            # A version saved by a step the last connection's failure interrupted is
            # published below like any other (self._latest).
            await self._steps.settle()
            # Positions are (connection, record): a record of an earlier connection is not
            # this one's to commit, the log may have been lost since (a broker restarted
            # without persistence; found by the simulator).
            self._connection += 1
            # (Re)publish the current version: fogs that restarted pick it up.
            await self._publish(producer, self._latest)
            self.ready.set()
            if self._done():
                self.finished.set()
                return
            queue: asyncio.Queue[tuple[Inbound, float]] = asyncio.Queue(maxsize=1024)

            async def ingest() -> None:
                async for inbound in consumer.messages():
                    await queue.put((inbound, time.time()))

            async def core() -> None:
                while not self._done():
                    deadline = self.round.deadline
                    timeout = None if deadline is None else max(0.0, deadline - self.clock())
                    try:
                        async with asyncio.timeout(timeout):
                            inbound, arrived = await queue.get()
                    except TimeoutError:
                        version, started = self.round.version, time.time()
                        new = self.round.on_tick(self.clock())
                        if any(isinstance(a, NewGlobal) for a in new):
                            self.timeline.add("cloud.combine", version, started, time.time())
                        elif self.round.deadline is None and self.round.reported:
                            self.metrics.inc("quorum_missed")  # deadline passed below min_fogs
                        actions = await self._steps.run(self._carry_out_saves(new))
                        await self._carry_out(actions, producer)
                        continue
                    await self._handle(inbound, producer, consumer, arrived)
                self.finished.set()

            tasks: list[asyncio.Task[None]] = []
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks.append(tg.create_task(ingest(), name="cloud.ingest"))
                    c = tg.create_task(core(), name="cloud.core")
                    tasks.append(c)
                    stopper = tg.create_task(self._stop.wait(), name="cloud.stop")
                    await asyncio.wait([c, stopper], return_when=asyncio.FIRST_COMPLETED)
                    for t in (*tasks, stopper):
                        t.cancel()
            finally:
                if self._done():
                    self.finished.set()

    async def _handle(
        self,
        inbound: Inbound,
        producer: FrameProducer,
        consumer: FrameConsumer,
        arrived: float | None = None,
    ) -> None:
        self.metrics.inc("received")
        started = time.time()
        position = (self._connection, inbound)
        if inbound.error is not None or not inbound.payload:
            self._reject(inbound.error or WireFormatError("empty record"), inbound)
            await self._carry_out(self.round.on_refused(position), producer)
            return
        self.metrics.inc("bytes_in", len(inbound.payload))
        try:
            # an aggregate must fit the global model: checked before anything is allocated
            limits = dataclasses.replace(self.settings.limits.decode_limits(),
                                         expected_params=int(self.round.weights.size))
            verified = await offload(self.security.decode, inbound.payload,
                                               limits=limits)
            frame = verified.frame
            if not isinstance(frame, AggregateFrame):
                raise WireFormatError(f"a {type(frame).__name__} on the aggregates topic")
            if self.security.trust is not None:
                await offload(_check_provenance, self.security.trust, frame,
                              self.settings.max_staleness)
            fog, v = frame.fog_id, frame.base_version
            decoded = time.time()
            actions = await self._steps.run(self._accept(frame, verified.sig, position))
            tl = self.timeline
            tl.add("cloud.aggregate_in", v, arrived or started, party=fog)
            tl.add("cloud.decode", v, started, decoded, party=fog)
            for span in from_wire(frame.timing, sender=fog, version=v, prefix=f"{fog}/"):
                tl.add(span.name, v, span.start, span.end, party=span.party)
        except HierflError as exc:
            self._reject(exc, inbound)
            # nothing held: the round says to skip the bad record for good
            await self._carry_out(self.round.on_refused(position), producer)
            return
        await self._carry_out(actions, producer)

    async def _accept(self, frame: AggregateFrame, sig: Any,
                      position: Any) -> list[CloudAction]:
        """Fold an aggregate into the round and, when it closes the round, save the new
        version: one step (:class:`~hierfl.offload.Steps`), so a connection failure in the
        middle cannot leave the round moved on and its version unsaved.

        Raises:
            HierflError: the round refused the aggregate.
        """
        started = time.time()
        actions = await offload(self.round.on_aggregate, frame, self.clock(), position)
        if any(isinstance(a, NewGlobal) for a in actions):
            self.timeline.add("cloud.combine", frame.base_version, started, time.time())
        self.metrics.inc("accepted")
        if sig is not None:
            self._sigs[frame.fog_id] = sig
        self._provenance[frame.fog_id] = frame.provenance
        log.info("cloud: aggregate %s accepted (%d samples)", frame.aggregate_id,
                 frame.num_samples)
        return await self._carry_out_saves(actions)

    async def _carry_out_saves(self, actions: list[CloudAction]) -> list[CloudAction]:
        """Save every new version the round produced (the durable point), in the step."""
        for a in actions:
            if isinstance(a, NewGlobal):
                await self._save_new(a)
        return actions

    async def _carry_out(self, actions: list[CloudAction], producer: FrameProducer) -> None:
        """The connection's part of the round's actions: publish the saved version, then
        commit where the round says (positions of this connection only)."""
        for a in actions:
            if isinstance(a, NewGlobal):
                await self._publish(producer, self._latest)
            elif isinstance(a, Commit):
                connection, inbound = a.position
                if connection == self._connection:
                    await inbound.ack()

    async def _save_new(self, new: NewGlobal) -> Checkpoint:
        """Save a version the round produced (the durable point); it becomes the latest."""
        meta = {
            "parent": new.parent,
            "round": new.version,
            "fogs": new.fogs,
            "num_fogs": len(new.fogs),
            "num_edges": sum(f["num_edges"] for f in new.fogs.values()),
            "num_samples": sum(f["num_samples"] for f in new.fogs.values()),
            "metrics": new.metrics,
            "timed_out": new.timed_out,
            "aggregator": self.settings.aggregator,
            "created_at": time.time(),
            "lineage": self._lineage(new),
            "replay": ({} if self.security.verifier is None
                       else self.security.verifier.replay.snapshot()),
        }
        if self.privacy is not None:
            # sigma, C, q, releases and epsilon at delta of every region; the stop decision
            priv = self.privacy.close_round(new.fogs)
            self._wait_for_unspent_regions()
            meta["privacy"] = priv
            meta["status"] = priv["status"]
            if priv["epsilon"] is not None:
                meta["metrics"] = {**new.metrics, "dp.epsilon": float(priv["epsilon"]),
                                   "dp.delta": float(priv["delta"])}
            if self.privacy.stopped:  # the final model says so to whoever reads it
                meta["metrics"] = {**meta["metrics"], "dp.stopped": 1.0}
        if self.round.server_opt is not None:  # its state first: the record names it
            from hierfl.optim.checkpoint import save_state  # noqa: PLC0415

            meta["server_opt"] = await offload(save_state, self.settings.store_dir,
                                               new.version, self.round.server_opt)
        if new.control is not None:  # SCAFFOLD's c, like the optimiser's state
            from hierfl.optim.checkpoint import save_control  # noqa: PLC0415

            meta["scaffold"] = await offload(save_control, self.settings.store_dir,
                                             new.version, new.control)
        signer = self.security.signer
        started = time.time()
        ckpt = await offload(
            self.store.save, new.version, new.weights, self.round.layout, meta,
            sign=None if signer is None else signer.sign_record,
        )
        base = new.parent if new.parent is not None else new.version - 1
        self.timeline.add("cloud.checkpoint", base, started, time.time())
        self._latest = ckpt
        self.metrics.inc("versions")
        log.info("cloud: v%d from %d fogs / %d edges%s", new.version, meta["num_fogs"],
                 meta["num_edges"], " (deadline)" if new.timed_out else "")
        if self.privacy is not None:
            self.metrics.set("privacy_epsilon", self.privacy.epsilon())
            if self.privacy.stopped:
                self.metrics.set("privacy_budget_spent", 1)
                log.warning("cloud: federation %s %s at v%d: epsilon %.4g at delta %g (target "
                            "%s); v%d is the final model", self.settings.federation,
                            self.privacy.status, new.version, self.privacy.epsilon(),
                            self.privacy.delta, self.privacy.target_epsilon, new.version)
        return ckpt

    def _lineage(self, new: NewGlobal) -> dict[str, Any]:
        """Who signed what went into ``new``: each aggregate's signature block and the
        signed claims of the edge updates behind it (checked by ``hierfl audit verify``)."""
        aggs = []
        for fog in sorted(new.fogs):
            sig = self._sigs.pop(fog, None)
            proofs = self._provenance.pop(fog, ())
            aggs.append({
                "fog": fog,
                "sig": None if sig is None else sig.to_json(),
                "edges": [{"edge": p.edge_id, "base": p.base_version, "seq": p.base_seq,
                           "ctr": p.counter, "h": p.payload_hash.hex(),
                           "sig": p.signature.hex()} for p in proofs],
            })
        self._sigs.clear()
        self._provenance.clear()
        return {"aggregates": aggs, "signed": self.security.enabled}

    async def _publish(self, producer: FrameProducer, ckpt: Checkpoint) -> None:
        s = self.settings
        started = time.time()
        first = ckpt.version not in self._publish_started
        if first:
            self._close_timeline(ckpt.version, started)
        frame = ModelFrame(
            federation=s.federation,
            version=ckpt.version,
            weights=ckpt.weights,
            parent=ckpt.meta.get("parent"),
            layout=ckpt.layout,
            metrics={k: float(v) for k, v in ckpt.meta.get("metrics", {}).items()},
            control=self.round.control if ckpt.version == self.round.version else None,
        )
        codec = None if s.model_codec == "raw" else s.model_codec
        data = await offload(encode_frame, frame, codec=codec,
                                       signer=self.security.signer)
        await producer.send_frame(topics.models(s.federation), key=s.federation.encode(),
                                  frame=data)
        self._published_version = ckpt.version
        self.metrics.inc("bytes_down", len(data))
        if first:
            self.timeline.add("cloud.publish", ckpt.version, started, time.time())

    def _close_timeline(self, version: int, started: float) -> None:
        """Version ``version`` is about to go out: the round that built it, from the previous
        version's publication to now, is complete. Write it, and emit it (OpenTelemetry)."""
        self._publish_started[version] = started
        while len(self._publish_started) > 4:
            del self._publish_started[min(self._publish_started)]
        prev = max((v for v in self._publish_started if v < version), default=None)
        if prev is None:
            return
        rt = build(prev, self.timeline.take(prev), self._publish_started[prev], started)
        self.last_timeline = rt
        if self._timeline_log is not None:
            self._timeline_log.append(rt)
        if self._otel:
            try:
                emit_otel(rt, self.settings.federation)
            except Exception as exc:  # noqa: BLE001 - an exporter's failure is not the cloud's
                log.warning("cloud: OpenTelemetry export of round v%d failed: %s", prev, exc)

    def _reject(self, exc: HierflError, inbound: Inbound) -> None:
        self.metrics.reject(exc.reason)  # exact; the log is at most one line per reason per 10 s
        throttle: LogThrottle | None = getattr(self, "_reject_log", None)
        if throttle is None:
            throttle = self._reject_log = LogThrottle(REJECT_LOG_INTERVAL_S)
        suppressed = throttle.admit(exc.reason)
        if suppressed is not None:
            log.info("cloud: rejected record at offset %d: %s: %s%s", inbound.offset,
                     exc.reason, exc, suppressed_note(suppressed, exc.reason))


def _scaffold_control(settings: CloudSettings, ckpt: Checkpoint) -> Any:
    """SCAFFOLD's c (zeros at first, else resumed from ``ckpt``); None when it is off.

    Raises:
        StoreError: the state ``ckpt`` names is missing or altered.
    """
    if not settings.scaffold:
        return None
    import numpy as np  # noqa: PLC0415

    from hierfl.optim.checkpoint import restore_control  # noqa: PLC0415

    c = restore_control(settings.store_dir, ckpt.meta, int(ckpt.weights.size))
    return np.zeros(ckpt.weights.size, dtype=np.float32) if c is None else c


def _server_optimizer(settings: CloudSettings, ckpt: Checkpoint) -> Any:
    """The configured server optimiser (None: off), resumed from ``ckpt``'s saved state.

    Raises:
        StoreError: the state ``ckpt`` names is missing or altered.
    """
    from hierfl.optim.checkpoint import restore_state  # noqa: PLC0415
    from hierfl.optim.server import make_server_optimizer  # noqa: PLC0415

    so = settings.server_opt
    opt = make_server_optimizer(so.name, int(ckpt.weights.size), **so.params())
    if opt is not None and restore_state(settings.store_dir, ckpt.meta, opt):
        log.info("cloud: server optimiser %s resumed at step %d", so.name, opt.t)
    return opt


def _check_provenance(trust: TrustStore, frame: AggregateFrame, max_lag: int = 0) -> None:
    """A signed aggregate must prove each contributor: one signed update or more per edge,
    against this aggregate's base version (or at most ``max_lag`` versions before it: the
    cloud's ``max_staleness``, for fogs in buffered mode that use a slow edge's update from an
    older version), by an edge of this fog (no invented edge ids).
    An edge revoked after its update was accepted still proves it: the fog enforces the
    revocation list on what arrives; refusing a forwarded aggregate would stall the region.

    Raises:
        SignatureError: (or a subclass) naming the first problem.
    """
    proven = set()
    for proof in frame.provenance:
        if not 0 <= frame.base_version - proof.base_version <= max_lag:
            raise SignatureError(
                f"aggregate {frame.aggregate_id}: provenance of {proof.edge_id} is against "
                f"v{proof.base_version}"
            )
        verify_proof(trust, frame.federation, frame.fog_id, proof, revoked_ok=True)
        proven.add(proof.edge_id)
    unproven = set(frame.contributors) - proven
    if unproven or proven - set(frame.contributors):
        raise SignatureError(
            f"aggregate {frame.aggregate_id}: contributors without a signed update: "
            f"{sorted(unproven)[:5]}" if unproven else
            f"aggregate {frame.aggregate_id}: provenance names non-contributors"
        )
