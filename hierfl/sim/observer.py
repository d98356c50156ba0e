"""The sim's observer: watches a federation from the outside and measures every round.

It subscribes to the same topics the tiers use (never to anything private): update frames
on MQTT (edge -> fog bytes), the fogs' model streams and stats on MQTT, aggregates and global
models on Kafka (fog -> cloud and cloud -> fog bytes). Each new global version is
evaluated on the scenario's test set.

It verifies no signatures (it decides nothing; the tiers verify) and signs nothing. On a TLS
broker (``hierfl sim --secure``) it connects with a client certificate of its own, CN
``sim-observer``, which the sim's ACL lets read the federation's topics and write none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hierfl import topics
from hierfl.config import KafkaSettings, MqttSettings
from hierfl.errors import HierflError
from hierfl.optim.personalise import blend
from hierfl.transport.kafka import KafkaConsumerTransport
from hierfl.transport.mqtt import MqttTransport
from hierfl.wire import AggregateFrame, ModelDeltaFrame, ModelFrame, UpdateFrame, decode_frame
from hierfl.wire.signing import unverified_claims

__all__ = ["Observer", "RoundRecord"]


@dataclass
class RoundRecord:
    """What one cloud round (version v-1 -> v) cost and produced."""

    round: int
    version: int
    accuracy: float
    loss: float
    wall_s: float
    edge_fog_bytes: int
    fog_cloud_bytes: int
    cloud_edge_bytes: int
    updates: int
    accepted: int
    rejected: dict[str, int]
    fogs: dict[str, int] = field(default_factory=dict)
    #: differential privacy: the federation's epsilon after this version (None: DP off)
    epsilon: float | None = None
    #: per region (fog): accuracy and loss of the model its edges use, on its held-out data
    regions: dict[str, dict[str, float]] = field(default_factory=dict)


class Observer:
    """Measure a running federation.

    Args:
        federation: the federation id.
        fog_edges: fog id -> number of edges subscribed to it (for downlink bytes).
        mqtt: MQTT connection settings.
        kafka: Kafka connection settings.
        evaluate: ``weights -> (accuracy, loss)``, run off the event loop.
        on_round: called with each new :class:`RoundRecord`.
        evaluate_regions: ``weights -> {fog: (accuracy, loss)}`` (per-region metrics,
            :mod:`hierfl.sim.regions`); None: none.
        personalise_alpha: the fogs' personalisation (hierfl/optim/personalise.py): each
            region is then evaluated with the regional model its fog serves, rebuilt here
            from the global models and the fogs' aggregates; None: the global model.
    """

    def __init__(
        self,
        federation: str,
        fog_edges: dict[str, int],
        mqtt: MqttSettings,
        kafka: KafkaSettings,
        evaluate: Callable[[np.ndarray], tuple[float, float]],
        on_round: Callable[[RoundRecord], None] | None = None,
        evaluate_regions: Callable[[np.ndarray], dict[str, tuple[float, float]]] | None = None,
        personalise_alpha: float | None = None,
    ) -> None:
        self.evaluate_regions = evaluate_regions
        self.personalise_alpha = personalise_alpha
        self._region_start: dict[str, np.ndarray] = {}  # fog -> the model it served last
        self._agg_delta: dict[tuple[int, str], np.ndarray] = {}  # (base, fog) -> its delta
        self._last_global: np.ndarray | None = None
        self.federation = federation
        self.fog_edges = fog_edges
        self.mqtt = mqtt
        self.kafka = kafka
        self.evaluate = evaluate
        self.on_round = on_round
        self.records: list[RoundRecord] = []
        self.initial: tuple[float, float] | None = None
        self.version = -1
        #: the cloud published its final model: the privacy budget stopped the federation
        self.privacy_stopped = False
        self.ready = asyncio.Event()
        self._up: Counter[int] = Counter()
        self._updates: Counter[int] = Counter()
        self._agg: Counter[int] = Counter()
        self._down: Counter[int] = Counter()
        self._fogs: dict[int, dict[str, int]] = defaultdict(dict)
        self._stats: dict[str, dict[str, Any]] = {}
        self._last_t = time.monotonic()
        self.changed = asyncio.Event()

    async def run(self) -> None:
        """Observe until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_mqtt(), name="observer.mqtt")
            tg.create_task(self._watch_models(), name="observer.models")
            tg.create_task(self._watch_aggregates(), name="observer.aggregates")

    async def _watch_mqtt(self) -> None:
        fed = self.federation
        async with MqttTransport(self.mqtt, client_id=f"hierfl-sim-observer-{fed}") as m:
            for fog in self.fog_edges:
                await m.subscribe(topics.update_filter(fed, fog))
                await m.subscribe(topics.model_delta(fed, fog))
                await m.subscribe(topics.stats(fed, fog))
            self.ready.set()
            async for inbound in m.messages():
                try:
                    t = topics.parse_mqtt(inbound.topic)
                except HierflError:
                    continue
                if t.kind == "stats":
                    with contextlib.suppress(ValueError):
                        self._stats[t.fog] = json.loads(inbound.payload)
                    continue
                # A signed frame's round is in its signature block: no need to decompress a
                # multi-megabyte body on the machine the federation runs on (measurement only:
                # hostile traffic is the fogs' business; they verify and count it)
                claims = unverified_claims(inbound.payload)
                if claims is not None and claims.kind == "update":
                    self._up[claims.base] += len(inbound.payload)
                    self._updates[claims.base] += 1
                    continue
                if claims is not None and claims.kind in ("model", "model_delta"):
                    if t.kind == "delta":
                        self._down[claims.base] += len(inbound.payload) * self.fog_edges.get(
                            t.fog, 0)
                    continue
                try:
                    frame = await asyncio.to_thread(decode_frame, inbound.payload)
                except HierflError:
                    continue  # hostile traffic is the fogs' business; they count it
                if isinstance(frame, UpdateFrame):
                    self._up[frame.base_version] += len(inbound.payload)
                    self._updates[frame.base_version] += 1
                elif isinstance(frame, ModelFrame | ModelDeltaFrame) and t.kind == "delta":
                    # Every edge of that fog receives each model once, on the model stream (a
                    # delta, or the full model); the retained full model goes only to edges
                    # that join or fell behind, which an observer cannot see: not counted.
                    n = self.fog_edges.get(t.fog, 0)
                    self._down[frame.version] += len(inbound.payload) * n

    async def _kafka_frames(self, topic: str,
                            client_id: str) -> AsyncIterator[tuple[Any, Any]]:
        """Every valid frame on a Kafka topic from the beginning (junk is skipped)."""
        async with KafkaConsumerTransport(self.kafka, topic, client_id=client_id,
                                          start="earliest") as c:
            async for inbound in c.messages():
                if not inbound.payload:
                    continue
                try:
                    frame = await asyncio.to_thread(decode_frame, inbound.payload)
                except HierflError:
                    continue
                yield inbound, frame

    async def _watch_aggregates(self) -> None:
        async for inbound, frame in self._kafka_frames(topics.aggregates(self.federation),
                                                       "hierfl-sim-observer"):
            if isinstance(frame, AggregateFrame):
                self._agg[frame.base_version] += len(inbound.payload)
                self._fogs[frame.base_version][frame.fog_id] = len(frame.contributors)
                if self.personalise_alpha is not None:
                    self._agg_delta[(frame.base_version, frame.fog_id)] = frame.delta

    async def _watch_models(self) -> None:
        async for inbound, frame in self._kafka_frames(topics.models(self.federation),
                                                       "hierfl-sim-observer-m"):
            if not isinstance(frame, ModelFrame) or frame.version <= self.version:
                continue
            now = time.monotonic()
            acc, loss = await asyncio.to_thread(self.evaluate, frame.weights)
            # each fog consumes the global model once from Kafka
            self._down[frame.version] += len(inbound.payload) * len(self.fog_edges)
            if frame.version == 0 or self.version < 0:
                self._last_global = frame.weights
                self.initial = (acc, loss)
                self.version = frame.version
                self._last_t = now
                self.changed.set()
                continue
            v = frame.version
            # The aggregates are read by another consumer: let it catch up with this round.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    while len(self._fogs[v - 1]) < len(self.fog_edges):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
            # Fogs count accepted/rejected per base version on their stats topic (MQTT):
            # wait briefly until every fog's count covers the contributors it forwarded.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    while not all(self._by_version(f, v - 1)["accepted"] >= n  # noqa: ASYNC110
                                  for f, n in self._fogs[v - 1].items()):
                        await asyncio.sleep(0.01)
            accepted = 0
            rej: Counter[str] = Counter()
            for fog in self.fog_edges:
                bv = self._by_version(fog, v - 1)
                accepted += int(bv["accepted"])
                rej.update({k: int(n) for k, n in bv["rejected"].items()})
            rec = RoundRecord(
                round=v,
                version=v,
                accuracy=acc,
                loss=loss,
                wall_s=now - self._last_t,
                edge_fog_bytes=self._up[v - 1],
                fog_cloud_bytes=self._agg[v - 1],
                cloud_edge_bytes=self._down[v - 1],
                updates=self._updates[v - 1],
                accepted=accepted,
                rejected={k: n for k, n in rej.items() if n},
                fogs=dict(self._fogs[v - 1]),
                epsilon=frame.metrics.get("dp.epsilon"),
                regions=await asyncio.to_thread(self._regions, frame.weights, v),
            )
            if frame.metrics.get("dp.stopped"):
                self.privacy_stopped = True
            self._last_t = now
            self.version = v
            self.records.append(rec)
            if self.on_round:
                self.on_round(rec)
            self.changed.set()

    def _regions(self, weights: np.ndarray, version: int) -> dict[str, dict[str, float]]:
        """Each region's accuracy and loss with the model its edges use from ``version`` on:
        the global model, or with personalisation the fog's blend (as the fog computes it)."""
        alpha = self.personalise_alpha
        prev, self._last_global = self._last_global, weights
        if self.evaluate_regions is None:
            return {}
        shared = self.evaluate_regions(weights) if alpha is None else None
        out: dict[str, dict[str, float]] = {}
        for fog in self.fog_edges:
            if shared is not None:
                acc, loss = shared[fog]
            else:
                assert alpha is not None
                start = self._region_start.get(fog, prev)
                delta = self._agg_delta.pop((version - 1, fog), None)
                regional = (None if start is None or delta is None
                            else (start + delta).astype(np.float32))
                served = blend(weights, regional, alpha)
                self._region_start[fog] = served
                acc, loss = self.evaluate_regions(served)[fog]
            out[fog] = {"accuracy": acc, "loss": loss}
        return out

    def diagnosis(self) -> str:
        """Where every fog stands, from its stats topic and the aggregates seen (for a stall)."""
        v = max(self.version, 0)
        parts = [f"aggregates for v{v} seen from {sorted(self._fogs[v]) or 'no fog'}"]
        for fog in self.fog_edges:
            st = self._stats.get(fog)
            if st is None:
                parts.append(f"{fog}: no stats published")
                continue
            c = st.get("counters", {})
            parts.append(
                f"{fog}: state={st.get('state')} version={st.get('version')} seq={st.get('seq')} "
                f"accepted={c.get('accepted', 0)} forwarded={c.get('aggregates_forwarded', 0)} "
                f"skipped={c.get('rounds_skipped', 0)} rejected={st.get('rejected', {})} "
                f"by_version={st.get('by_version', {}).get(str(v), {})}"
            )
        return "; ".join(parts)

    def fog_rejected(self) -> dict[str, dict[str, int]]:
        """Every fog's rejected-input counters by reason, from its latest stats message."""
        out: dict[str, dict[str, int]] = {}
        for fog in self.fog_edges:
            rejected = self._stats.get(fog, {}).get("rejected", {})
            out[fog] = ({str(k): int(n) for k, n in rejected.items()}
                        if isinstance(rejected, dict) else {})
        return out

    def _by_version(self, fog: str, version: int) -> dict[str, Any]:
        """One fog's accepted/rejected counts for updates against ``version`` (0 when unseen)."""
        rec = self._stats.get(fog, {}).get("by_version", {}).get(str(version))
        if not isinstance(rec, dict):
            return {"accepted": 0, "rejected": {}}
        rejected = rec.get("rejected")
        return {"accepted": rec.get("accepted", 0) if isinstance(rec.get("accepted"), int) else 0,
                "rejected": rejected if isinstance(rejected, dict) else {}}

    async def wait_version(self, version: int, timeout: float | None = None) -> None:
        """Wait until ``version`` has been observed and evaluated."""
        async with asyncio.timeout(timeout):
            while self.version < version:
                self.changed.clear()
                await self.changed.wait()
