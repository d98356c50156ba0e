"""The public parameters of one secure-aggregation round in one fog region."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from hierfl.secagg.encoding import FixedPoint
from hierfl.secagg.errors import SecAggError
from hierfl.secagg.graph import default_degree, neighbours

__all__ = ["SecAggParams", "default_threshold"]

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def default_threshold(share_holders: int) -> int:
    """t for a neighbourhood of ``share_holders`` edges (an edge and its k neighbours):
    ``floor(2 m / 3) + 1``, the bound Bonawitz et al. (2017, section 6.2) need against an
    active server that lies about who dropped; it tolerates ``m - t`` (about a third)
    dropouts. Never below 2 (a single share would be the secret itself) unless m is 1.
    """
    if share_holders < 1:
        raise ValueError("share_holders must be >= 1")
    return min(share_holders, max(2, math.floor(2 * share_holders / 3) + 1))


@dataclass(frozen=True)
class SecAggParams:
    """What the fog and every edge of a region agree on before a round (configuration, not
    negotiated): who may take part, the graph, the threshold and the encoding.

    Args:
        region: the fog's region id (bound into every key derivation and share).
        round: the round number (likewise: shares of one round never decrypt in another).
        roster: the region's edge ids, distinct.
        dim: the update's length.
        codec: fixed-point parameters; its ``max_summands`` must be >= len(roster).
        degree: k; None for :func:`~hierfl.secagg.graph.default_degree`.
        threshold: t; None for :func:`default_threshold` of ``degree + 1``.
        graph_seed: public seed of the neighbour graph (empty: derived from region and round).

    Raises:
        SecAggError: on any inconsistent parameter.
    """

    region: str
    round: int
    roster: tuple[str, ...]
    dim: int
    codec: FixedPoint
    degree: int | None = None
    threshold: int | None = None
    graph_seed: bytes = b""
    graph: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        roster = tuple(sorted(self.roster))
        if len(roster) < 2 or len(set(roster)) != len(roster):
            raise SecAggError("roster must hold at least 2 distinct edge ids")
        if not all(_ID.fullmatch(i) for i in roster):
            raise SecAggError("roster ids must match [A-Za-z0-9_.:-]{1,128}")
        if not _ID.fullmatch(self.region):
            raise SecAggError("region must match [A-Za-z0-9_.:-]{1,128}")
        if self.round < 0 or self.dim < 1:
            raise SecAggError("round must be >= 0 and dim >= 1")
        if self.codec.max_summands < len(roster):
            raise SecAggError(
                f"codec allows {self.codec.max_summands} summands, roster has {len(roster)}"
            )
        n = len(roster)
        degree = default_degree(n) if self.degree is None else self.degree
        seed = self.graph_seed or f"hierfl-secagg-graph|{self.region}|{self.round}".encode()
        try:
            graph = neighbours(roster, degree, seed)
        except ValueError as exc:
            raise SecAggError(str(exc)) from exc
        holders = degree + 1
        threshold = default_threshold(holders) if self.threshold is None else self.threshold
        if not holders // 2 + 1 <= threshold <= holders:
            raise SecAggError(
                f"threshold must be in [{holders // 2 + 1}, {holders}] (an honest majority "
                f"of an edge and its {degree} neighbours), got {threshold}"
            )
        object.__setattr__(self, "roster", roster)
        object.__setattr__(self, "degree", degree)
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "graph_seed", seed)
        object.__setattr__(self, "graph", graph)

    @property
    def t(self) -> int:
        """The threshold, resolved."""
        assert self.threshold is not None
        return self.threshold

    @property
    def k(self) -> int:
        """The degree, resolved."""
        assert self.degree is not None
        return self.degree

    def x_of(self, edge_id: str) -> int:
        """The Shamir evaluation point of an edge: its roster index plus one."""
        return self.roster.index(edge_id) + 1

    def context(self) -> bytes:
        """Bytes binding derivations to this region and round."""
        return f"{self.region}|{self.round}".encode()
