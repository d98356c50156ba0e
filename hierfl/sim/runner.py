"""``hierfl sim``: a whole federation on one machine, measured round by round.

Starts the brokers it needs (unless pointed at existing ones), then the cloud, the fogs
and the edges, either as separate OS processes running ``hierfl cloud|fog|edge`` (the
deployable services; the default) or in this process (fast, for tests). An
:class:`~hierfl.sim.observer.Observer` measures each round from the outside. Every
process and broker started here is stopped on the way out, Ctrl-C included.

Processes mode forks the edges from an edge zygote (:mod:`hierfl.sim.zygote`; ``SimConfig.zygote``,
``--no-zygote`` for plain ``hierfl edge`` processes): one process imports torch and the
edge's modules once and forks one child per edge, each a separate process with its own pid,
process group, environment, log and MQTT session, stopped like any other child. The zygote is
started first, so that its imports overlap this process's own start-up (torch for the initial
model, brokers, provisioning, observer, cloud and fogs, the data file). The scenario's data is
computed once and written to ``<out>/data.npz``, which every edge reads (no scikit-learn in
the edges). ``<out>/startup.json`` records when each start-up phase ended and every child's pid.

Security (``SimConfig.security``): every run is provisioned (``hierfl provision``'s API, into
``<out>/pki``) and every frame is signed and verified ("signed", the default). "secure" adds
TLS: the federation is provisioned with a CA, and the sim's own mosquitto serves mutual TLS with
the provisioned ACL; edges and fogs connect with their kits' certificates. Kafka stays
PLAINTEXT: Tansu has no TLS or SASL (fog <-> cloud frames are signed, not encrypted).
"insecure" turns signatures off. Each tier is given its whole ``security`` section (and, with
TLS, its MQTT TLS files) explicitly, so ``HIERFL_SECURITY__*`` variables of the parent
environment cannot change what the sim sets up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hierfl import __version__, topics
from hierfl.config import CloudSettings, EdgeSettings, FogSettings, KafkaSettings, MqttSettings
from hierfl.errors import BrokerUnavailableError, ConfigError
from hierfl.offload import reset_executor, use_executor
from hierfl.secagg.sim import check_secagg, secagg_section
from hierfl.sim.asyncfl import async_cloud, async_fog, async_task, check_async
from hierfl.sim.learning import (
    check_learning,
    learning_cloud,
    learning_fog,
    learning_task_options,
)
from hierfl.sim.observer import Observer, RoundRecord
from hierfl.sim.pki import (
    mqtt_section,
    newest_version_signed,
    provision_sim,
    security_section,
    tls_material,
)
from hierfl.sim.regions import lazy_region_evaluator, plot_regions
from hierfl.sim.regions import summarise as summarise_regions

if TYPE_CHECKING:
    from hierfl.provision import Provisioned

__all__ = [
    "SECURITY_MODES",
    "SimConfig",
    "SimInterrupted",
    "SimSecurity",
    "SimStallError",
    "run_sim",
    "run_sim_async",
]

log = logging.getLogger(__name__)

SimSecurity = Literal["signed", "secure", "insecure"]
SECURITY_MODES: tuple[SimSecurity, ...] = ("signed", "secure", "insecure")
_BROKER_ATTEMPTS = 3
_SIM_RESEND_S = 15.0
#: scenario data is computed once: by the data file's writer or the observer's evaluator
_DATA_LOCK = threading.Lock()

SCENARIO_TASKS = {
    "digits": "hierfl.sim.scenarios:digits_task",
    "sensors": "hierfl.sim.scenarios:sensors_task",
}


class SimStallError(RuntimeError):
    """The simulated federation stopped making progress (the message says where it stands).

    Attributes:
        report_path: the partial report of the rounds completed before the stall, if any.
    """

    report_path: str | None = None


class SimInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run; everything it started was stopped first.

    Attributes:
        report_path: the partial report of the rounds completed so far, if any.
    """

    def __init__(self, report_path: str | None) -> None:
        super().__init__()
        self.report_path = report_path


