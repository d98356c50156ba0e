"""Running a service as a process: logging, signals, exit codes (``hierfl cloud|fog|edge``,
``hierfl sim`` children). Shared by :mod:`hierfl.cli` and :mod:`hierfl.sim` (which the CLI
imports lazily; neither imports the other's module level).

Exit codes: 0 done or stopped; 2 invalid configuration (:class:`~hierfl.errors.ConfigError`);
3 a broker refused us for good (:class:`~hierfl.errors.BrokerRefusedError`); 1 any other
hierfl error.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import signal
import sys
from typing import Any, NoReturn, TextIO

import typer

from hierfl.errors import ConfigError, HierflError, TransportError
from hierfl.service import Service

__all__ = ["EXIT_BROKER_REFUSED", "EXIT_CONFIG", "EXIT_ERROR", "LOG_FORMATS", "JsonFormatter",
           "TextFormatter", "exit_code", "fail", "run_service", "setup_logging"]

EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_BROKER_REFUSED = 3


LOG_FORMATS = ("text", "json")

# attributes every LogRecord has: anything else on a record came from ``extra=`` and is a field
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for a log collector.

    Keys: ``timestamp`` (ISO 8601, UTC, milliseconds), ``level``, ``tier``, ``id``, ``logger``,
    ``event`` (the message template: the same for every line of one kind), ``message`` (the
    formatted line), then the record's ``extra=`` fields and, for an exception, ``exception``.

    Args:
        tier: ``cloud``, ``fog`` or ``edge`` (``None``: the key is null).
        party: this process's id within its tier (``north``, ``north/e1``).
    """

    def __init__(self, tier: str | None = None, party: str | None = None) -> None:
        super().__init__()
        self.tier, self.party = tier, party

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "tier": self.tier,
            "id": self.party,
            "logger": record.name,
            "event": str(record.msg),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-12-06 19:40:01.123 WARNING fog north: ...``: the date, never wrapped."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)s %(message)s",
                         datefmt="%Y-%m-%d %H:%M:%S")


def setup_logging(level: str, fmt: str | None = None, *, tier: str | None = None,
                  party: str | None = None, stream: TextIO | None = None) -> None:
    """Log to ``stream`` (stderr) at ``level``; aiokafka only from WARNING.

    ``text`` on a terminal is rich's coloured table with the date; ``text`` elsewhere (a pipe,
    a file, a container's log) is one plain line per record, never wrapped
    (:class:`TextFormatter`); ``json`` is one JSON object per line (:class:`JsonFormatter`).

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
        fmt: ``text`` or ``json``; ``None``: ``$HIERFL_LOG_FORMAT``, else ``text``.
        tier: the tier named in JSON lines.
        party: this process's id within its tier, named in JSON lines.
        stream: where to write (default: ``sys.stderr``).

    Raises:
        ConfigError: an unknown format.
    """
    fmt = fmt or os.environ.get("HIERFL_LOG_FORMAT") or "text"
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log format {fmt!r}: expected one of {', '.join(LOG_FORMATS)} "
                          "(--log-format or HIERFL_LOG_FORMAT)")
    out = stream if stream is not None else sys.stderr
    handler: logging.Handler
    if fmt == "text" and out.isatty():
        from rich.console import Console  # noqa: PLC0415
        from rich.logging import RichHandler  # noqa: PLC0415

        handler = RichHandler(rich_tracebacks=False, show_path=False,
                              console=Console(file=out), log_time_format="[%Y-%m-%d %X]")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(JsonFormatter(tier, party) if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def exit_code(exc: HierflError) -> int:
    """The process exit code for an error that ends a command (see the module docstring)."""
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, TransportError) and not exc.retriable:
        return EXIT_BROKER_REFUSED
    return EXIT_ERROR


_FAST_EXIT = False


def request_fast_exit() -> None:
    """Let the console entry point end this process without the interpreter's teardown once
    the command has returned (see :func:`fast_exit`). For commands that import torch,
    scikit-learn and matplotlib and have stopped everything they started (``hierfl sim``):
    tearing those modules down took ~0.9 s after the last line was printed."""
    global _FAST_EXIT
    _FAST_EXIT = True


def fast_exit_requested() -> bool:
    """Whether the running command asked for :func:`fast_exit`."""
    return _FAST_EXIT


def fast_exit(code: int | str | None) -> NoReturn:
    """Run the atexit handlers, flush the streams and logging, then ``os._exit(code)``:
    everything a normal exit does that anyone can observe, without unloading modules."""
    import atexit  # noqa: PLC0415

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code or 0)


def run_service(service: Service) -> None:
    """Run ``service.run()`` until it returns or SIGINT/SIGTERM asks it to stop.

    A fatal error (a refused broker, a configuration found invalid at start) is printed as
    ``error: ...`` and exits non-zero (:func:`exit_code`).
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, service.stop)
        await service.run()

    try:
        asyncio.run(main())
    except HierflError as exc:
        fail(exc)


def fail(exc: HierflError) -> None:
    """Print ``error: ...`` and exit with the error's code."""
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(code=exit_code(exc))
