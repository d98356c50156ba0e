"""Drive one in-memory SecAgg+ round between EdgeSecAgg clients and a FogSecAgg server, every
message through msgpack (as the transport will carry it), with dropouts at chosen stages."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from hierfl.secagg import EdgeSecAgg, FixedPoint, FogSecAgg, SecAggParams, SecAggResult

STAGES = ("advertise", "share", "masked")


def wire(message: Any) -> Any:
    """A message as the other side sees it: to_wire, msgpack, unpack."""
    return msgpack.unpackb(msgpack.packb(message.to_wire(), use_bin_type=True), raw=False)


def seeded(seed: int) -> Callable[[int], bytes]:
    """A reproducible stand-in for os.urandom."""
    return random.Random(seed).randbytes


def make_params(n: int, dim: int, *, clip_norm: float = 1.0, **kw: Any) -> SecAggParams:
    roster = tuple(f"edge-{i:03d}" for i in range(n))
    return SecAggParams(
        region="fog-a", round=7, roster=roster, dim=dim,
        codec=FixedPoint.for_region(n, clip_norm), **kw,
    )


def make_inputs(params: SecAggParams, seed: int = 0) -> dict[str, npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    return {e: rng.normal(scale=0.3, size=params.dim) for e in params.roster}


@dataclass
class Region:
    """Clients and server of one region, with every message kept for inspection."""

    params: SecAggParams
    seed: int = 0
    clients: dict[str, EdgeSecAgg] = field(init=False)
    server: FogSecAgg = field(init=False)
    outbox: dict[str, dict[str, Any]] = field(init=False, default_factory=dict)
    masked: dict[str, bytes] = field(init=False, default_factory=dict)  # what the fog received

    def __post_init__(self) -> None:
        self.clients = {
            e: EdgeSecAgg(self.params, e, random_bytes=seeded(self.seed * 1000 + i))
            for i, e in enumerate(self.params.roster)
        }
        self.server = FogSecAgg(self.params)

    def run(
        self,
        inputs: Mapping[str, npt.ArrayLike],
        drop_after: Mapping[str, Collection[str]] | None = None,
        absent: Collection[str] = (),
    ) -> SecAggResult:
        """A full round; ``drop_after[stage]`` edges vanish after sending that stage's message."""
        alive = run_to_masked(self.server, self.clients, inputs, drop_after,
                              [e for e in self.params.roster if e not in absent], self.masked)
        requests = self.server.close_masked()
        self.outbox["unmask"] = dict(requests)
        for e in alive:
            self.server.receive(wire(self.clients[e].on_unmask(wire(requests[e]))), sender=e)
        return self.server.finish()


def run_to_masked(
    server: FogSecAgg,
    clients: Mapping[str, EdgeSecAgg],
    inputs: Mapping[str, npt.ArrayLike],
    drop_after: Mapping[str, Collection[str]] | None,
    roster: Collection[str],
    masked: dict[str, bytes] | None = None,
) -> list[str]:
    """Advertise, share and send masked inputs; ``drop_after[stage]`` edges vanish after
    sending that stage's message. Returns the edges still there after the masked stage (what
    the fog received from each one goes into ``masked``)."""
    drop = {s: set((drop_after or {}).get(s, ())) for s in STAGES}
    alive = list(roster)
    for e in alive:
        server.receive(wire(clients[e].advertise()), sender=e)
    alive = [e for e in alive if e not in drop["advertise"]]
    rosters = server.close_advertise()
    for e in alive:
        server.receive(wire(clients[e].on_roster(wire(rosters[e]))), sender=e)
    alive = [e for e in alive if e not in drop["share"]]
    forwarded = server.close_share()
    for e in alive:
        out = clients[e].on_shares(wire(forwarded[e]), inputs[e])
        if masked is not None:
            masked[e] = out.masked
        server.receive(wire(out), sender=e)
    return [e for e in alive if e not in drop["masked"]]


def plain_sum(
    params: SecAggParams, inputs: Mapping[str, npt.ArrayLike], who: Collection[str]
) -> npt.NDArray[np.int64]:
    """The fixed-point sum of ``who``'s clipped inputs, as exact integers."""
    total = np.zeros(params.dim, dtype=np.int64)
    for e in who:
        total += params.codec.quantize(inputs[e])
    return total


def is_exact(
    params: SecAggParams, result: SecAggResult, inputs: Mapping[str, npt.ArrayLike],
    who: Collection[str],
) -> bool:
    """Whether the round's unmasked sum equals the plain fixed-point sum of ``who``, exactly."""
    return bool(
        np.array_equal(params.codec.decode_integers(result.total), plain_sum(params, inputs, who))
    )
