"""The simulator's invariants: what the real services do, recorded and checked as it happens.

The ledger wraps the round machines of every service it watches (the services call them
through their attributes, so the wrappers see every accepted update, closed or skipped round,
accepted aggregate and saved version) and checks:

* **no lost update**: when a fog round ``(fog, version, seq)`` closes, it holds every update
  accepted for that round by any incarnation of the fog (a fog killed with accepted updates
  must get them back from its spool); at the end, the open round of every fog holds every
  update accepted for it;
* **no update folded twice**: within one global version, an edge's update (its edge and the
  fog model seq it was trained from) is in at most one closed fog round (the last closing of
  each round counts: a crash may make a fog close a round again, from its spool);
* **no fork, no gap**: a global version is saved with one content only, and only on top of
  the version before it (so no aggregate is applied twice, and versions are contiguous);
* **bounded memory** (after every step): the services' queues, buffers and records stay
  within their bounds;
* at the end (:meth:`Ledger.check_final`, after healing): the cloud made progress and every
  fog holds the newest version (checked by the world).

A failed check raises :class:`Violation` from inside the service's call (so the trace shows
where) and is kept in :attr:`Ledger.failed`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from hierfl.fog.round import FogState, RoundClosed, RoundSkipped

__all__ = ["Ledger", "Violation"]


class Violation(AssertionError):
    """An invariant does not hold."""


class Ledger:
    """Records what the watched services do and checks the invariants (module docstring)."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.failed: str | None = None
        self.clock: Callable[[], float] = lambda: 0.0
        self.on_fail: Callable[[], None] = lambda: None
        self.note: Callable[[str], None] = lambda text: None  # the world's trace
        self.saved: dict[int, str] = {}  # version -> weights digest
        self.newest_version = -1
        # every update accepted for (fog, version, seq): {(edge, base_seq)}
        self.accepted: dict[tuple[str, int, int], set[tuple[str, int]]] = {}
        # the open round's accepted updates per fog incarnation: (version, seq) -> edge -> base
        self._open: dict[str, dict[tuple[int, int], dict[str, int]]] = {}
        # last closing of each round: (fog, version) -> seq -> members
        self.closures: dict[tuple[str, int], dict[int, frozenset[tuple[str, int]]]] = {}
        self.skipped: set[tuple[str, int, int]] = set()
        self.services: dict[str, Any] = {}
        self._fogs: dict[str, tuple[str, Any, int, int]] = {}  # for the per-step checks
        self.counts: dict[str, int] = dict.fromkeys(
            ("updates_accepted", "fog_rounds_closed", "fog_rounds_reclosed", "rounds_skipped",
             "aggregates_accepted", "versions_saved", "crashes"), 0)

    # --- failing ------------------------------------------------------------------------

    def fail(self, message: str) -> None:
        """Record a violation (the first one is kept) and raise it."""
        raise Violation(self.record(message))

    def record(self, message: str) -> str:
        """Record a violation without raising; the run stops at its next check."""
        text = f"t={self.clock():.2f}: {message}"
        if self.failed is None:
            self.failed = text
            self.on_fail()
        return text

    # --- watching -----------------------------------------------------------------------

    def watch(self, name: str, incarnation: int, service: Any) -> None:
        """Wrap the round machine (and the store) of a freshly made service."""
        self.services[name] = service
        if name.startswith("fog/"):
            self._fogs[name] = (name, service, len(self.plan.fogs[name.removeprefix("fog/")]),
                                service.settings.mqtt.queue_size)
            self._watch_fog(name, service)
        elif name == "cloud":
            self._watch_cloud(service)

    def crashed(self, name: str) -> None:
        """A process died: what its round held in memory is gone."""
        self.counts["crashes"] += 1
        self._open.pop(name, None)

    def _watch_fog(self, name: str, service: Any) -> None:
        r = service.round
        self._open[name] = {}
        on_update, on_tick = r.on_update, r.on_tick

        def watched_update(frame: Any, now: float, **kwargs: Any) -> Any:
            key = (r.version, r.seq)
            actions = on_update(frame, now, **kwargs)
            self.counts["updates_accepted"] += 1
            self.accepted.setdefault((name, *key), set()).add((frame.edge_id, frame.base_seq))
            self._open.setdefault(name, {}).setdefault(key, {})[frame.edge_id] = frame.base_seq
            self.note(f"{name} accepted {frame.edge_id} (from seq {frame.base_seq}) for "
                      f"(v{key[0]}, seq {key[1]})")
            self._fog_actions(name, actions)
            return actions

        def watched_tick(now: float) -> Any:
            actions = on_tick(now)
            self._fog_actions(name, actions)
            return actions

        r.on_update, r.on_tick = watched_update, watched_tick

    def _fog_actions(self, fog: str, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, RoundClosed):
                self._closed(fog, a)
            elif isinstance(a, RoundSkipped):
                self.note(f"{fog} skipped (v{a.version}, seq {a.seq})")
                self.counts["rounds_skipped"] += 1
                self.skipped.add((fog, a.version, a.seq))

    def _closed(self, fog: str, a: RoundClosed) -> None:
        self.note(f"{fog} closed (v{a.version}, seq {a.seq}) with {sorted(a.contributors)}")
        held = self._open.get(fog, {}).pop((a.version, a.seq), {})
        members = frozenset((e, held[e]) for e in a.contributors if e in held)
        if len(members) != len(a.contributors):
            self.fail(f"{fog} closed (v{a.version}, seq {a.seq}) with contributors "
                      f"{list(a.contributors)} it never accepted")
        lost = self.accepted.get((fog, a.version, a.seq), set()) - members
        if lost:
            self.fail(f"lost update: {fog} closed (v{a.version}, seq {a.seq}) with "
                      f"{sorted(members)} without {sorted(lost)}, accepted for that round")
        rounds = self.closures.setdefault((fog, a.version), {})
        if a.seq in rounds:
            self.counts["fog_rounds_reclosed"] += 1
        rounds[a.seq] = members
        for seq, other in rounds.items():
            if seq != a.seq and other & members:
                self.fail(f"update folded twice: {fog} v{a.version}: {sorted(other & members)} "
                          f"in the rounds of seq {seq} and seq {a.seq}")
        self.counts["fog_rounds_closed"] += 1

    def _watch_cloud(self, service: Any) -> None:
        r, store = service.round, service.store
        latest = store.latest()
        if latest is not None:
            self._saved(latest.version, latest.weights, (latest.meta or {}).get("parent"))
        on_aggregate, on_tick, save = r.on_aggregate, r.on_tick, store.save

        def watched_aggregate(frame: Any, now: float, *args: Any) -> Any:
            new = on_aggregate(frame, now, *args)
            self.counts["aggregates_accepted"] += 1
            return new

        def watched_tick(now: float) -> Any:
            return on_tick(now)

        def watched_save(version: int, weights: Any, layout: Any, meta: dict[str, Any],
                         **kwargs: Any) -> Any:
            self._saved(version, weights, meta.get("parent"))
            self.note(f"cloud saved v{version}")
            return save(version, weights, layout, meta, **kwargs)

        r.on_aggregate, r.on_tick, store.save = watched_aggregate, watched_tick, watched_save

    def _saved(self, version: int, weights: Any, parent: int | None) -> None:
        digest = hashlib.blake2b(weights.tobytes(), digest_size=16).hexdigest()
        known = self.saved.get(version)
        if known is not None and known != digest:
            self.fail(f"fork: global v{version} saved twice with different weights")
        if version > 0 and (parent != version - 1 or (version - 1) not in self.saved):
            self.fail(f"gap: v{version} saved on top of v{parent}; saved so far "
                      f"{sorted(self.saved)[-5:]}")
        if known is None:
            self.counts["versions_saved"] += 1
        self.saved[version] = digest
        self.newest_version = max(self.newest_version, version)

    # --- bounds -------------------------------------------------------------------------

    def on_step(self) -> None:
        """Cheap checks after every loop step."""
        if self.failed is not None:
            return
        for name, s, n_edges, queue in self._fogs.values():
            if (s.round.early > queue or len(s._by_version) > 16
                    or len(s.round._updates) > n_edges or len(s.forwarded) > 8):
                self._bounds(name, s)
        cloud = self.services.get("cloud")
        if cloud is not None and len(cloud.round.reported) > len(self.plan.fogs):
            self.record(f"cloud holds {len(cloud.round.reported)} aggregates for "
                        f"{len(self.plan.fogs)} fogs")

    def _bounds(self, name: str, s: Any) -> None:
        self.record(f"{name} out of bounds: early {s.round.early}, by_version "
                    f"{len(s._by_version)}, pending {len(s.round._updates)}, forwarded "
                    f"{len(s.forwarded)}")

    def check_bounds(self) -> None:
        """Raise the violation found by a step check, if any."""
        if self.failed is not None:
            raise Violation(self.failed)

    # --- the end ------------------------------------------------------------------------

    def check_final(self, procs: dict[str, Any]) -> None:
        """Every fog's open round holds every update accepted for it; spools are bounded."""
        for name, p in procs.items():
            if not name.startswith("fog/"):
                continue
            r = p.service.round
            if r.state is not FogState.COLLECTING or r.version is None:
                continue
            want = {e for e, _ in self.accepted.get((name, r.version, r.seq), set())}
            missing = want - set(r.pending)
            if missing:
                self.fail(f"lost update: {name}'s open round (v{r.version}, seq {r.seq}) "
                          f"lacks {sorted(missing)}, accepted for it earlier")
            spool = getattr(p.service, "_spool", None)
            if spool is not None:
                n = len(spool.entries())
                if n > 4 * len(self.plan.fogs[name.removeprefix("fog/")]):
                    self.fail(f"{name}'s spool holds {n} files")
