"""EdgeClient: train from the newest model the fog publishes, send the delta back.

The client follows its fog's model topics (:class:`~hierfl.edge.model_feed.ModelFeed`: the
retained full model while it needs it, the delta stream otherwise). For each new fog model
``(version, seq)`` it loads the weights, trains ``local_epochs`` epochs (k1) in a worker
thread, and publishes an :class:`~hierfl.wire.frames.UpdateFrame` holding
``trained - received`` with its sample count and training metrics. When several models
arrive during training only the newest is trained on. The MQTT last will marks the
device offline. With a lossy codec and ``error_feedback`` on (the default), what the codec
drops is carried into the next update (:mod:`hierfl.edge.feedback`, docs/compression.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from hierfl import topics
from hierfl.compression import PreEncoded, make_codec
from hierfl.config import EdgeSettings
from hierfl.edge.feedback import UplinkFeedback
from hierfl.edge.hooks import EvaluateHook, ModelHook, ModelHooks
from hierfl.edge.model_feed import DELTA, FULL, ModelFeed
from hierfl.edge.vector import VectorModel
from hierfl.errors import (
    ConfigError,
    HierflError,
    PrivacyBudgetExhaustedError,
    ShapeMismatchError,
    TransportError,
)
from hierfl.health import monitoring
from hierfl.metrics import ServiceMetrics
from hierfl.offload import offload, threaded
from hierfl.optim.scaffold import EdgeControl
from hierfl.privacy.record import LAST_UPDATE_METRIC, is_last_update, reported_samples
from hierfl.ratelimit import REJECT_LOG_INTERVAL_S, LogThrottle, suppressed_note
from hierfl.secagg.service import edge_secure_link
from hierfl.security.tier import tier_security
from hierfl.security.trust import edge_party
from hierfl.timeline import Timeline
from hierfl.transport.base import MqttLink
from hierfl.transport.factory import BrokerTransports, Transports
from hierfl.transport.reconnect import Link, reconnect_loop
from hierfl.types import Float32Vector
from hierfl.wire.codec import encode_frame
from hierfl.wire.frames import ModelFrame, TimingSpan, UpdateFrame

if TYPE_CHECKING:
    from hierfl.edge.trainer import EdgeTask

__all__ = ["EdgeClient", "load_task"]

log = logging.getLogger(__name__)


def load_task(spec: str, options: Mapping[str, Any], settings: EdgeSettings) -> EdgeTask:
    """Build the EdgeTask named by ``module:callable``.

    The callable is called as ``fn(edge_id=..., fog_id=..., **options)``.

    Raises:
        ConfigError: if the import path is malformed or cannot be imported.
    """
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"task {spec!r}: expected 'module:callable'")
    try:
        fn = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"task {spec!r} cannot be imported: {exc}") from exc
    task: EdgeTask = fn(edge_id=settings.edge_id, fog_id=settings.fog_id, **dict(options))
    return task


class EdgeClient:
    """An edge device's federated-learning loop, embeddable in a device script.

    Args:
        settings: the edge's settings (fog, id, broker, local epochs, codec).
        task: what to train: a model factory plus a training function or data
            (see :class:`~hierfl.edge.trainer.SupervisedTask`).
        transports: opens the MQTT link (default: the broker of ``settings.mqtt``).
        on_model: ``on_model(version, weights)``, called on the event loop when a new model
            arrives (weights: the parameters as one float32 vector; hierfl/edge/hooks.py).
        evaluate: ``evaluate(model) -> dict[str, float]``, called in the training thread on
            the received model before training; its results are the edge's
            ``hierfl_evaluation`` gauges and end its INFO line.

    Usage::

        settings = EdgeSettings.load(fog_id="line-3", edge_id="press-7")
        client = EdgeClient(settings, SupervisedTask(make_model, x, y))
        asyncio.run(client.run())
    """

    def __init__(self, settings: EdgeSettings, task: EdgeTask, *,
                 transports: Transports | None = None, on_model: ModelHook | None = None,
                 evaluate: EvaluateHook | None = None) -> None:
        self.settings = settings
        self.transports: Transports = transports or BrokerTransports()
        self.task, self._record_ledger = _private_task(settings, task)
        self.model = self.task.build_model()
        #: device-level DP at this edge (clip; untrusted_fog: noise share, own ledger)
        self.privacy = _edge_privacy(settings)
        #: the edge's privacy budget is spent: it sends no more updates (docs/privacy.md)
        self.budget_spent = False
        self.metrics = ServiceMetrics("edge", settings.edge_id)
        self.security = tier_security(
            settings.security, federation=settings.federation,
            party_id=edge_party(settings.fog_id, settings.edge_id),
            tier=f"edge {settings.fog_id}/{settings.edge_id}",
        )
        self.updates_sent = 0
        self.feedback = _feedback(settings, self.metrics)
        #: SCAFFOLD's c_i, used when a model carries the cloud's control variate
        self.scaffold = EdgeControl()
        self._latest: ModelFrame | None = None
        self._new_model = asyncio.Event()
        self._trained: tuple[int, int] | None = None
        # the last update published: ((version, seq) it was trained on, its frame bytes)
        self._last_sent: tuple[tuple[int, int], bytes] | None = None
        self._announced: dict[str, tuple[Any, Any]] = {}  # topic kind -> last (version, seq)
        self._connection = 0  # counts (re)connections
        self._sent_on = 0  # the connection the last update was sent on, or re-sent on
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        # this edge's spans per round (hierfl.timeline): sent with each update
        self.timeline = Timeline(f"{settings.fog_id}/{settings.edge_id}", keep=4,
                                 observer=self.metrics.on_span)
        self.hooks = ModelHooks(f"edge {settings.edge_id}", self.metrics, on_model=on_model,
                                evaluate=evaluate)
        self.metrics.gauge_fn("model_version",
                              lambda: None if self._latest is None else self._latest.version)
        self.metrics.gauge_fn("round_number", lambda: self.updates_sent)
        # (version, seq) -> (arrived, decoded) of the model the trainer will take next
        self._received: dict[tuple[int, int], tuple[float, float]] = {}
        # secagg.mode = "secure": updates leave only masked (hierfl/secagg/service.py)
        self.secagg = edge_secure_link(settings, self.security, self.metrics.reject)

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stop.set()

    async def run(self) -> None:
        """Run until :meth:`stop`, cancellation or ``max_rounds`` updates; reconnect on failure.

        Raises:
            BrokerRefusedError: on a fatal broker error (credentials, certificate) or a broker
                unreachable for ``mqtt.connect_attempts`` tries.
            ConfigError: when the fog's (signed) model does not fit this edge's model.
        """
        s = self.settings
        try:
            async with monitoring(self):  # metrics_port: /metrics, /healthz, /readyz
                await reconnect_loop(
                    f"edge {s.edge_id}", self._run_connected,
                    links=[Link("mqtt", s.mqtt.url, s.mqtt.connect_attempts)],
                    ready=self.ready, stop=self._stop, base_s=s.mqtt.reconnect_base_s,
                    max_s=s.mqtt.reconnect_max_s,
                    on_retry=lambda: self.metrics.inc("reconnects"),
                )
        except* ConfigError as eg:
            log.error("%s", eg.exceptions[0])
            raise eg.exceptions[0] from None

    async def _run_connected(self) -> None:
        s = self.settings
        self._connection += 1
        fed, fog, edge = s.federation, s.fog_id, s.edge_id
        status = topics.status(fed, fog, edge)
        async with self.transports.mqtt(
            s.mqtt, client_id=f"hierfl-edge-{fed}-{fog}-{edge}", will=(status, b"offline"),
            max_frame_bytes=s.limits.max_frame_bytes,
            on_reject=lambda exc, _topic: self.metrics.reject(exc.reason),
        ) as mqtt:
            await mqtt.publish(status, b"online", retain=True)
            feed = self.model_feed = ModelFeed(fed, fog)  # per connection: resubscribes anew
            await mqtt.subscribe(topics.model_delta(fed, fog))
            if self.secagg is not None:
                await self.secagg.attach(mqtt)
            await self._sync_subscriptions(mqtt, feed)
            self.ready.set()
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._receive(mqtt, feed), name=f"edge[{edge}].receive")
                    if self.secagg is not None:
                        tg.create_task(self.secagg.serve(), name=f"edge[{edge}].secagg")
                    train = tg.create_task(self._train_loop(mqtt), name=f"edge[{edge}].train")
                    stopper = tg.create_task(self._stop.wait(), name=f"edge[{edge}].stop")
                    await asyncio.wait([train, stopper], return_when=asyncio.FIRST_COMPLETED)
                    raise _Stopped
            except* _Stopped:
                self._stop.set()
            # an edge whose privacy budget is spent tells its fog so (retained): it counts them
            last = BUDGET_SPENT if self.budget_spent else b"offline"
            with contextlib.suppress(TransportError):
                await asyncio.wait_for(mqtt.publish(status, last, retain=True), 2)

    async def _receive(self, mqtt: MqttLink, feed: ModelFeed) -> None:
        s = self.settings
        # A model (or model delta) must fit this edge's model: its declared size is checked
        # before anything is allocated (ShapeMismatchError, reason validation.shape).
        limits = dataclasses.replace(s.limits.decode_limits(),
                                     expected_params=int(_to_vector(self.model).size))
        throttle = LogThrottle(REJECT_LOG_INTERVAL_S)  # one line per reason per 10 s
        delta_topic = topics.model_delta(s.federation, s.fog_id)
        async for inbound in mqtt.messages():
            if self.secagg is not None and self.secagg.take(inbound.topic, inbound.payload):
                continue
            arrived = time.time()
            kind = DELTA if inbound.topic == delta_topic else FULL
            self.metrics.inc("bytes_down", len(inbound.payload))
            self.metrics.inc(f"bytes_down_{kind}", len(inbound.payload))
            self.metrics.inc(f"frames_down_{kind}")
            try:
                frame = (await offload(self.security.decode, inbound.payload,
                                                 limits=limits)).frame
                await self._resend_in_flight(mqtt, kind, frame)
                model = await offload(feed.on_frame, kind, frame)
            except HierflError as exc:
                if isinstance(exc, ShapeMismatchError) and self.security.enabled:
                    # a model its own fog signed, of another size: this device was given the
                    # wrong task; waiting would never help
                    raise ConfigError(
                        f"edge {s.edge_id}: the model fog {s.fog_id} signed does not fit this "
                        f"edge's model ({exc}): check task and task_options ({s.task})"
                    ) from exc
                self.metrics.reject(exc.reason)  # exact; the log is not
                if (suppressed := throttle.admit(exc.reason)) is not None:
                    log.warning("edge %s: cannot use the frame on %s: %s%s", s.edge_id,
                                inbound.topic, exc, suppressed_note(suppressed, exc.reason))
                model = None
            await self._sync_subscriptions(mqtt, feed)
            if model is not None:
                self._received = {(model.version, model.seq): (arrived, time.time())}
                self.metrics.inc("models_from_delta" if kind == DELTA and model is not frame
                                 else "models_from_full")
                self._latest = model
                self._new_model.set()
                await self.hooks.model_arrived(model.version, model.weights)

    async def _sync_subscriptions(self, mqtt: MqttLink, feed: ModelFeed) -> None:
        """Follow the full model topic exactly while the feed needs it."""
        topic = topics.model(self.settings.federation, self.settings.fog_id)
        if feed.follow_full and not feed.full_subscribed:
            await mqtt.subscribe(topic)  # the broker sends the retained model right away
            feed.full_subscribed = True
            self.metrics.inc("full_model_subscriptions")
        elif not feed.follow_full and feed.full_subscribed:
            await mqtt.unsubscribe(topic)
            feed.full_subscribed = False

    async def _train_loop(self, mqtt: MqttLink) -> None:
        s = self.settings
        while s.max_rounds is None or self.updates_sent < s.max_rounds:
            await self._new_model.wait()
            self._new_model.clear()
            frame = self._latest
            if frame is None or (frame.version, frame.seq) == self._trained:
                continue
            started = time.time()
            # exactly five spans per update (receive, decode, wait, train, encode), whatever
            # arrived meanwhile: the frame's size is the same run to run
            arrived, decoded = self._received.get((frame.version, frame.seq), (started, started))
            self.timeline.take(frame.version)  # spans of an earlier model of this version
            self.timeline.add("edge.receive", frame.version, arrived)
            self.timeline.add("edge.decode", frame.version, arrived, decoded)
            self.timeline.add("edge.wait", frame.version, decoded, started)
            try:
                update = await offload(self._train_on, frame)
                self.timeline.add("edge.train", frame.version, started, time.time())
                data, sent = await offload(self._encode, update)
            except PrivacyBudgetExhaustedError as exc:
                self.budget_spent = True
                self.metrics.set("privacy_budget_spent", 1)
                log.warning("edge %s: privacy budget spent, sending no more updates: %s",
                            s.edge_id, exc)
                return
            except HierflError as exc:
                self.metrics.reject(exc.reason)
                log.warning("edge %s: cannot train on v%d: %s", s.edge_id, frame.version, exc)
                continue
            try:
                publishing = time.time()
                if self.secagg is not None:  # secure region: the fog's SecAgg+ round sends it
                    self.secagg.offer(frame.version, frame.seq, update.delta,
                                      update.num_samples)
                else:
                    await mqtt.publish(topics.update(s.federation, s.fog_id, s.edge_id), data)
                self.metrics.observe("stage", time.time() - publishing, "publish")
            except BaseException:
                if self.feedback is not None and sent is not None:
                    self.feedback.restore(sent)  # not delivered: its mass goes out later
                raise
            self._trained = (frame.version, frame.seq)
            self._last_sent = (self._trained, data)
            self._sent_on = self._connection
            self.updates_sent += 1
            self.metrics.inc("updates_sent")
            self.metrics.inc("bytes_up", len(data))
            # once per round at INFO: model received, trained, sent (what the edge is doing)
            loss = update.metrics.get("train_loss")
            last = self.hooks.last
            log.info("edge %s: model v%d seq %d received, trained on %d samples%s, update "
                     "sent (%d bytes)%s", s.edge_id, frame.version, frame.seq,
                     update.num_samples, "" if loss is None else f" (loss {loss:.4f})",
                     len(data), "" if last is None or last[0] != frame.version else
                     "; evaluated: " + ", ".join(f"{k} {v:.4g}" for k, v in last[1].items()))

    async def _resend_in_flight(self, mqtt: MqttLink, kind: str, frame: Any) -> None:
        """Publish the last update again when the fog announces, once more, the very model it
        was trained on.

        A fog publishes its model again whenever its MQTT session comes back (a broker that
        restarted without persistence lost the retained copy, and what it had not delivered
        yet: perhaps this update). The fog is subscribed by then, so the copy reaches it,
        instead of the round waiting for its deadline. The same bytes are sent: a fog that
        already holds the update refuses the copy (``wire.replay`` when signed, else
        ``validation.duplicate``) and counts it.
        """
        key = (getattr(frame, "version", None), getattr(frame, "seq", None))
        # "again" means on the same topic: every model comes once in full and once on the
        # delta stream, and those two may straddle the update sent meanwhile
        again = self._announced.get(kind) == key
        self._announced[kind] = key
        # ... or for the first time on a connection newer than the one the update went out on
        # (this edge lost its connection too: the fog's re-announcement may have come first)
        reconnected = self._sent_on != self._connection
        last = self._last_sent
        if last is None or key != last[0] or not (again or reconnected):
            return
        self._sent_on = self._connection
        s = self.settings
        await mqtt.publish(topics.update(s.federation, s.fog_id, s.edge_id), last[1])
        self.metrics.inc("updates_resent")
        log.info("edge %s: the fog announced v%d seq %d again; re-sent its update", s.edge_id,
                 *last[0])

    def _encode(self, update: UpdateFrame) -> tuple[bytes, Float32Vector | None]:
        """Encode ``update`` for the wire; with error feedback, also return the vector sent.

        With error feedback the frame carries exactly the fields the residual was computed
        against (not a re-encoding of their decoded vector, which a stochastic codec would
        round differently).
        """
        started = time.time()
        version = update.base_version

        def timing() -> tuple[TimingSpan, ...]:
            # called by encode_frame once the body is compressed: the encode span covers it
            self.timeline.add("edge.encode", version, started, time.time())
            return self.timeline.wire(version, own_party=self.timeline.party)

        if self.feedback is None:
            return encode_frame(update, codec=_codec(self.settings.codec),
                                signer=self.security.signer, timing=timing), None
        fields, sent = self.feedback.compress(update.delta, update.base_version)
        frame = dataclasses.replace(update, delta=sent)
        return encode_frame(frame, codec=PreEncoded(fields, sent),
                            signer=self.security.signer, timing=timing), sent

    @threaded  # the task's code: its time is unknowable, never on the loop
    def _train_on(self, frame: ModelFrame) -> UpdateFrame:
        base = frame.weights
        _load(self.model, base, self.settings.threads)
        self.hooks.run_evaluate(frame.version, self.model)  # the received model, untrained
        if self.privacy is not None:
            self.privacy.check_budget()  # untrusted_fog: nothing is trained past the budget
        # SCAFFOLD's control change is sent in the clear: never beside a private or masked
        # update (it would reveal the update the noise or the masks protect)
        scaffold = (self.settings.privacy.mode == "off" and self.settings.secagg.mode != "secure"
                    and self.scaffold.before(self.task, frame.control))
        result = self.task.train(self.model, self.settings.local_epochs)
        delta = _to_vector(self.model)  # a fresh float32 vector: subtract in place
        control = (self.scaffold.after(self.task, frame.control, base, delta)
                   if scaffold and frame.control is not None else None)
        np.subtract(delta, base, out=delta, dtype=np.float32)
        metrics = {k: float(v) for k, v in result.metrics.items()}
        if self.privacy is not None:
            delta = self.privacy.process(delta)
            metrics.update(self.privacy.metrics())
        _persist_record_account(self.task, self._record_ledger)
        if self.settings.privacy.mode == "record" and "epsilon" in metrics:
            metrics["dp.epsilon"] = metrics["epsilon"]  # the fog and cloud keep the worst
            if is_last_update(self.task, self.settings.local_epochs):
                metrics[LAST_UPDATE_METRIC] = 1.0  # the fog may stop at once (record.py)
        epsilon = metrics.get("dp.epsilon", metrics.get("dp.local_epsilon"))
        if epsilon is not None:
            self.metrics.set("privacy_epsilon", epsilon)
        return UpdateFrame(
            federation=self.settings.federation,
            fog_id=self.settings.fog_id,
            edge_id=self.settings.edge_id,
            base_version=frame.version,
            base_seq=frame.seq,
            num_samples=reported_samples(self.settings.privacy, int(result.num_samples)),
            delta=delta,
            metrics=metrics,
            created_at=time.time(),
            control=control,
        )


#: the retained status of an edge whose privacy budget is spent (its fog counts them)
BUDGET_SPENT = b"budget_spent"


def _edge_privacy(settings: EdgeSettings) -> Any:
    """The edge's device-level DP (None unless trusted_fog or untrusted_fog)."""
    p = settings.privacy
    if p.mode not in ("trusted_fog", "untrusted_fog"):
        return None
    from hierfl.privacy.local import EdgePrivacy  # noqa: PLC0415

    if p.mode == "untrusted_fog" and settings.secagg.mode == "secure":
        # distributed DP: clip only; the Skellam share is added inside SecAgg+ (secagg/ddp.py)
        return EdgePrivacy(p.mode, p.clip_norm, p.noise_multiplier, distributed=True)
    shares = p.expected_updates or 1
    ledger = None
    if p.mode == "untrusted_fog":
        ledger = EdgePrivacy.local_ledger(
            p.ledger_folder(settings.security.state_dir), settings.edge_id,
            noise_multiplier=p.noise_multiplier, shares=shares, delta=p.delta,
            method=p.accountant)
    return EdgePrivacy(p.mode, p.clip_norm, p.noise_multiplier, shares, ledger,
                       p.target_epsilon)