@dataclass
class SimConfig:
    """Everything a simulated federation needs (the ``hierfl sim`` options)."""

    scenario: str = "digits"
    fogs: int = 4
    edges: int = 20
    rounds: int = 30
    k1: int = 2
    k2: int = 1
    min_updates: int | None = None
    quorum: int | None = None
    round_timeout_s: float = 60.0
    seed: int = 0
    wide: bool = False
    mode: str = "processes"
    mqtt_url: str | None = None
    kafka_bootstrap: str | None = None
    out: Path = Path("runs/sim")
    codec: str = "raw"
    error_feedback: bool = True
    #: fog -> edge model fan-out codec (deltas against the edges' model; docs/compression.md)
    model_codec: str = "raw"
    aggregator: str = "fedavg"
    aggregator_params: dict[str, Any] = field(default_factory=dict)
    attack: str | None = None
    byzantine: float = 0.0
    federation: str = ""
    live: bool = True
    lr: float = 0.05
    batch_size: int = 16
    #: stop with a diagnosis when no new global version appears for this long (None: 5 fog
    #: round timeouts, at least 300 s)
    stall_timeout_s: float | None = None
    #: "signed" (provisioned, frames signed), "secure" (also MQTT over mutual TLS; needs
    #: mosquitto) or "insecure" (signatures off)
    security: SimSecurity = "signed"
    #: processes mode: fork the edges from one zygote process that imported torch once
    #: (:mod:`hierfl.sim.zygote`); False starts each edge as a plain ``hierfl edge`` process
    zygote: bool = True
    #: differential privacy (docs/privacy.md): off, record, trusted_fog or untrusted_fog
    dp: str = "off"
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_sigma: float = 1.0
    dp_clip: float = 1.0
    #: asynchronous fogs (docs/scale.md): "sync" or "buffered" (FedBuff: every buffer_size
    #: updates, default 3/4 of the fog's edges), the staleness bound, the cloud's buffer of
    #: fog aggregates (0: synchronous), and slow / intermittent edges ("0.25:5", "0.1:5")
    aggregation: str = "sync"
    buffer_size: int | None = None
    max_staleness: int = 0
    cloud_buffer: int = 0
    stragglers: str | None = None
    intermittent: str | None = None
    #: learning quality (docs/learning.md): the cloud's server optimiser and its parameters
    #: (None: the optimiser's default), FedProx's mu at the edges (0: off)
    server_opt: str = "none"
    server_opt_params: dict[str, Any] = field(default_factory=dict)
    fedprox_mu: float = 0.0
    #: SCAFFOLD across the hierarchy (edge c_i, fog Delta c_f, cloud c; docs/learning.md)
    scaffold: bool = False
    #: fog-level personalisation: alpha of alpha * global + (1 - alpha) * regional (None: off)
    personalise: float | None = None
    #: a server optimiser at every fog for its region (its defaults; "none": off)
    fog_server_opt: str = "none"
    #: secure aggregation at every fog (SecAgg+, docs/secure-aggregation.md) and the L2 bound
    #: edges clip to before masking
    secagg: bool = False
    secagg_clip: float = 10.0

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIO_TASKS:
            raise ValueError(f"unknown scenario {self.scenario!r}: {sorted(SCENARIO_TASKS)}")
        if self.security not in SECURITY_MODES:
            raise ValueError(f"security must be one of {', '.join(SECURITY_MODES)}")
        if self.security == "secure" and self.mqtt_url is not None:
            raise ValueError("--secure starts its own TLS mosquitto with a fresh CA; it cannot "
                             "use --mqtt-url")
        if self.mode not in ("processes", "inprocess"):
            raise ValueError("mode must be 'processes' or 'inprocess'")
        if not 1 <= self.fogs <= self.edges:
            raise ValueError("need 1 <= fogs <= edges")
        if self.dp not in ("off", "record", "trusted_fog", "untrusted_fog"):
            raise ValueError("--dp must be off, record, trusted_fog or untrusted_fog")
        check_async(self)
        check_learning(self)
        check_secagg(self)
        if self.dp == "record" and self.dp_epsilon is None:
            raise ValueError("--dp record needs --dp-epsilon: each edge stops once it is spent")
        self.out = Path(self.out)
        if not self.federation:
            self.federation = f"sim{os.getpid()}{int(time.time()) % 100000}"
        try:
            topics.check_id("federation", self.federation)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    def topology(self) -> dict[str, list[int]]:
        """fog id -> indices of its edges (contiguous blocks, as even as possible)."""
        fogs: dict[str, list[int]] = {}
        per, extra = divmod(self.edges, self.fogs)
        i = 0
        for f in range(self.fogs):
            n = per + (1 if f < extra else 0)
            fogs[f"fog{f}"] = list(range(i, i + n))
            i += n
        return fogs

    @property
    def signed(self) -> bool:
        """Whether frames are signed (every mode but "insecure")."""
        return self.security != "insecure"

    @property
    def mqtt_tls(self) -> bool:
        """Whether MQTT runs over mutual TLS ("secure")."""
        return self.security == "secure"

    def byzantine_edges(self) -> set[int]:
        """Indices of the malicious edges: spread across fogs, the last edges of each fog."""
        if not self.attack or self.byzantine <= 0:
            return set()
        n_bad = round(self.byzantine * self.edges)
        order: list[int] = []
        topo = list(self.topology().values())
        depth = max(len(t) for t in topo)
        for d in range(depth):  # round-robin over fogs, from the back of each fog
            order.extend(t[-1 - d] for t in topo if d < len(t))
        return set(order[:n_bad])


# --- helpers ----------------------------------------------------------------------------------


def _evaluator(cfg: SimConfig) -> Callable[[np.ndarray], tuple[float, float]]:
    """Test accuracy and loss of a global model: in numpy for the built-in scenarios' MLPs
    (:mod:`hierfl.sim.npeval`: this process never imports torch), else with torch."""
    from hierfl.sim.datasets import scenario_data  # noqa: PLC0415
    from hierfl.sim.npeval import accuracy_and_loss, sim_mlp  # noqa: PLC0415

    data = scenario_data(cfg.scenario, cfg.edges, cfg.fogs, cfg.seed)
    mlp = sim_mlp(cfg.out / "initial.npz")
    if mlp is not None:

        def run_np(weights: np.ndarray) -> tuple[float, float]:
            return accuracy_and_loss(mlp.logits(weights, data.x_test), data.y_test)

        return run_np
    import torch  # noqa: PLC0415

    from hierfl.model.torch_adapter import vector_to_model  # noqa: PLC0415
    from hierfl.sim.scenarios import evaluate, scenario_model  # noqa: PLC0415

    model = scenario_model(cfg.scenario, wide=cfg.wide)
    torch.set_num_threads(1)

    def run(weights: np.ndarray) -> tuple[float, float]:
        vector_to_model(model, weights)
        return evaluate(model, data.x_test, data.y_test)

    return run


def _data_path(cfg: SimConfig) -> Path:
    """The scenario's data file, which every edge reads its partition from."""
    return (cfg.out / "data.npz").resolve()


def _write_data(cfg: SimConfig) -> None:
    """Compute the scenario's data once and write it for the edges."""
    from hierfl.sim.datasets import scenario_data, write_data  # noqa: PLC0415

    with _DATA_LOCK:
        write_data(_data_path(cfg), scenario_data(cfg.scenario, cfg.edges, cfg.fogs, cfg.seed))


def _write_initial(cfg: SimConfig, path: Path) -> None:
    """The initial model, written by this process (imports torch)."""
    from hierfl.sim.scenarios import write_initial_model  # noqa: PLC0415

    write_initial_model(path, cfg.scenario, wide=cfg.wide)


def _task_options(cfg: SimConfig, index: int) -> dict[str, Any]:
    opts: dict[str, Any] = {"index": index, "num_edges": cfg.edges, "seed": cfg.seed,
                            "lr": cfg.lr, "batch_size": cfg.batch_size,
                            "data": str(_data_path(cfg))}
    if cfg.scenario == "digits":
        opts["wide"] = cfg.wide
    else:
        opts["num_fogs"] = cfg.fogs
    if index in cfg.byzantine_edges() and cfg.attack == "label-flip":
        opts["label_flip"] = True
    opts.update(learning_task_options(cfg))
    return opts


def _sim_fogs(cfg: SimConfig) -> dict[str, tuple[str, ...]]:
    """Fog id -> its edge ids, as provisioned."""
    return {f: tuple(_edge_id(i) for i in idx) for f, idx in cfg.topology().items()}


def _edge_id(index: int) -> str:
    return f"e{index:03d}"


