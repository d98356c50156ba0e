"""The edge zygote of ``hierfl sim`` (processes mode): import once, fork one process per edge.

A ``hierfl edge`` process spends about a second of CPU importing torch and the edge's modules
before it does anything, and holds some 200 MB of private memory for them. On a small machine
twenty of them starting together delay round 1 by tens of seconds. The zygote does that work
once: it imports torch and the edge-side hierfl modules, loads the scenario's data file (see
:func:`hierfl.sim.scenarios.preload`) and then forks one child per edge when the sim asks. The
children share the imported pages copy-on-write.

Each child is a real, separate edge process: its own pid, its own session and process group
(``setsid``, as ``start_new_session=True`` gives a plain child), its own environment (exactly
the ``HIERFL_*`` variables the sim gives a plain ``hierfl edge``), its own log file
(stdout and stderr), its own MQTT session, and the same code path as ``hierfl edge``
(:func:`hierfl.cli.edge`) or ``python -m hierfl.sim.attacks ATTACK`` (Byzantine edges are
forked too). The sim stops them by pid and process group, as it stops plain children.

Fork safety: the zygote runs no asyncio loop, starts no thread and runs no torch operation
before it forks (checked: a fork is refused while the zygote has more than one thread). Each
child sets torch's threads to 1 (``OMP_NUM_THREADS=1`` already makes it so) and reseeds
nothing: the children compute exactly what plain edge processes compute.

Protocol, JSON lines (no pickle). On stdin, from the sim::

    {"op": "fork", "name": "e003", "command": ["edge"] | ["attack", "sign-flip"]
     | ["initial", PATH, SCENARIO, "wide" | "narrow"],
     "env": {...the child's whole environment...}, "log": ".../logs/e003.log",
     "task": "hierfl.sim.scenarios:digits_task", "options": {...}}

On stdout, to the sim: ``{"ev": "ready", "pid": ..., "threads": 1}`` once the imports are
done, ``{"ev": "forked", "name": ..., "pid": ...}`` for each fork (``{"ev": "error", ...}``
when it failed), and ``{"ev": "exit", "name": ..., "pid": ..., "code": ...}`` when a child
ends (``code`` as :attr:`subprocess.Popen.returncode`: negative for a signal). At end of
input or on SIGTERM the zygote forks no more, reaps its remaining children and exits.

Usage (by the sim): ``python -m hierfl.sim.zygote hierfl edge`` (the edge zygote) and
``python -m hierfl.sim.zygote hierfl cloud hierfl fog`` (the tier zygote: the same for the
cloud and the fogs, without torch; their children run ``hierfl cloud|fog``'s command
functions). The arguments name the commands its children run.

The ``initial`` command writes the scenario's initial model (torch, seeded) to PATH and exits:
the edge zygote has imported torch already, so the sim's own process never needs to
(:mod:`hierfl.sim.npeval` evaluates the global models in numpy).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["PRELOAD", "PRELOAD_DPSGD", "PRELOAD_TIERS", "main", "preload_modules"]

PRELOAD = (
    "torch",
    "asyncio",
    "hierfl.cli",
    "hierfl.process",
    "hierfl.config",
    "hierfl.edge.client",
    "hierfl.edge.trainer",
    "hierfl.model.torch_adapter",
    "hierfl.transport.mqtt",
    "hierfl.sim.scenarios",
    "rich.logging",
)
"""Modules the edge zygote imports before it forks (what ``hierfl edge`` would import).

Not torch.optim: the edge's own SGD (:class:`hierfl.edge.trainer.SupervisedTask`) does not use
it, and torch.optim's first optimizer step imports torch._dynamo (sympy, torch.distributed...:
some 800 modules and 70 MB, 1.8 s of the zygote's 3.0 s import on a 2-core machine). Only a
DP-SGD edge (``privacy.mode = "record"``, :mod:`hierfl.privacy.dpsgd`) steps one:
:data:`PRELOAD_DPSGD` is imported before the first such edge is forked, once for them all."""

PRELOAD_DPSGD = ("torch.optim", "torch._dynamo")
"""What a DP-SGD edge adds (its torch.optim.SGD's first step would import it in every edge)."""

PRELOAD_TIERS = (
    "asyncio",
    "hierfl.cli",
    "hierfl.process",
    "hierfl.config",
    "hierfl._memory",
    "hierfl.metrics",
    "hierfl.cloud.service",
    "hierfl.fog.service",
    "hierfl.transport.kafka",
    "hierfl.transport.mqtt",
    "rich.logging",
)
"""Modules the tier zygote (``hierfl cloud``, ``hierfl fog``; no torch) imports."""

_TIERS = ("edge", "cloud", "fog")

_CHILDREN: dict[int, str] = {}


def preload_modules(modules: tuple[str, ...] = PRELOAD) -> None:
    """Import ``modules`` (nothing that starts a thread or runs a torch op)."""
    for name in modules:
        importlib.import_module(name)


def _threads() -> int:
    try:
        return sum(1 for _ in Path("/proc/self/task").iterdir())
    except OSError:  # not Linux: trust the imports
        return 1


def _send(msg: dict[str, Any]) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError):
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def _set_name(name: str) -> None:
    """The process name ``ps -o comm`` shows (prctl PR_SET_NAME; Linux, best effort)."""
    with contextlib.suppress(Exception):
        import ctypes  # noqa: PLC0415

        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)