def _private_task(settings: EdgeSettings, task: Any) -> tuple[Any, Any]:
    """Record mode: the task wrapped with DP-SGD (torch only, imported here), its account
    resumed from the edge's ledger when it has a folder for one."""
    p = settings.privacy
    if p.mode != "record":
        return task, None
    from hierfl.privacy.dpsgd import DPSGDTask  # noqa: PLC0415
    from hierfl.privacy.ledger import LEDGER_FILE, PrivacyLedger  # noqa: PLC0415

    if p.target_epsilon is None:
        raise ConfigError("privacy.mode = 'record' needs privacy.target_epsilon: each edge "
                          "stops training on its records once its budget is spent")
    private = DPSGDTask(task, noise_multiplier=p.noise_multiplier, clip_norm=p.clip_norm,
                        delta=p.delta, target_epsilon=p.target_epsilon, method=p.accountant)
    folder = p.ledger_folder(settings.security.state_dir)
    ledger = None
    if folder is not None:
        ledger = PrivacyLedger(folder / LEDGER_FILE, population=settings.edge_id,
                               noise_multiplier=p.noise_multiplier,
                               sample_rate=private.accountant.sample_rate, delta=p.delta,
                               method=p.accountant)
        private.accountant.releases = ledger.releases  # a restart never resets it
    return private, ledger