def _privacy(cfg: SimConfig, party: str, **extra: Any) -> dict[str, Any]:
    """The ``privacy`` section of one party (the ledger under OUT/privacy/<party>)."""
    if cfg.dp == "off":
        return {}
    return {"privacy": {
        "mode": cfg.dp, "noise_multiplier": cfg.dp_sigma, "clip_norm": cfg.dp_clip,
        "delta": cfg.dp_delta, "target_epsilon": cfg.dp_epsilon,
        "ledger_dir": cfg.out / "privacy" / party, **extra,
    }}


#: Tansu (the sim's own Kafka) answers a waiting fetch only when fetch_max_wait_ms runs out,
#: not when a record arrives: each fog <-> cloud hop then cost half the wait on average (the
#: deployed default of 100 ms made the two hops of a digits-20 round ~0.1 s of its ~0.25 s).
#: So a consumer waits 10 ms while a frame is due (the cloud always; a fog from forwarding its
#: aggregate to the next global model) and 100 ms otherwise: an idle consumer polling every
#: 10 ms cost 52 ms of its CPU and 52 ms of Tansu's per second (kafka.fetch_wait_due_ms).
_SIM_FETCH_WAIT_MS = 100
_SIM_FETCH_WAIT_DUE_MS = 10


def _kafka_section(cfg: SimConfig, bootstrap: str) -> dict[str, Any]:
    """The tiers' ``kafka`` settings: on the Tansu the sim starts, short fetch waits while
    a frame is due."""
    if cfg.kafka_bootstrap is None:
        return {"bootstrap": bootstrap, "fetch_max_wait_ms": _SIM_FETCH_WAIT_MS,
                "fetch_wait_due_ms": _SIM_FETCH_WAIT_DUE_MS}
    return {"bootstrap": bootstrap}


def _tier_settings(
    cfg: SimConfig, mqtt_url: str, bootstrap: str, prov: Provisioned | None = None
) -> tuple[CloudSettings, list[FogSettings], list[EdgeSettings]]:
    topo = cfg.topology()
    if cfg.dp != "off":
        # a fresh federation: the ledgers of an earlier run in OUT are not this one's
        shutil.rmtree(cfg.out / "privacy", ignore_errors=True)
    cloud = CloudSettings.load(
        federation=cfg.federation, kafka=_kafka_section(cfg, bootstrap), fogs=list(topo),
        min_fogs=len(topo), round_timeout_s=cfg.round_timeout_s,
        store_dir=cfg.out / "store", initial_model=cfg.out / "initial.npz",
        max_versions=cfg.rounds, aggregator="fedavg", security=security_section(prov, "cloud"),
        **async_cloud(cfg),
        **_privacy(cfg, "cloud"), **learning_cloud(cfg),
    )
    # the fewest updates the fog's rule can combine (nnm_f, krum's f): the default quorum of
    # 1 is raised to it, so that a deadline never closes a round the rule must refuse
    from hierfl.aggregation import make_aggregator  # noqa: PLC0415
    from hierfl.aggregation.base import min_updates  # noqa: PLC0415

    floor = min_updates(make_aggregator(cfg.aggregator, cfg.aggregator_params))
    fogs = []
    for fog, idx in topo.items():
        fogs.append(FogSettings.load(
            federation=cfg.federation, fog_id=fog, mqtt=mqtt_section(mqtt_url, prov, f"fog/{fog}"),
            security=security_section(prov, f"fog/{fog}"),
            kafka=_kafka_section(cfg, bootstrap), min_updates=cfg.min_updates or len(idx),
            quorum=min(max(cfg.quorum or 1, floor), cfg.min_updates or len(idx)), k2=cfg.k2,
            round_timeout_s=cfg.round_timeout_s, aggregator=cfg.aggregator,
            aggregator_params=cfg.aggregator_params, resume_wait_s=0.2,
            model_codec=cfg.model_codec,
            # Tansu has been seen to skip a chunk record under load (the cloud then waits for
            # one fog's aggregate): re-send after seconds, not the deployed default of minutes
            resend_after_s=_SIM_RESEND_S,
            **_privacy(cfg, fog), **async_fog(cfg, len(idx)), **learning_fog(cfg),
            **secagg_section(cfg),
        ))
    edges = [
        EdgeSettings.load(
            federation=cfg.federation, fog_id=fog, edge_id=_edge_id(i),
            mqtt=mqtt_section(mqtt_url, prov, f"edge/{fog}/{_edge_id(i)}"),
            security=security_section(prov, f"edge/{fog}/{_edge_id(i)}"),
            **async_task(cfg, i, SCENARIO_TASKS[cfg.scenario], _task_options(cfg, i),
                         list(topo.values())),
            local_epochs=cfg.k1, codec=cfg.codec,
            error_feedback=cfg.error_feedback,
            **_privacy(cfg, _edge_id(i), expected_updates=cfg.min_updates or len(idx)),
            **secagg_section(cfg),
        )
        for fog, idx in topo.items()
        for i in idx
    ]
    return cloud, fogs, edges


def _env(settings: Any, prefix: str = "HIERFL_") -> dict[str, str]:
    """Settings -> HIERFL_* environment variables (nested with ``__``, JSON for containers)."""
    out: dict[str, str] = {}
    data = settings.model_dump(mode="json", exclude_none=True)
    for k, v in data.items():
        if isinstance(v, dict) and k in ("mqtt", "kafka", "limits", "security", "privacy",
                                         "server_opt", "secagg"):
            for k2, v2 in v.items():
                out[f"{prefix}{k.upper()}__{k2.upper()}"] = (
                    json.dumps(v2) if isinstance(v2, list | dict | bool) else str(v2)
                )
        elif isinstance(v, list | dict | bool):
            out[f"{prefix}{k.upper()}"] = json.dumps(v)
        else:
            out[f"{prefix}{k.upper()}"] = str(v)
    return out


