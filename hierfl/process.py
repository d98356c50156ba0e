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
import logging
import signal

import typer

from hierfl.errors import ConfigError, HierflError, TransportError
from hierfl.service import Service

__all__ = ["EXIT_BROKER_REFUSED", "EXIT_CONFIG", "EXIT_ERROR", "exit_code", "fail",
           "run_service", "setup_logging"]

EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_BROKER_REFUSED = 3


def setup_logging(level: str) -> None:
    """Log to the terminal (rich) at ``level``; aiokafka only from WARNING."""
    from rich.logging import RichHandler  # noqa: PLC0415

    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(rich_tracebacks=False, show_path=False, console=None)],
        force=True,
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def exit_code(exc: HierflError) -> int:
    """The process exit code for an error that ends a command (see the module docstring)."""
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, TransportError) and not exc.retriable:
        return EXIT_BROKER_REFUSED
    return EXIT_ERROR


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
