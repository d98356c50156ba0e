"""One simulated federation: the real cloud, fog and edge services on in-memory brokers, a
virtual clock, and faults planned from a seed.

:func:`run_seed` is the whole of one run: it draws a topology, settings and a fault plan from
the seed (:func:`plan_for`), runs the services (:class:`~hierfl.cloud.service.CloudService`,
:class:`~hierfl.fog.service.FogService`, :class:`~hierfl.edge.client.EdgeClient` with numpy
trainers) over :class:`~hierfl.transport.memory.MemoryMqttBroker` and
:class:`~hierfl.transport.memory.MemoryKafkaBroker` on a
:class:`~hierfl.simtest.loop.VirtualLoop`, carries out the plan (message faults, process
crashes with restart from the process's files, broker restarts with and without persistence,
fog-cloud partitions, slow and silent edges), then heals everything and requires progress. The
:class:`~hierfl.simtest.ledger.Ledger` checks the invariants after every step and at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import gc
import hashlib
import logging
import random
import shutil
import tempfile
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hierfl.cloud.service import CloudService
from hierfl.config import CloudSettings, EdgeSettings, FogSettings
from hierfl.edge.client import EdgeClient
from hierfl.edge.result import TrainResult
from hierfl.edge.vector import VectorModel
from hierfl.fog.service import FogService
from hierfl.offload import use_runner
from hierfl.simtest.ledger import Ledger, Violation
from hierfl.simtest.loop import Deadlock, VirtualLoop
from hierfl.transport.factory import MemoryTransports
from hierfl.transport.faults import Envelope, Fault, random_faults
from hierfl.transport.memory_kafka import MemoryKafkaBroker
from hierfl.transport.memory_mqtt import MemoryMqttBroker

__all__ = ["FaultEvent", "Plan", "SeedResult", "plan_for", "run_seed"]

# The process a task belongs to: every task a service creates inherits it, so a crash can
# kill them all (a step the service shielded from cancellation dies with its process too).
_PROC: contextvars.ContextVar[str | None] = contextvars.ContextVar("simtest_proc",
                                                                  default=None)

FED = "sim"
PARAMS = 16
START = 1000.0  # the virtual clock at the start (plan and trace times are relative to it)


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One planned fault: at virtual time ``at``, ``kind`` on ``target`` for ``duration`` s."""

    at: float
    kind: str  # crash | mqtt_restart | kafka_restart | partition | release
    target: str = ""
    duration: float = 0.0
    persist: bool = True

    def describe(self) -> str:
        extra = f" for {self.duration:.1f}s" if self.duration else ""
        keep = "" if self.persist else " (without persistence)"
        return f"t={self.at:7.2f} {self.kind} {self.target}{extra}{keep}"


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one seed decides: topology, settings, message-fault rates and fault events."""

    seed: int
    fogs: dict[str, tuple[str, ...]]
    k2: int
    min_fogs: int
    min_updates: dict[str, int]
    quorum: dict[str, int]
    max_staleness: int
    signed: bool
    fog_timeout_s: float
    cloud_timeout_s: float
    resend_after_s: float
    train_s: dict[str, float]  # mean training time per edge
    mqtt_faults: tuple[float, float, float]  # drop, duplicate, delay
    kafka_faults: tuple[float, float, float]
    events: tuple[FaultEvent, ...]
    fault_end: float
    progress: int  # new global versions required after healing
    codec: str = "raw"  # the edges' update codec

    def describe(self) -> str:
        lines = [
            f"seed {self.seed}: fogs {dict(self.fogs)}, k2 {self.k2}, min_fogs {self.min_fogs}, "
            f"min_updates {self.min_updates}, quorum {self.quorum}, max_staleness "
            f"{self.max_staleness}, signed {self.signed}, codec {self.codec}",
            f"  timeouts fog {self.fog_timeout_s}s cloud {self.cloud_timeout_s}s, resend after "
            f"{self.resend_after_s}s; mqtt faults (drop, dup, delay) {self.mqtt_faults}, kafka "
            f"{self.kafka_faults}; faults until t={self.fault_end}",
        ]
        lines += [f"  {e.describe()}" for e in self.events]
        return "\n".join(lines)


def plan_for(seed: int, *, faults: bool = True) -> Plan:
    """Draw one run's plan from ``seed`` (``faults=False``: the same federation, no faults)."""
    rng = random.Random(seed)
    n_fogs = rng.choice((1, 2, 2, 3))
    fogs = {f"f{i}": tuple(f"e{j}" for j in range(rng.randint(1, 4))) for i in range(n_fogs)}
    min_updates = {f: rng.randint(1, len(es)) for f, es in fogs.items()}
    quorum = {f: rng.randint(1, min_updates[f]) for f in fogs}
    edges = [f"{f}/{e}" for f, es in fogs.items() for e in es]
    train_s = {e: rng.choice((0.5, 1.0, 2.0, 5.0)) for e in edges}
    if edges and rng.random() < 0.3:
        train_s[rng.choice(edges)] = 25.0  # a slow edge: slower than the fog's deadline
    fog_timeout = rng.choice((8.0, 15.0))
    fault_end = 100.0
    rest = random.Random(seed * 2)  # drawn whether or not there are faults
    k2, min_fogs = rest.choice((1, 1, 2)), rest.randint(1, n_fogs)
    # edge->fog codec: lossy ones keep error-feedback state on disk across crashes (int8
    # without stochastic rounding: its noise comes from OS entropy, not the seed)
    codec = rest.choice(("raw", "raw", "topk:fraction=0.25", "int8:stochastic=false"))
    max_staleness, signed = rest.choice((0, 0, 1)), rest.random() < 0.6
    cloud_timeout, resend = rest.choice((20.0, 40.0)), rest.choice((30.0, 60.0))
    events: list[FaultEvent] = []
    procs = ["cloud", *(f"fog/{f}" for f in fogs), *(f"edge/{e}" for e in edges)]
    mqtt_f = kafka_f = (0.0, 0.0, 0.0)
    if faults:
        rng = random.Random(seed * 2 + 1)  # its own stream: faults=False keeps the federation
        mqtt_f = (rng.choice((0.0, 0.0, 0.01, 0.03)), rng.choice((0.0, 0.02, 0.05)),
                  rng.choice((0.0, 0.02, 0.05)))
        kafka_f = (rng.choice((0.0, 0.0, 0.02)), rng.choice((0.0, 0.02)),
                   rng.choice((0.0, 0.0, 0.02)))
        t = rng.uniform(0.0, 20.0)
        while t < fault_end:
            kind = rng.choices(("crash", "mqtt_restart", "kafka_restart", "partition", "release"),
                               weights=(5, 1, 1, 1, 3))[0]
            if kind == "crash":
                # fogs hold the most state: they crash more often than their share
                fog_procs = [q for q in procs if q.startswith("fog/")]
                target = rng.choice(fog_procs if rng.random() < 0.4 else procs)
                # a silent edge: down for long
                down = rng.choice((0.0, 1.0, 5.0, 30.0, 120.0 if target.startswith("edge") else 8))
                events.append(FaultEvent(t, kind, target, down))
            elif kind in ("mqtt_restart", "kafka_restart"):
                events.append(FaultEvent(t, kind, "", rng.choice((0.0, 3.0, 15.0)),
                                         persist=rng.random() < 0.6))
            elif kind == "partition" and n_fogs:
                events.append(FaultEvent(t, kind, f"fog/{rng.choice(list(fogs))}",
                                         rng.choice((5.0, 30.0, 90.0))))
            else:
                events.append(FaultEvent(t, "release"))
            t += rng.expovariate(1 / 8.0)
    return Plan(
        seed=seed, fogs=fogs, k2=k2, min_fogs=min_fogs,
        min_updates=min_updates, quorum=quorum, max_staleness=max_staleness,
        signed=signed, fog_timeout_s=fog_timeout,
        cloud_timeout_s=cloud_timeout, resend_after_s=resend,
        train_s=train_s, mqtt_faults=mqtt_f, kafka_faults=kafka_f, events=tuple(events),
        codec=codec,
        fault_end=fault_end if faults else 0.0, progress=2,
    )


