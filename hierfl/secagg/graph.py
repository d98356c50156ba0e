"""Who masks with whom: the complete graph for small regions, a k-regular Harary graph for
large ones [Bell et al., 2020, SecAgg+].

Paper: arxiv.org/abs/2008.05767 (SecAgg+), building on doi.org/10.1145/3133956.3133982

The graph is a deterministic function of the public ``graph_seed`` and the sorted roster, so
the fog and every edge compute the same one without exchanging it: the roster is permuted by
``SHA-256(graph_seed || id)`` (the server cannot pick who neighbours whom once the seed is
fixed) and each edge is joined to the ``k / 2`` nearest positions on either side of the ring.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

__all__ = ["COMPLETE_UP_TO", "default_degree", "neighbours"]

# Regions of at most this many edges use the complete graph (every pair masks). Above it,
# k = 2 * ceil(log2 n) (rounded to even) gives each edge O(log n) neighbours: 14 for n = 100.
COMPLETE_UP_TO = 32


def default_degree(n: int) -> int:
    """The neighbour count k for a region of n edges: n - 1 (complete) up to
    :data:`COMPLETE_UP_TO`, else ``2 * ceil(log2 n)`` (even, so the Harary graph is regular).

    Raises:
        ValueError: if n < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n <= COMPLETE_UP_TO:
        return n - 1
    return min(n - 1, 2 * math.ceil(math.log2(n)))


def neighbours(roster: Sequence[str], degree: int, graph_seed: bytes) -> dict[str, frozenset[str]]:
    """Each id's neighbours in the k-regular graph on ``roster``.

    Args:
        roster: distinct ids (order does not matter).
        degree: k; ``len(roster) - 1`` gives the complete graph; otherwise it must be even.
        graph_seed: public bytes fixing the permutation.

    Returns:
        {id: frozenset of its k neighbours}; symmetric, no self loops.

    Raises:
        ValueError: on repeated ids, a degree outside [0, n - 1], or an odd degree below n - 1.
    """
    ids = sorted(roster)
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("roster ids must be distinct")
    if not 0 <= degree <= max(n - 1, 0):
        raise ValueError(f"degree must be in [0, {n - 1}], got {degree}")
    if degree == n - 1:
        everyone = frozenset(ids)
        return {i: everyone - {i} for i in ids}
    if degree % 2:
        raise ValueError(f"a k-regular ring graph needs an even degree, got {degree}")
    ring = sorted(ids, key=lambda i: hashlib.sha256(graph_seed + i.encode()).digest())
    half = degree // 2
    return {
        ring[p]: frozenset(ring[(p + o) % n] for o in range(-half, half + 1) if o != 0)
        for p in range(n)
    }
