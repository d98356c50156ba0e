"""The one shape of a tier's service: what ``hierfl cloud|fog|edge``, ``hierfl sim`` and the
simulator (``hierfl simtest``) run, supervise and stop.

:class:`~hierfl.cloud.service.CloudService`, :class:`~hierfl.fog.service.FogService` and
:class:`~hierfl.edge.client.EdgeClient` are each a thin loop around their round machine: they
open their links through their :class:`~hierfl.transport.factory.Transports`, reconnect with
the one :func:`~hierfl.transport.reconnect.reconnect_loop`, feed events to the machine and
carry out its actions.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

from hierfl.metrics import ServiceMetrics
from hierfl.transport.factory import Transports

__all__ = ["Service"]


@runtime_checkable
class Service(Protocol):
    """A tier's service.

    Attributes:
        settings: its validated settings.
        metrics: its counters (Prometheus, the stats topic).
        ready: set while every link is connected; cleared on a disconnect.
        transports: where its links come from (real brokers, or the in-memory ones).
    """

    settings: Any
    metrics: ServiceMetrics
    ready: asyncio.Event
    transports: Transports

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe to call from a signal handler on the loop)."""

    async def run(self) -> None:
        """Connect, serve and reconnect until stopped or done.

        Raises:
            BrokerRefusedError: a fatal broker error (the message names the URL and the
                setting).
        """