def _persist_record_account(task: Any, ledger: Any) -> None:
    """Record mode: write the steps the DP-SGD task took to the edge's ledger."""
    accountant = getattr(task, "accountant", None)
    if ledger is None or accountant is None:
        return
    if accountant.releases > ledger.releases:
        ledger.spend(accountant.releases - ledger.releases)


def _to_vector(model: Any) -> Float32Vector:
    """The model's parameters as one float32 vector (torch only for a torch module)."""
    if isinstance(model, VectorModel):
        return model.to_vector()
    from hierfl.model.torch_adapter import model_to_vector  # noqa: PLC0415

    return model_to_vector(model)


def _load(model: Any, vec: Float32Vector, threads: int) -> None:
    """Write ``vec`` into the model (a torch module also gets its thread count)."""
    if isinstance(model, VectorModel):
        model.load(vec)
        return
    import torch  # noqa: PLC0415

    from hierfl.model.torch_adapter import vector_to_model  # noqa: PLC0415

    torch.set_num_threads(threads)
    vector_to_model(model, vec)


def _codec(spec: str) -> str | None:
    return None if spec == "raw" else spec


def _feedback(settings: EdgeSettings, metrics: ServiceMetrics) -> UplinkFeedback | None:
    """The edge's error-feedback memory, if it is on and the codec drops anything."""
    codec = make_codec(settings.codec)
    if not settings.error_feedback or codec.lossless:
        return None
    return UplinkFeedback(codec, path=settings.error_feedback_path,
                          max_gap=settings.error_feedback_max_gap, metrics=metrics)


class _Stopped(Exception):
    pass