@dataclass(slots=True)
class SeedResult:
    """What one seed did: ok or the first violation, and what happened."""

    seed: int
    ok: bool
    violation: str | None
    versions: int
    virtual_s: float
    steps: int
    wall_s: float
    stats: dict[str, int] = field(default_factory=dict)
    plan: str = ""
    trace: str = ""
    digest: str = ""


class _SimTask:
    """A numpy 'trainer': pulls the model toward this edge's own target (deterministic)."""

    def __init__(self, target: np.ndarray, samples: int) -> None:
        self.target = target
        self.samples = samples

    def build_model(self) -> VectorModel:
        return VectorModel(np.zeros(PARAMS, np.float32))

    def train(self, model: VectorModel, epochs: int) -> TrainResult:
        model.weights = (model.weights + 0.5 * (self.target - model.weights)).astype(np.float32)
        return TrainResult(num_samples=self.samples, metrics={"train_loss": 1.0})


@dataclass(slots=True)
class _Proc:
    name: str
    make: Callable[[MemoryTransports], Any]
    service: Any = None
    task: asyncio.Task[None] | None = None
    incarnation: int = 0
    tasks: weakref.WeakSet[asyncio.Task[Any]] = field(default_factory=weakref.WeakSet)
    mqtt_ids: set[str] = field(default_factory=set)
    kafka_ids: set[str] = field(default_factory=set)
    exited: BaseException | None = None