def _warm(req: dict[str, Any]) -> None:
    """In the zygote, before the fork: import the child's modules and load its task's data."""
    if req["command"][0] == "attack":
        importlib.import_module("hierfl.sim.attacks")
    if (req.get("env") or {}).get("HIERFL_PRIVACY__MODE") == "record":
        preload_modules(PRELOAD_DPSGD)
    task = req.get("task")
    if task:
        mod = importlib.import_module(task.partition(":")[0])
        preload = getattr(mod, "preload", None)
        if callable(preload):
            preload(req.get("options") or {})


def _child(req: dict[str, Any], wake: tuple[int, int]) -> int:
    """Become the edge process ``req`` describes; returns its exit code."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    for fd in wake:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.clear()
    os.environ.update(req["env"])
    command = list(req["command"])
    sys.argv = ["hierfl", *command] if command[0] in _TIERS else ["hierfl.sim.attacks",
                                                                   *command[1:]]
    _set_name(req["name"] if command[0] == "initial" else
              f"{command[0] if command[0] in _TIERS else 'edge'}-{req['name']}")
    gc.enable()  # the zygote's objects stay frozen (gc.freeze): only the child's own are collected
    from typer import Exit as TyperExit  # noqa: PLC0415

    if "torch" in sys.modules:
        import torch  # noqa: PLC0415

        torch.set_num_threads(1)
    try:
        if command[0] in _TIERS:
            from hierfl import cli  # noqa: PLC0415

            getattr(cli, command[0])(None)  # hierfl edge|cloud|fog's command function
        elif command[0] == "initial":  # ["initial", path, scenario, "wide" | "narrow"]
            from hierfl.sim.scenarios import write_initial_model  # noqa: PLC0415

            write_initial_model(command[1], command[2], wide=command[3] == "wide")
        else:
            from hierfl.sim.attacks import main as attack  # noqa: PLC0415

            attack(command[1:])
    except SystemExit as exc:  # sys.exit in the attack's entry point
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except TyperExit as exc:  # hierfl.process.fail's exit codes
        return int(exc.exit_code)
    except Exception:  # noqa: BLE001 - what an uncaught exception does to a process
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        return 1
    return 0


def _fork(req: dict[str, Any], wake: tuple[int, int]) -> None:
    try:
        _warm(req)
        if _threads() > 1:
            raise RuntimeError(f"the zygote has {_threads()} threads: forking is unsafe")
    except Exception as exc:  # noqa: BLE001 - reported to the sim, which stops the run
        _send({"ev": "error", "name": req.get("name"), "error": repr(exc)})
        return
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()  # also what _warm loaded
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _child(req, wake)
        except BaseException:  # noqa: BLE001 - before the log is set up: the zygote's stderr
            import traceback  # noqa: PLC0415

            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                import logging  # noqa: PLC0415

                logging.shutdown()
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(code)
    _CHILDREN[pid] = req["name"]
    _send({"ev": "forked", "name": req["name"], "pid": pid})


def _reap() -> None:
    while _CHILDREN:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        name = _CHILDREN.pop(pid, None)
        if name is not None:
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            _send({"ev": "exit", "name": name, "pid": pid, "code": code})


def main() -> None:
    """Serve fork requests from stdin until end of input or SIGTERM (see the module docstring)."""
    started = time.monotonic()
    gc.disable()  # no collection while importing: objects stay packed, pages stay shared
    preload_modules(PRELOAD if "edge" in sys.argv[1:] else PRELOAD_TIERS)
    gc.freeze()  # what was imported is never traversed by a child's collector (no COW)
    wake = os.pipe()
    for fd in wake:
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake[1])
    stopping = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    _send({"ev": "ready", "pid": os.getpid(), "threads": _threads(),
           "import_s": round(time.monotonic() - started, 3)})
    buf = b""
    eof = False
    while True:
        _reap()
        if (eof or stopping) and not _CHILDREN:
            return
        fds = [wake[0]] if (eof or stopping) else [wake[0], 0]
        try:
            ready, _, _ = select.select(fds, [], [], 1.0)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select
            continue
        if wake[0] in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake[0], 512):
                    pass
        if 0 in ready and not (eof or stopping):
            chunk = os.read(0, 1 << 16)
            if not chunk:
                eof = True
                continue
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    req = json.loads(line)
                    if req.get("op") == "fork":
                        _fork(req, wake)


if __name__ == "__main__":
    main()
