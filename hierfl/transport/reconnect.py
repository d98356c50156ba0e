"""The services' reconnect loop: retry transient broker failures, give up on fatal ones.

Every tier runs its connected body in :func:`reconnect_loop`. A retriable
:class:`~hierfl.errors.TransportError` is logged (naming the broker) and retried after a
jittered exponential backoff; a non-retriable one (:class:`~hierfl.errors.BrokerRefusedError`:
bad credentials, a certificate that does not verify, a missing topic) is re-raised at once, and
so is a broker that stays unreachable for ``connect_attempts`` consecutive tries (an unknown
host, a refused port): the CLI turns both into a non-zero exit. Every successful connection and
every disconnect is logged once, at INFO and WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from hierfl.errors import BrokerRefusedError, BrokerUnavailableError, TransportError
from hierfl.transport.base import backoff_delays

__all__ = ["Link", "reconnect_loop"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Link:
    """One broker a service connects to.

    Attributes:
        name: the settings section, ``"mqtt"`` or ``"kafka"``.
        url: its URL or bootstrap list, as configured (named in every message).
        attempts: consecutive failed connects before giving up; ``None``: never.
    """

    name: str
    url: str
    attempts: int | None

    def describe(self) -> str:
        """``mqtt://host:1883`` or ``kafka host:9092``."""
        return self.url if "://" in self.url else f"{self.name} {self.url}"


def _transport_errors(exc: BaseException) -> list[TransportError] | None:
    """The TransportErrors in ``exc`` (flattened), or None if anything else is in it."""
    if isinstance(exc, TransportError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found: list[TransportError] = []
        for sub in exc.exceptions:
            inner = _transport_errors(sub)
            if inner is None:
                return None
            found.extend(inner)
        return found
    return None


def _link_of(error: TransportError, links: Sequence[Link]) -> Link:
    """The link whose URL the error names (transport messages name it), else the first."""
    text = str(error)
    return next((link for link in links if link.url in text), links[0])


async def reconnect_loop(
    who: str,
    connected: Callable[[], Awaitable[None]],
    *,
    links: Sequence[Link],
    ready: asyncio.Event,
    stop: asyncio.Event,
    base_s: float = 0.5,
    max_s: float = 30.0,
    on_retry: Callable[[], None] | None = None,
) -> None:
    """Run ``connected()`` until it returns or ``stop`` is set, reconnecting on failures.

    Args:
        who: the service, for log lines (``"fog north"``).
        connected: connects, serves, and returns when done; raises TransportError (or a
            group of them, from a TaskGroup) when a broker fails. It sets ``ready`` once
            every link is up.
        links: the brokers it connects to; the first is blamed when an error names none.
        ready: set by ``connected`` when connected; cleared here on every disconnect.
        stop: set to stop retrying.
        base_s: backoff base, seconds.
        max_s: backoff cap, seconds.
        on_retry: called before every retry (a metrics counter).

    Raises:
        BrokerRefusedError: a fatal broker error, or a broker still unreachable after its
            link's ``connect_attempts`` consecutive tries.
    """
    delays = backoff_delays(base_s, max_s)
    failures = 0
    first_failure = 0.0
    was_up = False
    names = ", ".join(link.describe() for link in links)

    async def announce() -> None:
        await ready.wait()
        log.info("%s: %sconnected to %s", who, "re" if was_up else "", names)

    while not stop.is_set():
        ready.clear()
        watcher = asyncio.create_task(announce(), name=f"{who}.announce")
        try:
            await connected()
            return
        except (TransportError, BaseExceptionGroup) as exc:
            errors = _transport_errors(exc)
            if not errors:
                raise
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Cancelled while a link failed: a TaskGroup then raises the link's error and
                # the cancellation is lost; honour it (found by the simulator, issue 9).
                raise asyncio.CancelledError from exc
            fatal = next((e for e in errors if not e.retriable), None)
            if fatal is not None:
                log.error("%s: %s", who, fatal)
                raise fatal from None
            error = errors[0]
            if ready.is_set():  # the connection was up: a disconnect, not a failed connect
                was_up = True
                failures = 0
                delays = backoff_delays(base_s, max_s)
            if not ready.is_set() and isinstance(error, BrokerUnavailableError):
                if failures == 0:
                    first_failure = time.monotonic()
                failures += 1
                link = _link_of(error, links)
                if link.attempts is not None and failures >= link.attempts:
                    raise BrokerRefusedError(
                        f"{who}: {link.describe()} still unreachable after {failures} attempts "
                        f"in {time.monotonic() - first_failure:.0f} s: {error} (check "
                        f"{link.name}.{'url' if link.name == 'mqtt' else 'bootstrap'} and that "
                        f"the broker runs; {link.name}.connect_attempts sets the limit)"
                    ) from error
            delay = next(delays)
            if ready.is_set():
                log.warning("%s: disconnected (%s); reconnecting in %.1f s", who, error, delay)
            else:
                log.warning("%s: cannot connect (%s); retrying in %.1f s", who, error, delay)
            if on_retry is not None:
                on_retry()
        finally:
            # asyncio.wait, not ``await watcher`` under suppress(CancelledError): that would
            # swallow a cancellation of this task arriving here, and the service would go on
            # reconnecting after it was told to stop (found by the simulator, issue 9).
            watcher.cancel()
            await asyncio.wait([watcher])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