class World:
    """The brokers, the processes and the fault driver of one seed."""

    def __init__(self, plan: Plan, root: Path, *, mutate: str | None = None) -> None:
        self.plan = plan
        self.root = root
        self.mutate = mutate
        self.rng = random.Random(plan.seed * 7919 + 1)
        self.faults_on = True
        drop, dup, delay = plan.mqtt_faults
        kdrop, kdup, kdelay = plan.kafka_faults
        self.mqtt = MemoryMqttBroker(max_queued_messages=1000,
                                     faults=self._hook("mqtt", drop, dup, delay))
        self.kafka = MemoryKafkaBroker(faults=self._hook("kafka", kdrop, kdup, kdelay))
        self.ledger = Ledger(plan)
        self.ledger.note = self.note
        self.trace: deque[str] = deque(maxlen=200)
        self.procs: dict[str, _Proc] = {}
        self._build()

    # --- message faults -----------------------------------------------------------------

    def _hook(self, link: str, drop: float, dup: float, delay: float) -> Callable[[Envelope],
                                                                                   Fault]:
        pick = random_faults(random.Random(self.plan.seed * 31 + (1 if link == "mqtt" else 2)),
                             drop=drop, duplicate=dup, delay=delay)

        def hook(env: Envelope) -> Fault:
            return pick(env) if self.faults_on else Fault.DELIVER

        return hook

    # --- processes ----------------------------------------------------------------------

    def _build(self) -> None:
        plan, root = self.plan, self.root
        prov = None
        if plan.signed:
            from hierfl.sim.pki import provision_sim  # noqa: PLC0415

            prov = provision_sim(FED, plan.fogs, root, mqtt_url="mqtt://sim:1883",
                                 bootstrap="sim:9092", tls=False)
        from hierfl.sim.pki import security_section  # noqa: PLC0415

        sec = functools.partial(security_section, prov)
        init = root / "init.npz"
        np.savez(init, w=np.zeros(PARAMS, np.float32))
        kafka = {"bootstrap": "sim:9092", "connect_attempts": None}
        mqtt = {"url": "mqtt://sim:1883", "connect_attempts": None}
        cloud_s = CloudSettings.load(
            federation=FED, kafka=kafka, fogs=list(plan.fogs), min_fogs=plan.min_fogs,
            round_timeout_s=plan.cloud_timeout_s, store_dir=root / "store", initial_model=init,
            keep_versions=4, security=sec("cloud"), log_level="ERROR",
        )
        self._add("cloud", lambda t: CloudService(cloud_s, clock=_now, transports=t))
        for f, edges in plan.fogs.items():
            fog_s = FogSettings.load(
                federation=FED, fog_id=f, mqtt=mqtt, kafka=kafka, security=sec(f"fog/{f}"),
                min_updates=plan.min_updates[f], quorum=plan.quorum[f], k2=plan.k2,
                round_timeout_s=plan.fog_timeout_s, max_staleness=plan.max_staleness,
                aggregator="fedavg", resume_wait_s=0.5, resend_after_s=plan.resend_after_s,
                spool_dir=None if self.mutate == "no-spool" else root / f"spool-{f}",
                log_level="ERROR",
            )
            self._add(f"fog/{f}", functools.partial(_make_fog, fog_s))
            for i, e in enumerate(edges):
                edge_s = EdgeSettings.load(
                    federation=FED, fog_id=f, edge_id=e, mqtt=mqtt,
                    security=sec(f"edge/{f}/{e}"), log_level="ERROR", codec=plan.codec,
                    error_feedback_path=root / f"ef-{f}-{e}.npz")
                target = np.random.default_rng([self.plan.seed, len(self.procs)]).standard_normal(
                    PARAMS).astype(np.float32)
                task = _SimTask(target, samples=10 * (i + 1))
                self._add(f"edge/{f}/{e}", functools.partial(_make_edge, edge_s, task))

    def _add(self, name: str, make: Callable[[MemoryTransports], Any]) -> None:
        self.procs[name] = _Proc(name, make)

    def start(self, name: str) -> None:
        p = self.procs[name]
        if p.task is not None and not p.task.done():
            return
        p.incarnation += 1
        p.exited = None

        def opened(link: str, client_id: str) -> None:
            (p.mqtt_ids if link == "mqtt" else p.kafka_ids).add(client_id)

        p.service = p.make(MemoryTransports(self.mqtt, self.kafka, on_open=opened))
        self.ledger.watch(name, p.incarnation, p.service)
        ctx = contextvars.copy_context()
        ctx.run(_PROC.set, name)
        p.task = asyncio.get_running_loop().create_task(self._run(p), name=name, context=ctx)
        self.note(f"start {name} #{p.incarnation}")

    async def _run(self, p: _Proc) -> None:
        try:
            await p.service.run()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 (a service that dies on its own is a finding)
            p.exited = exc
            if self.ledger.failed is None:
                self.ledger.record(f"{p.name} #{p.incarnation} exited: {type(exc).__name__}: "
                                   f"{_describe(exc)}")

    async def crash(self, name: str) -> None:
        """kill -9: connections cut uncleanly (last wills fire), the task is gone; files stay."""
        p = self.procs[name]
        if p.task is None or p.task.done():
            return
        for cid in p.mqtt_ids:
            self.mqtt.drop_client(cid)
        self.kafka.partition(p.kafka_ids)  # its Kafka connections die with it
        doomed = [t for t in p.tasks if not t.done()]
        for t in doomed:
            t.cancel()
        for t in doomed:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.kafka.heal(p.kafka_ids)
        self.ledger.crashed(name)
        self.note(f"crash {name} #{p.incarnation}")

    def task_factory(self, loop: asyncio.AbstractEventLoop, coro: Any,
                     context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        """The loop's task factory: records which process each task belongs to."""
        assert isinstance(loop, VirtualLoop)
        task = loop.new_task(coro, context)
        owner = (context.get(_PROC) if context is not None else _PROC.get())
        if owner is not None and owner in self.procs:
            self.procs[owner].tasks.add(task)
        return task

    def note(self, text: str) -> None:
        self.trace.append(f"t={_now() - START:8.2f} {text}")

    # --- the run ------------------------------------------------------------------------

    async def main(self) -> None:
        plan = self.plan
        for name in self.procs:
            self.start(name)
        pending: list[asyncio.Task[None]] = []
        t0 = _now()  # plan times are relative to the start
        for ev in plan.events:
            await _sleep_until(t0 + ev.at)
            pending.append(asyncio.get_running_loop().create_task(self._fault(ev)))
            self.ledger.check_bounds()
        await _sleep_until(t0 + plan.fault_end)
        # heal: no more faults, everything back, held messages delivered
        self.faults_on = False
        for t in pending:
            t.cancel()
        for t in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if not self.mqtt.running:
            self.mqtt.start()
        if not self.kafka.running:
            self.kafka.start()
        self.kafka.heal()
        self.mqtt.release_delayed()
        for name in self.procs:
            self.start(name)
        self.note("healed")
        start_v = self.ledger.newest_version
        budget = (plan.progress + 2) * (plan.cloud_timeout_s + plan.k2 * plan.fog_timeout_s * 2
                                        + plan.resend_after_s + 60.0) + 60.0
        deadline = _now() + budget
        while self.ledger.newest_version < start_v + plan.progress and _now() < deadline:
            await asyncio.sleep(1.0)
            self.mqtt.release_delayed()
            self.ledger.check_bounds()
            if self.ledger.failed:
                return
        if self.ledger.newest_version < start_v + plan.progress:
            self.ledger.fail(
                f"stall: {budget:.0f} s after healing the cloud is at v"
                f"{self.ledger.newest_version} (was v{start_v}; needs "
                f"{plan.progress} more); {self._states()}")
            return
        # every fog converges to the newest version
        target = self.ledger.newest_version
        until = _now() + 30.0
        while _now() < until and not self._converged(target):  # noqa: ASYNC110 (polls state)
            await asyncio.sleep(0.5)
        if not self._converged(target):
            self.ledger.fail(f"fogs did not converge to v{target}: {self._states()}")
            return
        self.ledger.check_final(self.procs)

    def _converged(self, version: int) -> bool:
        return all(p.service.round.version is not None and p.service.round.version >= version
                   for n, p in self.procs.items() if n.startswith("fog/"))

    def _states(self) -> str:
        out = []
        for n, p in self.procs.items():
            if n.startswith("fog/"):
                r = p.service.round
                out.append(f"{n}: v{r.version} seq {r.seq} {r.state.value} pending "
                           f"{list(r.pending)}")
            elif n == "cloud":
                out.append(f"cloud: v{p.service.round.version} reported "
                           f"{list(p.service.round.reported)}")
        return "; ".join(out)

    async def _fault(self, ev: FaultEvent) -> None:
        self.note(ev.describe())
        if ev.kind == "crash":
            await self.crash(ev.target)
            await asyncio.sleep(ev.duration)
            self.start(ev.target)
        elif ev.kind == "mqtt_restart":
            self.mqtt.stop(persist=ev.persist)
            await asyncio.sleep(ev.duration)
            self.mqtt.start()
        elif ev.kind == "kafka_restart":
            self.kafka.stop(persist=ev.persist)
            await asyncio.sleep(ev.duration)
            self.kafka.start()
        elif ev.kind == "partition":
            ids = self.procs[ev.target].kafka_ids
            self.kafka.partition(ids)
            await asyncio.sleep(ev.duration)
            self.kafka.heal(ids)
        elif ev.kind == "release":
            self.mqtt.release_delayed()


def _make_fog(settings: FogSettings, transports: MemoryTransports) -> FogService:
    return FogService(settings, clock=_now, transports=transports)


def _make_edge(settings: EdgeSettings, task: _SimTask,
               transports: MemoryTransports) -> EdgeClient:
    return EdgeClient(settings, task, transports=transports)


def _describe(exc: BaseException) -> str:
    """An exception and, for a group, its first leaf."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _now() -> float:
    return asyncio.get_running_loop().time()


async def _sleep_until(t: float) -> None:
    delay = t - _now()
    if delay > 0:
        await asyncio.sleep(delay)


def _runner(rng: random.Random, train_s: Callable[[Any], float | None]) -> Any:
    """Offloaded work runs inline, then takes a seeded slice of virtual time."""

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        slow = train_s(fn)
        await asyncio.sleep(rng.expovariate(1 / slow) if slow else rng.choice((0.0, 0.001,
                                                                               0.01)))
        return result

    return run


def run_seed(seed: int, *, faults: bool = True, mutate: str | None = None,
             root: Path | None = None, keep: bool = False) -> SeedResult:
    """Run one seed to the end; never raises for a finding (it is in the result).

    Args:
        seed: the seed (the whole run is a function of it).
        faults: False runs the same federation without faults.
        mutate: a deliberate bug, to prove the checks catch it (``"no-spool"``: fogs
            without a spool).
        root: where the processes' files go (default: a temporary folder, in /dev/shm if
            present).
        keep: keep the files.
    """
    plan = plan_for(seed, faults=faults)
    shm = Path("/dev/shm")  # noqa: S108 (a private mkdtemp inside; memory-backed is faster)
    base = shm if shm.is_dir() else None
    folder = root or Path(tempfile.mkdtemp(prefix=f"hierfl-simtest-{seed}-", dir=base))
    random.seed(seed)  # reconnect backoff jitter uses the module's generator
    # No cyclic GC during the run: a collection at an allocation-dependent moment finalizes
    # async generators (scheduling callbacks), which would make runs differ; cycles are
    # collected after the loop is closed.
    gc.collect()
    gc.freeze()  # what exists now (modules, the last seeds' leftovers) is not scanned again
    gc.disable()
    started = time.perf_counter()
    world_box: list[World] = []
    def on_step() -> None:
        if world_box:
            world_box[0].ledger.on_step()

    loop = VirtualLoop(start=START, on_step=on_step)
    logging.disable(logging.CRITICAL)
    violation: str | None = None
    try:
        world = World(plan, folder, mutate=mutate)
        world_box.append(world)
        loop.set_task_factory(world.task_factory)  # type: ignore[arg-type]
        world.ledger.clock = loop.time
        edge_train = {n.removeprefix("edge/"): s for n, s in plan.train_s.items()}
        train_of: dict[int, float] = {}

        def train_s(fn: Callable[..., Any]) -> float | None:
            owner = getattr(fn, "__self__", None)
            if isinstance(owner, EdgeClient) and fn.__name__ == "_train_on":
                key = id(owner)
                if key not in train_of:
                    s = owner.settings
                    train_of[key] = edge_train.get(f"{s.fog_id}/{s.edge_id}", 1.0)
                return train_of[key]
            return None

        async def body() -> None:
            use_runner(_runner(random.Random(seed * 13 + 5), train_s))
            failed = asyncio.Event()
            world.ledger.on_fail = failed.set
            main = asyncio.get_running_loop().create_task(world.main())
            stop = asyncio.get_running_loop().create_task(failed.wait())
            try:
                await asyncio.wait([main, stop], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (main, stop):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Violation):
                        await t
                for name in list(world.procs):
                    await world.crash(name)

        try:
            loop.run_until_complete(body())
        except Violation as exc:
            violation = str(exc)
        except Deadlock as exc:
            violation = f"deadlock: {exc}"
        if violation is None and world.ledger.failed:
            violation = world.ledger.failed
        stats = {**{f"mqtt_{k}": v for k, v in world.mqtt.stats.items()},
                 **{f"kafka_{k}": v for k, v in world.kafka.stats.items()},
                 **world.ledger.counts}
        result = SeedResult(
            seed=seed, ok=violation is None, violation=violation,
            versions=world.ledger.newest_version, virtual_s=loop.time() - START,
            steps=loop.steps, wall_s=time.perf_counter() - started, stats=stats,
            plan=plan.describe(), trace="\n".join(world.trace),
            digest=hashlib.blake2b(repr(sorted(world.ledger.saved.items())).encode(),
                                   digest_size=8).hexdigest(),
        )
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        gc.enable()
        gc.collect()
        logging.disable(logging.NOTSET)
        if not keep and root is None:
            shutil.rmtree(folder, ignore_errors=True)
    return result