def _child_env(env: dict[str, str]) -> dict[str, str]:
    """A tier process's whole environment: ours without HIERFL_*, plus its settings."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HIERFL_")}
    full_env.update(env)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env["HIERFL_LOG_LEVEL"] = "INFO"
    return full_env


class _Forked:
    """An edge process the zygote forked: :class:`subprocess.Popen`'s ``pid``/``poll``/``wait``.

    The zygote is its parent and reaps it; its exit code comes from the zygote's report. Should
    the zygote be gone, a child that no longer exists counts as ended (code unknown: -9).
    """

    def __init__(self, zygote: _Zygote, name: str, pid: int) -> None:
        self.zygote, self.name, self.pid = zygote, name, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            code = self.zygote.exit_code(self.name)
            if code is not None:
                self.returncode = code
            elif self.zygote.proc.poll() is not None and not _alive(self.pid):
                self.returncode = self.zygote.exit_code(self.name)
                if self.returncode is None:
                    self.returncode = -signal.SIGKILL
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"edge {self.name}", timeout)
            self.zygote.wait_event(min(0.1, max(deadline - time.monotonic(), 0.0)))
        return code


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a pid reused by another user
        return False
    return True


class _Zygote:
    """The sim's side of :mod:`hierfl.sim.zygote`: started first, forks the edges on request.

    A reader thread collects the zygote's JSON-line events (forked, exit) from its stdout.
    """

    def __init__(self, log: Path, env: dict[str, str], tiers: tuple[str, ...] = ("edge",),
                 label: str = "edge zygote") -> None:
        self.log, self.label = log, label
        args = [sys.executable, "-m", "hierfl.sim.zygote"]
        for tier in tiers:
            args += ["hierfl", tier]
        with log.open("ab") as f:
            self.proc = subprocess.Popen(
                args, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=f,
                start_new_session=True,
            )
        self._cond = threading.Condition()
        self._ready: dict[str, Any] | None = None
        self._forked: dict[str, dict[str, Any]] = {}
        self._exits: dict[str, int] = {}
        self._eof = False
        self._reader = threading.Thread(target=self._read, name="sim.zygote", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                kind = ev.get("ev")
                if kind == "ready":
                    self._ready = ev
                elif kind in ("forked", "error"):
                    self._forked[ev["name"]] = ev
                elif kind == "exit":
                    self._exits[ev["name"]] = int(ev["code"])
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_event(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    @property
    def ready_event(self) -> dict[str, Any] | None:
        """The zygote's ``ready`` event, once it came."""
        with self._cond:
            return self._ready

    def exit_code(self, name: str) -> int | None:
        with self._cond:
            return self._exits.get(name)

    def wait_exit(self, name: str, timeout: float) -> int | None:
        """Wait for child ``name``'s exit code (None: not in ``timeout`` s, or the zygote
        ended first)."""
        with self._cond:
            self._cond.wait_for(lambda: name in self._exits or self._eof, timeout)
            return self._exits.get(name)

    def ready(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for the zygote's imports; its ``ready`` event (``threads``: 1 when fork-safe)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready is not None or self._eof, timeout):
                raise RuntimeError(f"the {self.label} did not get ready in {timeout:g} s")
            if self._ready is None:
                raise RuntimeError(f"the {self.label} exited before it was ready:\n"
                                   + self.log.read_text()[-2000:])
            return self._ready

    def fork_all(self, requests: list[dict[str, Any]],
                 timeout: float = 120.0) -> dict[str, _Forked]:
        """Send every fork request, then wait for each child's pid."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"".join(json.dumps({"op": "fork", **r}).encode() + b"\n"
                                       for r in requests))
        self.proc.stdin.flush()
        names = [r["name"] for r in requests]
        with self._cond:
            done = self._cond.wait_for(
                lambda: self._eof or all(n in self._forked for n in names), timeout)
            missing = [n for n in names if n not in self._forked]
            if not done or missing:
                raise RuntimeError(f"the {self.label} did not fork {', '.join(missing)}:\n"
                                   + self.log.read_text()[-2000:])
            out = {}
            for n in names:
                ev = self._forked[n]
                if ev["ev"] == "error":
                    raise RuntimeError(f"the {self.label} could not fork {n}: {ev['error']}")
                out[n] = _Forked(self, n, int(ev["pid"]))
            return out

    def close(self) -> None:
        """End of input, then TERM; KILL after 5 s (its children are stopped before this)."""
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class _Processes:
    """Child processes started by the sim; all stopped (TERM, then KILL) on close.

    Plain children are ``python -m hierfl cloud|fog|edge`` (or ``hierfl.sim.attacks``)
    processes; with a zygote (:meth:`start_zygote`), the edges are forked from it instead
    (:meth:`fork_edges`), each with its own pid and process group, stopped the same way.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes] | _Forked] = {}
        self.zygote: _Zygote | None = None  # the edges'
        self.tier_zygote: _Zygote | None = None  # the cloud's and the fogs'
        self.startup: dict[str, float] = {}  # phase -> time.monotonic() (see write_startup)

    def mark(self, phase: str) -> None:
        """Record when a start-up phase ended (the first time it did)."""
        self.startup.setdefault(phase, time.monotonic())

    def write_startup(self, path: Path) -> None:
        """The start-up timeline as JSON: seconds from the run's start to the end of each phase,
        ``zygote_import_s`` (the zygote's own import time) and ``pids`` (name -> pid)."""
        t = self.startup.get("run", 0.0)
        out: dict[str, Any] = {k: round(v - t, 3) for k, v in self.startup.items()}
        if self.zygote is not None and self.zygote.ready_event is not None:
            out["zygote_import_s"] = self.zygote.ready_event.get("import_s")
        if self.tier_zygote is not None and self.tier_zygote.ready_event is not None:
            out["tier_zygote_import_s"] = self.tier_zygote.ready_event.get("import_s")
        out["pids"] = self.pids()
        path.write_text(json.dumps(out, indent=1))

    def start(self, name: str, tier: str, env: dict[str, str], attack: str | None = None) -> None:
        args = [sys.executable, "-m", "hierfl", tier]
        if attack:
            args = [sys.executable, "-m", "hierfl.sim.attacks", attack]
        with (self.log_dir / f"{name}.log").open("ab") as f:
            self.procs[name] = subprocess.Popen(
                args, env=_child_env(env), stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True
            )

    def start_zygote(self, log_dir: Path) -> None:
        """Start the zygotes now (they import while the sim does other work): the edges' (torch)
        and the cloud's and fogs' (no torch); their own output goes to ``zygote-*.log``."""
        self.zygote = _Zygote(log_dir / "zygote-edge.log", _child_env({}))
        self.tier_zygote = _Zygote(log_dir / "zygote-tiers.log", _child_env({}),
                                   tiers=("cloud", "fog"), label="tier zygote")

    def write_initial(self, cfg: SimConfig, path: Path, timeout: float = 120.0) -> None:
        """Write the initial model from a child of the edge zygote, which imported torch
        already (this process then never does: 2 s less start-up on 2 cores); from this
        process when there is no fork-safe zygote."""
        z = self.zygote
        if z is None or z.ready(timeout).get("threads", 1) != 1:
            _write_initial(cfg, path)
            return
        log_path = self.log_dir / "initial-model.log"
        z.fork_all([{"name": "initial-model", "env": _child_env({}), "log": str(log_path),
                     "command": ["initial", str(path), cfg.scenario,
                                 "wide" if cfg.wide else "narrow"]}], timeout)
        code = z.wait_exit("initial-model", timeout)
        if code != 0:
            tail = log_path.read_text()[-2000:] if log_path.exists() else ""
            raise RuntimeError(f"the initial model could not be written (exit {code}):\n{tail}")

    def fork_tiers(self, tiers: list[tuple[str, str, dict[str, str]]]) -> bool:
        """Fork ``(name, "cloud"|"fog", env)`` from the tier zygote; False (nothing forked) when
        there is none or it is not fork-safe: start them with :meth:`start` then."""
        z = self.tier_zygote
        if z is None:
            return False
        ready = z.ready()
        self.mark("tier_zygote_ready")
        if ready.get("threads", 1) != 1:
            log.warning("tier zygote has %s threads: starting plain processes",
                        ready.get("threads"))
            return False
        self.procs.update(z.fork_all([
            {"name": name, "command": [tier], "env": _child_env(env),
             "log": str(self.log_dir / f"{name}.log")} for name, tier, env in tiers
        ]))
        return True

    def fork_edges(self, edges: list[tuple[EdgeSettings, dict[str, str], str | None]]) -> bool:
        """Fork ``(settings, env, attack)`` edges from the zygote; False (nothing forked) when
        the zygote is not fork-safe (threads: e.g. ``OMP_NUM_THREADS`` > 1 in our environment).
        """
        assert self.zygote is not None
        ready = self.zygote.ready()
        self.mark("zygote_ready")
        if ready.get("threads", 1) != 1:
            log.warning("edge zygote has %s threads after importing torch: starting the edges "
                        "as plain processes", ready.get("threads"))
            return False
        requests = []
        for es, env, attack in edges:
            requests.append({
                "name": es.edge_id, "command": ["attack", attack] if attack else ["edge"],
                "env": _child_env(env), "log": str(self.log_dir / f"{es.edge_id}.log"),
                "task": es.task, "options": es.task_options,
            })
        self.procs.update(self.zygote.fork_all(requests))
        return True

    def peak_rss_mb(self, name: str) -> float | None:
        """Peak resident memory of a running child (Linux /proc VmHWM), in MiB."""
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return None

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None and p.returncode not in (0, -signal.SIGTERM):
                tail = (self.log_dir / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"{name} exited with {p.returncode}:\n{tail}")
        for z in (self.zygote, self.tier_zygote):
            if z is not None and z.proc.poll() is not None and z.proc.returncode != 0:
                raise RuntimeError(f"the {z.label} exited with {z.proc.returncode}:\n"
                                   + z.log.read_text()[-2000:])

    def pids(self) -> dict[str, int]:
        """Name -> pid of every child started (the zygotes as ``"zygote"``, ``"tier_zygote"``)."""
        out = {name: p.pid for name, p in self.procs.items()}
        if self.zygote is not None:
            out["zygote"] = self.zygote.proc.pid
        if self.tier_zygote is not None:
            out["tier_zygote"] = self.tier_zygote.proc.pid
        return out

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(p, signal.SIGKILL)
                p.wait(timeout=5)
        for z in (self.zygote, self.tier_zygote):
            if z is not None:
                z.close()


def _signal(p: subprocess.Popen[bytes] | _Forked, sig: int) -> None:
    """Signal a child's process group (and, forked, the child itself: it may not have called
    ``setsid`` yet)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)
    if isinstance(p, _Forked):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, sig)


@dataclass
class _Setup:
    """The brokers' addresses, the sim's PKI, and how the observer connects."""

    mqtt_url: str
    bootstrap: str
    info: dict[str, str]
    prov: Provisioned | None
    observer_mqtt: MqttSettings


@contextlib.asynccontextmanager
async def _brokers(cfg: SimConfig) -> AsyncIterator[_Setup]:
    from hierfl.sim.brokers import KafkaBroker, MqttBroker  # noqa: PLC0415

    with contextlib.ExitStack() as stack:
        info = {}
        bootstrap = cfg.kafka_bootstrap
        if bootstrap is None:
            k = stack.enter_context(KafkaBroker())
            bootstrap = k.bootstrap
            info["kafka"] = f"tansu pid {k.pid} at {k.bootstrap} (PLAINTEXT: Tansu has no TLS)"
        if cfg.mqtt_tls:
            setup = _start_tlsmqtt_section(cfg, stack, bootstrap, info)
        else:
            mqtt_url = cfg.mqtt_url
            if mqtt_url is None:
                b = stack.enter_context(MqttBroker())
                mqtt_url = b.url
                info["mqtt"] = f"{b.kind} pid {b.pid} at {b.url}"
            prov = (provision_sim(cfg.federation, _sim_fogs(cfg), cfg.out, mqtt_url=mqtt_url,
                                  bootstrap=bootstrap, tls=False)
                    if cfg.signed else None)
            setup = _Setup(mqtt_url, bootstrap, info, prov, MqttSettings(url=mqtt_url))
        yield setup


def _start_tlsmqtt_section(cfg: SimConfig, stack: contextlib.ExitStack, bootstrap: str,
                    info: dict[str, str]) -> _Setup:
    """Provision with TLS and start mosquitto on a free port with mutual TLS and the ACL.

    The port is chosen before provisioning, so that the kits name the broker's real URL; a
    broker that cannot take it (another process was quicker) is retried on a new port.
    """
    from hierfl.sim.brokers import LOOPBACK, MqttBroker, free_port  # noqa: PLC0415

    for attempt in range(1, _BROKER_ATTEMPTS + 1):
        port = free_port()
        url = f"mqtts://{LOOPBACK}:{port}"
        prov = provision_sim(cfg.federation, _sim_fogs(cfg), cfg.out, mqtt_url=url,
                             bootstrap=bootstrap, tls=True)
        tls, observer = tls_material(prov, url)
        broker = MqttBroker(port=port, tls=tls)
        try:
            stack.enter_context(broker)
        except BrokerUnavailableError as exc:
            if attempt == _BROKER_ATTEMPTS:
                raise
            log.debug("TLS mosquitto on port %d did not start, retrying: %s", port, exc)
            continue
        info["mqtt"] = (f"mosquitto pid {broker.pid} at {broker.url} (TLS, client certificates, "
                        f"ACL from {prov.out})")
        return _Setup(url, bootstrap, info, prov, observer)
    raise AssertionError("unreachable")  # pragma: no cover


async def _run(cfg: SimConfig, on_round: Callable[[RoundRecord], None] | None,
               on_start: Callable[[dict[str, str]], None] | None,
               notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start-up, processes mode: the edge zygote is started first, so that its imports (torch,
    the edge's modules) run while this process imports torch for the initial model, starts the
    brokers, provisions, starts the cloud and the fogs and writes the scenario's data file;
    the edges are forked when both are done. Every child is stopped on the way out."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "logs").mkdir(exist_ok=True)
    procs = _Processes(cfg.out / "logs")
    procs.mark("run")
    if cfg.mode == "processes" and cfg.zygote:
        procs.start_zygote(cfg.out)
        procs.mark("zygotes_spawned")
    try:
        return await _run_started(cfg, on_round, on_start, notes, procs)
    finally:
        procs.close()  # a no-op after a normal run; here for errors raised before the tiers


def _lazy_evaluator(cfg: SimConfig) -> Callable[[np.ndarray], tuple[float, float]]:
    """:func:`_evaluator`, built on first use (the observer's thread), not before the tiers."""
    built: list[Callable[[np.ndarray], tuple[float, float]]] = []

    def run(weights: np.ndarray) -> tuple[float, float]:
        with _DATA_LOCK:
            if not built:
                built.append(_evaluator(cfg))
        return built[0](weights)

    return run


async def _run_started(cfg: SimConfig, on_round: Callable[[RoundRecord], None] | None,
                       on_start: Callable[[dict[str, str]], None] | None,
                       notes: dict[str, Any] | None, procs: _Processes) -> dict[str, Any]:
    store = cfg.out / "store"
    if store.exists():
        for p in store.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()  # optim/: server optimiser state
    if cfg.mode != "processes":
        _write_initial(cfg, cfg.out / "initial.npz")
    # processes: the initial model is written while the fogs start (see below)
    t0 = time.monotonic()
    if not cfg.signed:
        log.warning("hierfl sim --insecure: frames are NOT signed; any client of the brokers "
                    "can forge updates and models")
    async with _brokers(cfg) as setup:
        if on_start:
            on_start(setup.info)
        cloud_s, fog_s, edge_s = _tier_settings(cfg, setup.mqtt_url, setup.bootstrap,
                                                setup.prov)
        topo = cfg.topology()
        observer = Observer(
            cfg.federation, {f: len(i) for f, i in topo.items()},
            setup.observer_mqtt, KafkaSettings(bootstrap=setup.bootstrap), _lazy_evaluator(cfg),
            on_round, evaluate_regions=lazy_region_evaluator(cfg, _DATA_LOCK),
            personalise_alpha=cfg.personalise,
        )
        from hierfl.transport.kafka import ensure_topics  # noqa: PLC0415

        await ensure_topics(cloud_s.kafka, [topics.aggregates(cfg.federation),
                                            topics.models(cfg.federation)])
        obs_task = asyncio.create_task(observer.run(), name="sim.observer")
        await observer.ready.wait()
        procs.mark("brokers_observer_ready")
        bad = cfg.byzantine_edges()
        services: list[Any] = []
        tasks: list[asyncio.Task[None]] = []
        pool: ThreadPoolExecutor | None = None
        cloud_rss: float | None = None
        fog_rss: dict[str, float] = {}
        try:
            try:
                if cfg.mode == "processes":
                    # the fogs need no initial model: they start while a child of the edge
                    # zygote writes it (torch); the cloud reads it when it starts
                    initial = asyncio.create_task(asyncio.to_thread(
                        procs.write_initial, cfg, cfg.out / "initial.npz"))
                    # the edges' data meanwhile (in this process): the edges
                    # are forked once it is written
                    data = asyncio.create_task(asyncio.to_thread(_write_data, cfg))
                    fogs = [(fs.fog_id, "fog", _env(fs)) for fs in fog_s]
                    if not await asyncio.to_thread(procs.fork_tiers, fogs):
                        for name, tier, env in fogs:
                            procs.start(name, tier, env)
                    procs.mark("fogs_started")
                    await initial
                    procs.mark("initial_model")
                    cloud = [("cloud", "cloud", _env(cloud_s))]
                    if not await asyncio.to_thread(procs.fork_tiers, cloud):
                        procs.start("cloud", "cloud", cloud[0][2])
                    procs.mark("cloud_started")
                    await data  # while they import
                    procs.mark("data_written")
                    edges: list[tuple[EdgeSettings, dict[str, str], str | None]] = []
                    for i, es in enumerate(edge_s):
                        attack = cfg.attack if (i in bad and cfg.attack != "label-flip") else None
                        env = _env(es)
                        if attack:
                            env["HIERFL_SIM_BYZANTINE_OF"] = str(len(bad))
                        edges.append((es, env, attack))
                    forked = (procs.zygote is not None
                              and await asyncio.to_thread(procs.fork_edges, edges))
                    if not forked:
                        for es, env, attack in edges:
                            procs.start(es.edge_id, "edge", env, attack=attack)
                    procs.mark("edges_forked" if forked else "edges_started")
                    procs.write_startup(cfg.out / "startup.json")
                else:
                    _write_data(cfg)
                    services = _inprocess_services(cfg, cloud_s, fog_s, edge_s, bad)
                    pool = _inprocess_pool(cfg)
                    token = use_executor(pool)  # the services' tasks inherit it
                    try:
                        tasks = [asyncio.create_task(s.run()) for s in services]
                    finally:
                        reset_executor(token)
                stall_after = cfg.stall_timeout_s or max(5 * cfg.round_timeout_s, 300.0)
                stopped_by: str | None = None
                progress = (observer.version, time.monotonic())
                while observer.version < cfg.rounds and not observer.privacy_stopped:
                    procs.check()
                    if cfg.dp == "record" and _edges_finished(procs, tasks, edge_s):
                        stopped_by = "privacy budget (every edge)"
                        break
                    if observer.version != progress[0]:
                        progress = (observer.version, time.monotonic())
                    elif time.monotonic() - progress[1] > stall_after:
                        raise SimStallError(
                            f"no global version after v{observer.version} for {stall_after:.0f} s; "
                            f"{observer.diagnosis()}"
                        )
                    rss = procs.peak_rss_mb("cloud")  # VmHWM only grows; read while it lives
                    if rss is not None:
                        cloud_rss = max(cloud_rss or 0.0, rss)
                    for fs in fog_s:
                        if (rss := procs.peak_rss_mb(fs.fog_id)) is not None:
                            fog_rss[fs.fog_id] = max(fog_rss.get(fs.fog_id, 0.0), rss)
                    for t in tasks:
                        if t.done() and t.exception() is not None:
                            raise t.exception()  # type: ignore[misc]
                    with contextlib.suppress(TimeoutError):
                        await observer.wait_version(observer.version + 1, timeout=1.0)
                # Every round is in: draw report.png while the tiers shut down (the cloud
                # wrote each round's timeline before publishing the version that ended it).
                plot = asyncio.create_task(asyncio.to_thread(
                    _plot_rounds, cfg, list(observer.records)))
            finally:
                for s in services:
                    s.stop()
                if tasks:
                    _, pending = await asyncio.wait(tasks, timeout=10)
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                if pool is not None:  # its tasks are done: whatever still runs finishes alone
                    pool.shutdown(wait=False)
                await asyncio.to_thread(procs.close)
                obs_task.cancel()
                await asyncio.gather(obs_task, return_exceptions=True)
        except (KeyboardInterrupt, asyncio.CancelledError, SimStallError) as exc:
            # Stopped early: keep what was learned so far (brokers and tiers are down already).
            if observer.records:
                stopped = "stalled" if isinstance(exc, SimStallError) else "interrupted"
                partial = _report(cfg, observer, time.monotonic() - t0, cloud_rss, fog_rss,
                                  _security_report(cfg, setup, observer, services),
                                  stopped=stopped)
                if isinstance(exc, SimStallError):
                    exc.report_path = partial["report_path"]
                if notes is not None:
                    notes["report_path"] = partial["report_path"]
            raise
    wall = time.monotonic() - t0
    if cloud_rss is None:  # in-process: the whole process (edges included) is the bound
        import resource  # noqa: PLC0415

        cloud_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if observer.privacy_stopped:
        stopped_by = "stopped: privacy budget"
    return _report(cfg, observer, wall, cloud_rss, fog_rss,
                   _security_report(cfg, setup, observer, services), stopped=stopped_by,
                   plot_path=await plot)


def _edges_finished(procs: Any, tasks: list[asyncio.Task[None]],
                    edge_s: list[EdgeSettings]) -> bool:
    """Record mode: every edge ended by itself (each spent its own budget)."""
    if tasks:  # in-process: the edges' tasks come after the cloud's and the fogs'
        edge_tasks = tasks[-len(edge_s):]
        return all(t.done() for t in edge_tasks)
    running = [procs.procs.get(es.edge_id) for es in edge_s]
    return all(p is not None and p.poll() == 0 for p in running)


def _inprocess_pool(cfg: SimConfig) -> ThreadPoolExecutor | None:
    """The worker threads of an in-process federation: one per core this process may use.

    Every tier shares one interpreter, so more threads than cores only fight the event loop
    for the GIL: asyncio's default (cores + 4, here 6) made a digits-20 round 0.28-0.30 s
    against 0.24-0.26 s with 2 (docs/benchmarks.md, "In-process mode: one worker thread per
    core"). None (asyncio's default) when edges model device time (``--stragglers``,
    ``--intermittent``): their waits are sleeps in the training thread, which must not hold
    the few workers the rest of the federation needs.
    """
    if cfg.stragglers or cfg.intermittent:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ThreadPoolExecutor(max_workers=max(1, cores or 1), thread_name_prefix="hierfl-sim")


def _inprocess_services(cfg: SimConfig, cloud_s: CloudSettings, fog_s: list[FogSettings],
                        edge_s: list[EdgeSettings], bad: set[int]) -> list[Any]:
    from hierfl.cloud.service import CloudService  # noqa: PLC0415
    from hierfl.edge import EdgeClient  # noqa: PLC0415
    from hierfl.edge.client import load_task  # noqa: PLC0415
    from hierfl.fog.service import FogService  # noqa: PLC0415

    services: list[Any] = [CloudService(cloud_s), *(FogService(s) for s in fog_s)]
    for i, s in enumerate(edge_s):
        task = load_task(s.task, s.task_options, s)
        if i in bad and cfg.attack and cfg.attack != "label-flip":
            from hierfl.sim.attacks import MaliciousEdge  # noqa: PLC0415

            services.append(MaliciousEdge(s, task, cfg.attack, n_byzantine=len(bad)))
        else:
            services.append(EdgeClient(s, task))
    return services


def _security_report(cfg: SimConfig, setup: _Setup, observer: Observer,
                     services: list[Any]) -> dict[str, Any]:
    """The report's ``security`` section: what protected this run, and what was refused.

    ``rejected``: per fog (in-process: the fog's own counters; processes: its last stats
    message) and for the cloud (in-process only: a cloud process publishes no counters).
    ``signed_versions``: whether the cloud's newest checkpoint records a signed lineage.
    """
    fogs = observer.fog_rejected()
    cloud: dict[str, int] | None = None
    if services:
        from hierfl.cloud.service import CloudService  # noqa: PLC0415
        from hierfl.fog.service import FogService  # noqa: PLC0415

        for s in services:
            if isinstance(s, CloudService):
                cloud = {k: int(n) for k, n in s.metrics.rejected.items()}
            elif isinstance(s, FogService):
                fogs[s.settings.fog_id] = {k: int(n) for k, n in s.metrics.rejected.items()}
    return {
        "signing": cfg.signed,
        "mqtt_tls": cfg.mqtt_tls,
        "mqtt_client_certificates": cfg.mqtt_tls,
        # Tansu speaks PLAINTEXT only: fog <-> cloud frames are signed, not encrypted.
        "kafka_tls": False,
        "pki": str(setup.prov.out) if setup.prov is not None else None,
        "signed_versions": newest_version_signed(cfg.out / "store"),
        "rejected": {"fogs": fogs, "cloud": cloud},
    }


def _report(cfg: SimConfig, observer: Observer, wall: float, cloud_rss: float | None,
            fog_rss: dict[str, float], security: dict[str, Any], *,
            stopped: str | None = None, plot_path: str | bool | None = False) -> dict[str, Any]:
    """Write report.json (and report.png, unless ``plot_path`` says where it was drawn
    already: a path, or None when matplotlib is missing)."""
    rounds = [asdict(r) for r in observer.records]
    if cfg.dp == "off":  # the report of a run without DP is as it was
        for row in rounds:
            del row["epsilon"]
    rejected: Counter[str] = Counter()
    for r in observer.records:
        rejected.update(r.rejected)
    walls = [r.wall_s for r in observer.records]
    observer_median = (float(np.median(walls[1:] if len(walls) > 1 else walls))
                       if walls else None)
    # round time from the tiers' own clocks, as the cloud joined them (hierfl.timeline)
    from hierfl.sim.timeline_report import timeline_section  # noqa: PLC0415

    timeline = timeline_section(cfg.out / "store")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    report = {
        "system": f"hierfl-{__version__}",
        # None: every round ran; "interrupted" (Ctrl-C, SIGTERM) or "stalled": a partial report
        "stopped": stopped,
        "config": config,
        "security": security,
        "initial_accuracy": observer.initial[0] if observer.initial else None,
        "rounds": rounds,
        "totals": {
            "rounds": len(rounds),
            "wall_s": wall,
            # the cloud's own clock (publication of v to publication of v + 1), rounds 2..N
            "median_round_s": (timeline["median_round_s"] if timeline is not None
                               else observer_median),
            # the same seen from outside: an observer reading each new model from Kafka
            "observer_median_round_s": observer_median,
            "edge_fog_bytes": sum(r.edge_fog_bytes for r in observer.records),
            "fog_cloud_bytes": sum(r.fog_cloud_bytes for r in observer.records),
            "cloud_edge_bytes": sum(r.cloud_edge_bytes for r in observer.records),
            "updates": sum(r.updates for r in observer.records),
            "accepted": sum(r.accepted for r in observer.records),
            "rejected": dict(rejected),
        },
        "final_accuracy": observer.records[-1].accuracy if observer.records else None,
        # per region (fog): the model its edges use on its held-out data (docs/learning.md)
        "regions": summarise_regions(rounds),
        "cloud_peak_rss_mb": cloud_rss,
        # processes mode only: each fog's peak RSS (in-process, everything shares one process)
        "fog_peak_rss_mb": dict(fog_rss),
        # where each round's time went: per-stage spans of every tier, the critical path
        "timeline": timeline,
    }
    if cfg.dp != "off":
        eps = [r.epsilon for r in observer.records if r.epsilon is not None]
        report["privacy"] = {
            "mode": cfg.dp, "epsilon": eps[-1] if eps else None, "delta": cfg.dp_delta,
            "target_epsilon": cfg.dp_epsilon, "noise_multiplier": cfg.dp_sigma,
            "clip_norm": cfg.dp_clip, "budget_stop": bool(stopped and "privacy" in stopped),
        }
    path = cfg.out / "report.json"
    path.write_text(json.dumps(report, indent=2))
    report["report_path"] = str(path)
    report["plot_path"] = (_plot(cfg, observer.records, timeline) if plot_path is False
                           else plot_path)
    return report


def _plot_rounds(cfg: SimConfig, records: list[RoundRecord]) -> str | None:
    """:func:`_plot` with the round timeline read from the cloud's store."""
    from hierfl.sim.timeline_report import timeline_section  # noqa: PLC0415

    return _plot(cfg, records, timeline_section(cfg.out / "store"))


def _plot(cfg: SimConfig, records: list[RoundRecord],
          timeline: dict[str, Any] | None = None) -> str | None:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    r = [x.round for x in records]
    fig, axes = plt.subplots(1, 3 if timeline else 2, figsize=(17 if timeline else 11, 4.5))
    a1, a2 = axes[0], axes[1]
    a1.plot(r, [x.accuracy for x in records], marker="o")
    a1.set_xlabel("round")
    a1.set_ylabel("test accuracy")
    a1.set_title(f"{cfg.scenario}: {cfg.fogs} fogs, {cfg.edges} edges, k2={cfg.k2}")
    plot_regions(a1, records)
    a1.grid(alpha=0.3)
    eps = [(x.round, x.epsilon) for x in records if x.epsilon is not None]
    if eps:  # differential privacy: the budget spent, beside the accuracy it bought
        a1e = a1.twinx()
        a1e.plot([p[0] for p in eps], [p[1] for p in eps], color="tab:red", marker=".",
                 label="epsilon")
        if cfg.dp_epsilon:
            a1e.axhline(cfg.dp_epsilon, color="tab:red", linestyle="--", alpha=0.5)
        a1e.set_ylabel(f"epsilon (delta {cfg.dp_delta:g}, {cfg.dp})", color="tab:red")
    a2.plot(r, [x.edge_fog_bytes / 1e6 for x in records], label="edge -> fog")
    a2.plot(r, [x.fog_cloud_bytes / 1e6 for x in records], label="fog -> cloud")
    a2.plot(r, [x.cloud_edge_bytes / 1e6 for x in records], label="cloud -> edges")
    a2.set_xlabel("round")
    a2.set_ylabel("MB per round")
    a2.legend()
    a2.grid(alpha=0.3)
    if timeline:
        from hierfl.sim.timeline_report import plot_timeline  # noqa: PLC0415

        plot_timeline(axes[2], timeline)
    fig.tight_layout()
    path = cfg.out / "report.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def run_sim(
    cfg: SimConfig,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
    on_start: Callable[[dict[str, str]], None] | None = None,
) -> dict[str, Any]:
    """Run a simulated federation to completion and return its report (also written as JSON).

    SIGTERM is turned into a clean shutdown, like Ctrl-C: every child process and broker
    started here is stopped before this returns or raises.
    """

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    notes: dict[str, Any] = {}
    try:
        return asyncio.run(_run(cfg, on_round, on_start, notes))
    except KeyboardInterrupt as exc:
        raise SimInterrupted(notes.get("report_path")) from exc
    finally:
        signal.signal(signal.SIGTERM, old)


async def run_sim_async(
    cfg: SimConfig,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
    on_start: Callable[[dict[str, str]], None] | None = None,
) -> dict[str, Any]:
    """:func:`run_sim` for callers already inside an event loop (tests, notebooks)."""
    return await _run(cfg, on_round, on_start)
