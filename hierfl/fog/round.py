"""The fog's round logic as a pure state machine: events in, actions out (no I/O).

One *fog round* collects updates from this fog's edges for the current model
``(version, seq)`` and closes when ``min_updates`` were accepted or at the deadline
(``round_timeout_s`` after it opened; with fewer than ``quorum`` updates the round is
skipped and reopened under a new ``seq``). Closing aggregates the deltas into the fog
model. HierFAVG [Liu et al., 2020, arxiv.org/abs/1905.06641]: after ``k2`` fog rounds the
fog forwards its total delta against the global model to the cloud and waits for the
next global version; between them it publishes its fog-level model to its edges.

Every update passes :class:`~hierfl.aggregation.validation.UpdateValidator` before it may join
a round (each refusal raises a :class:`~hierfl.errors.ValidationError` subclass whose
``reason`` the service counts). The checks run in this order:

1. recipient  -> WrongRecipientError   (federation and fog id of the frame)
2. sender     -> UnknownSenderError    (``allowed_edges``, when non-empty)
3. state      -> StaleUpdateError      (the fog is not collecting)
4. version    -> StaleUpdateError      (``base_version`` is not the global version worked on)
5. the validator: duplicate, sender, staleness, samples, shape, finite, norm.

Staleness is counted in fog *models* within one global version: with ``max_staleness = s``
an update trained from fog model ``base_seq`` is accepted while the fog collects seq ``q``
iff at most ``s`` changed models were published after ``base_seq`` (a skipped round
re-publishes the same weights under a new seq, which does not count: an edge slower than the
round deadline is not made stale by skips) and its ``base_version`` is the current one. An
update trained from an older global version is always stale (the fog's cumulative delta is
against the current global model). A sender contributes at most once per fog round, whatever
seq it trained from, and an update (edge, base seq) at most once per global version (a copy
redelivered later is refused as a duplicate). The norm bound is the tighter of ``max_norm`` and
``adaptive_norm_multiplier`` x the median of the last ``norm_window`` accepted norms (applied
from ``adaptive_min_norms`` accepted norms on); the window survives rounds and versions.

States::

    WAITING_MODEL --global model--> COLLECTING --k2-th close--> FORWARDED
                                     |    ^  ^                      |
                                     +----+  +----newer model-------+
                     close (< k2) or skip:
                     new seq, publish fog model
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hierfl.aggregation import validation as checks
from hierfl.aggregation.validation import UpdateValidator, ValidationPolicy
from hierfl.errors import (
    AggregationError,
    DuplicateUpdateError,
    PrivacyBudgetExhaustedError,
    StaleUpdateError,
    StateError,
    WrongRecipientError,
)
from hierfl.fog.buffered import BufferPolicy, ModelClock, staleness_weights
from hierfl.optim.personalise import blend
from hierfl.optim.scaffold import fog_control
from hierfl.optim.server import ServerOptimizer
from hierfl.privacy import record
from hierfl.privacy.region import RegionPrivacy
from hierfl.secagg.errors import SecAggStageError
from hierfl.types import Float32Matrix, Float32Vector, Float64Vector
from hierfl.wire.frames import AggregateFrame, LayoutEntry, ModelFrame, UpdateFrame

__all__ = [
    "Action",
    "Admit",
    "FogRound",
    "FogRoundConfig",
    "FogState",
    "Forward",
    "PrivacyStop",
    "PublishModel",
    "RoundClosed",
    "RoundSkipped",
]

log = logging.getLogger(__name__)

AggregateFn = Callable[[Float32Matrix, Float64Vector], Float32Vector]


class FogState(enum.Enum):
    """Where the fog is in its cycle."""

    WAITING_MODEL = "waiting_model"
    COLLECTING = "collecting"
    FORWARDED = "forwarded"
    #: differential privacy: the region's budget cannot pay for another release
    BUDGET_SPENT = "budget_spent"


@dataclass(frozen=True, slots=True)
class PublishModel:
    """Publish ``frame`` retained on this fog's MQTT model topic.

    ``folded``: the updates ``(edge, base seq)`` of this global version already in
    ``frame`` (kept with it on disk: a fog resumed from it refuses them again).
    """

    frame: ModelFrame
    folded: frozenset[tuple[str, int]] = frozenset()


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``frame`` to the cloud over Kafka, then report :meth:`FogRound.on_sent`.

    ``reason``: ``"closed"`` (the cloud round just closed here), ``"resend"`` (no newer
    global model ``resend_after_s`` after it was sent: at-least-once to the cloud, which
    refuses a copy it holds), ``"resumed"`` (closed before a restart; see
    :meth:`FogRound.resume`).
    """

    frame: AggregateFrame
    reason: str = "closed"


@dataclass(frozen=True, slots=True)
class RoundClosed:
    """A fog round was aggregated (for logs and metrics)."""

    version: int
    seq: int
    fog_round: int
    contributors: tuple[str, ...]
    num_samples: int
    timed_out: bool


@dataclass(frozen=True, slots=True)
class RoundSkipped:
    """A fog round ended without a result.

    ``reason`` is ``"quorum"`` (its deadline passed with fewer than ``quorum`` updates) or
    ``"aggregation"`` (at its deadline the rule refused the updates it had, e.g. Krum with too
    few of them; before the deadline a refused round keeps collecting). Either way a round is
    skipped at most once per ``round_timeout_s``.
    """

    version: int
    seq: int
    received: int
    reason: str = "quorum"


@dataclass(frozen=True, slots=True)
class Admit:
    """Judge this update now (it arrived before the fog had a model; see
    :meth:`FogRound.on_early`): ``handle`` is what the service gave with it."""

    frame: UpdateFrame
    handle: Any = None


@dataclass(frozen=True, slots=True)
class PrivacyStop:
    """The region's privacy budget cannot pay for the releases the fog would make next: it
    stops releasing (``releases`` so far, at ``epsilon``). ``record``: record-level DP, every
    edge of the region has spent its own budget (the fog's figures are then 0)."""

    version: int
    releases: int
    epsilon: float
    record: bool = False


Action = PublishModel | Forward | RoundClosed | RoundSkipped | Admit | PrivacyStop


@dataclass(frozen=True, slots=True)
class FogRoundConfig:
    """Parameters of the fog's round logic (validated by :class:`hierfl.config.FogSettings`)."""

    federation: str
    fog_id: str
    min_updates: int = 1
    quorum: int = 1
    k2: int = 1
    round_timeout_s: float = 30.0
    min_samples: int = 1
    max_samples: int = 1_000_000
    max_norm: float | None = None
    adaptive_norm_multiplier: float | None = None
    max_staleness: int = 0
    allowed_edges: frozenset[str] = frozenset()
    norm_window: int = 100
    adaptive_min_norms: int = 5
    #: send the aggregate again when no newer global model came this long after it was
    #: sent (None: never)
    resend_after_s: float | None = None
    #: updates kept while the fog waits for its first model (then judged in order)
    early_limit: int = 1000
    #: buffered (FedBuff) aggregation (hierfl.fog.buffered); None or mode "sync": rounds
    buffer: BufferPolicy | None = None
    #: secure aggregation (secagg.mode = "secure"): a round closes only with the SecAgg+ sum
    #: (:meth:`FogRound.on_secure_sum`); a plain update is refused (it would be in the clear)
    secure: bool = False
    #: personalisation (hierfl/optim/personalise.py): start each cloud round from
    #: alpha * global + (1 - alpha) * the region's last model; None: from the global model
    personalise_alpha: float | None = None

    @property
    def buffered(self) -> bool:
        """True when the fog combines every ``buffer.buffer_size`` arrivals (FedBuff)."""
        return self.buffer is not None and self.buffer.buffered

    def policy(self, expected_size: int) -> ValidationPolicy:
        """The validation policy for a model of ``expected_size`` parameters.

        Raises:
            ConfigError: if a validation field is out of range.
        """
        return ValidationPolicy(
            expected_size=expected_size,
            max_norm=self.max_norm,
            adaptive_norm_multiplier=self.adaptive_norm_multiplier,
            min_samples=self.min_samples,
            max_samples=self.max_samples,
            max_staleness=self.max_staleness,
            allow_list=self.allowed_edges,
            norm_window=self.norm_window,
            adaptive_min_norms=self.adaptive_min_norms,
        )


@dataclass(slots=True)
class _Accepted:
    num_samples: int
    delta: Float32Vector
    metrics: dict[str, float]
    base_seq: int = 0
    staleness: int = 0  # buffered mode: fog models published since base_seq
    control: Float32Vector | None = None  # SCAFFOLD: the edge's Delta c_i


@dataclass(slots=True)
class _Cycle:
    """State of one cloud round at this fog."""

    version: int
    global_weights: Float32Vector
    weights: Float32Vector
    layout: tuple[LayoutEntry, ...]
    cum_delta: Float32Vector
    fog_round: int = 0
    samples: dict[str, int] = field(default_factory=dict)
    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    # (edge, base seq) of every update folded in this cycle: a copy delivered again (QoS 1
    # redelivery, a re-send after a reconnect) must not be folded into a later fog round
    folded: set[tuple[str, int]] = field(default_factory=set)
    # the signed claims of the accepted updates, (edge, base seq) -> proof: the aggregate's
    # provenance names those of its contributors (hierfl audit verify)
    proofs: dict[tuple[str, int], Any] = field(default_factory=dict)
    # the cycle's aggregate once closed, and when it was last sent (None: not yet / again)
    out: AggregateFrame | None = None
    sent_at: float | None = None
    # the seqs at which a changed fog model was published (ascending, the last 64): a skipped
    # round re-publishes the same weights under a new seq, and an update trained from any seq
    # of one model is as fresh as that model (a slow edge is not made stale by skips)
    model_starts: list[int] = field(default_factory=list)
    # SCAFFOLD: the cloud's c (from the global model, served to the edges) and this cycle's
    # Delta c_f (the mean of the edges' Delta c_i, summed over the fog rounds)
    control: Float32Vector | None = None
    cum_control: Float32Vector | None = None
    # personalisation: the regional model this cycle started from (None: the global model)
    start: Float32Vector | None = None


class FogRound:
    """The fog's state machine.

    Args:
        config: round parameters.
        aggregate: the aggregation rule, ``(updates, weights) -> delta``.
        seq: the first model sequence number to use (resumes after a restart).

    Raises:
        ConfigError: if the validation fields of ``config`` are out of range.

    Usage::

        fog = FogRound(cfg, make_aggregator("fedavg"))
        actions = fog.on_global_model(frame, now)
        actions = fog.on_update(update, now)      # raises ValidationError subclasses
        actions = fog.on_tick(now)                # call at fog.deadline
    """

    def __init__(self, config: FogRoundConfig, aggregate: AggregateFn, *, seq: int = 0,
                 privacy: RegionPrivacy | None = None) -> None:
        self.config = config
        #: differential privacy of this region (None: off): every closed fog round is a
        #: release, accounted before it leaves; no release starts beyond the budget
        self.privacy = privacy
        #: record-level DP (hierfl/privacy/record.py): the region's edges, those whose own
        #: budget is spent (set by :meth:`on_edges_spent`), and whether none will send again
        self.region_edges: frozenset[str] = frozenset()
        self.edges_spent: frozenset[str] = frozenset()
        self.region_spent = False
        self._aggregate = aggregate
        self.state = FogState.WAITING_MODEL
        self.seq = seq
        self.deadline: float | None = None
        self._cycle: _Cycle | None = None
        #: personalisation: the model the region ended its last cloud round with (in memory)
        self.regional: Float32Vector | None = None
        #: a server optimiser for the region, applied to every fog round's combined delta
        #: (its state in memory: a restarted fog starts it afresh); None: the delta as it is
        self.server_opt: ServerOptimizer | None = None
        self._updates: dict[str, _Accepted] = {}
        config.policy(1)  # fail fast on a bad policy; the real one needs the model size
        self._validator: UpdateValidator | None = None
        self._early: list[Admit] = []  # updates that came before the first model
        # buffered mode: the fog's models across global versions (staleness), and the newest
        # base seq folded per edge (an edge's updates come in seq order: an older or equal
        # one again is a duplicate, whatever global version it names)
        self._clock = ModelClock()
        self._last_folded: dict[str, int] = {}

    # --- queries ------------------------------------------------------------------------

    @property
    def version(self) -> int | None:
        """Global version the fog currently works on."""
        return self._cycle.version if self._cycle else None

    @property
    def model_size(self) -> int | None:
        """Number of parameters of the current model."""
        return int(self._cycle.weights.size) if self._cycle else None

    @property
    def pending(self) -> tuple[str, ...]:
        """Edges accepted in the open fog round."""
        return tuple(self._updates)

    @property
    def norm_bound(self) -> float | None:
        """The L2 bound an update must meet now (``inf``: none), or None before a model."""
        return self._validator.norm_bound if self._validator else None

    # --- events -------------------------------------------------------------------------

    def on_global_model(self, frame: ModelFrame, now: float) -> list[Action]:
        """A global model arrived from the cloud.

        Older or equal versions are ignored (returns no action) unless the fog is still
        waiting for its first model.
        """
        if frame.scope != "global" or frame.federation != self.config.federation:
            return []
        if self._cycle is not None and frame.version <= self._cycle.version:
            return []
        w = frame.weights.astype(np.float32, copy=True)
        carried = self._buffer_carry(w.size)  # buffered: the open buffer survives
        self._cycle = _Cycle(frame.version, w.copy(), w, frame.layout, np.zeros_like(w))
        self._cycle.control = frame.control
        if self.config.personalise_alpha is not None and self.regional is not None:
            self._cycle.start = blend(w, self.regional, self.config.personalise_alpha)
            self._cycle.weights = self._cycle.start.copy()
        self._ensure_validator(w.size)
        if (plan := getattr(self.privacy, "plan", None)) is not None:
            plan(w.size)  # distributed DP: the budget check needs the update's dimension
        if self.privacy is not None and not self.privacy.can_start(self.config.k2):
            return self._with_early(self._budget_spent())
        actions = self._open_round(now)
        self._buffer_restore(carried)
        if self.region_edges or self.region_spent:  # record-level DP: a spent region stops
            actions += self.on_edges_spent(self.edges_spent, self.region_edges, now)
        return self._with_early(actions)

    def resume(self, global_frame: ModelFrame, fog_frame: ModelFrame, now: float, *,
               forwarded: AggregateFrame | None = None,
               folded: frozenset[tuple[str, int]] = frozenset()) -> list[Action]:
        """Resume after a restart from the fog model this fog last published (retained).

        Args:
            global_frame: the newest global model.
            fog_frame: this fog's last published model; used when it derives from
                ``global_frame``'s version, else a fresh cycle starts.
            now: current time.
            forwarded: the aggregate this fog had forwarded (kept on disk by the service)
                before it stopped. When it is for ``global_frame``'s version the cloud round
                is over here: the fog resumes waiting for the next global model, instead
                of collecting a finished round again (its second aggregate would be refused
                by the cloud, and the updates in it lost).
            folded: the updates already in ``fog_frame`` (:attr:`PublishModel.folded`,
                kept with it on disk): a copy redelivered after the restart is refused.

        Returns:
            Actions (a re-publish of the fog model with its original ``seq``; none when
            resumed as forwarded).
        """
        if fog_frame.version != global_frame.version or fog_frame.fog_id != self.config.fog_id:
            self.seq = max(self.seq, fog_frame.seq)
            return self.on_global_model(global_frame, now)
        g = global_frame.weights.astype(np.float32, copy=True)
        w = fog_frame.weights.astype(np.float32, copy=True)
        self._cycle = _Cycle(global_frame.version, g, w, global_frame.layout, (w - g),
                             fog_round=fog_frame.fog_round)
        self._cycle.control = global_frame.control
        if self.config.personalise_alpha is not None and fog_frame.fog_round == 0:
            # the served model is the regional start: only the edges' progress goes up
            self._cycle.start, self._cycle.cum_delta = w.copy(), np.zeros_like(w)
        self._ensure_validator(w.size)
        self.seq = fog_frame.seq
        self._cycle.model_starts.append(self.seq)
        self._clock.changed(self.seq)
        self._cycle.folded = set(folded)
        if (forwarded is not None and forwarded.base_version == global_frame.version
                and forwarded.fog_id == self.config.fog_id
                and forwarded.delta.size == g.size):
            c = self._cycle
            c.cum_delta = forwarded.delta.astype(np.float32, copy=True)
            c.weights = (g + c.cum_delta).astype(np.float32)
            c.fog_round = forwarded.fog_rounds
            c.out, c.sent_at = forwarded, None
            self._updates = {}
            self.state = FogState.FORWARDED
            self.deadline = None
            return self._with_early([Forward(forwarded, "resumed")])
        self._updates = {}
        if self.privacy is not None and not self.privacy.can_start(
                self.config.k2 - self._cycle.fog_round):
            return self._with_early(self._budget_spent())
        self.state = FogState.COLLECTING
        self.deadline = now + self.config.round_timeout_s
        if self.privacy is not None:
            self.privacy.draw_sample()
        return self._with_early([PublishModel(self._fog_model(), frozenset(self._cycle.folded))])

    def on_early(self, frame: UpdateFrame, handle: Any = None) -> bool:
        """An update arrived before the fog has a model (``state`` is WAITING_MODEL, after a
        start or a restart): keep it, unjudged, to be judged once the model comes (an
        :class:`Admit` action each, after the model's own actions).

        Returns:
            False when the buffer (``early_limit``) is full: the update is dropped.

        Raises:
            StateError: the fog has a model (call :meth:`on_update`).
        """
        if self.state is not FogState.WAITING_MODEL and not self.holds_updates:
            raise StateError(f"fog {self.config.fog_id} has a model: judge the update now")
        if len(self._early) >= self.config.early_limit:
            return False
        self._early.append(Admit(frame, handle))
        return True

    def spooled(self, version: int, seq: int) -> str:
        """What to do, after a restart, with an update the fog had accepted in round
        ``(version, seq)`` and kept in its spool.

        Returns:
            ``"drop"``: that round is before the resumed fog model, which has it folded in
            already; ``"readmit"``: it is this very round, whose staleness judgement stands
            (:meth:`on_update` with ``readmit``); ``"judge"``: any other round, judged like
            a new update (an older version is stale).
        """
        if version == self.version and seq < self.seq:
            return "drop"
        if (version, seq) == (self.version, self.seq):
            return "readmit"
        return "judge"

    @property
    def holds_updates(self) -> bool:
        """Buffered mode, forwarded: an update that arrives while the fog waits for the next
        global model is held (:meth:`on_early`) and judged against it, not refused (FedBuff
        uses a slow edge's update late, weighted down, rather than losing it)."""
        return self.config.buffered and self.state is FogState.FORWARDED

    @property
    def early(self) -> int:
        """Updates waiting for the first model."""
        return len(self._early)

    def _with_early(self, actions: list[Action]) -> list[Action]:
        early, self._early = self._early, []
        return [*actions, *early]

    def on_update(self, frame: UpdateFrame, now: float, *, readmit: bool = False,
                  proof: Any = None) -> list[Action]:
        """An edge's update arrived; validate it and maybe close the round.

        Args:
            frame: the update.
            now: current time.
            readmit: the update was accepted by this same round (version and seq) before a
                restart, and comes back from the spool: its staleness was judged then
                (a resumed round cannot tell which earlier seqs shared its model).
            proof: the edge's signed claim for this update
                (:class:`~hierfl.wire.frames.EdgeProof`): the aggregate carries the claims
                of its contributors as provenance.

        Raises:
            ValidationError: (a subclass naming the reason, in the order of the module
                docstring) when the update is refused; the state is unchanged then.
        """
        norm = self.check_update(frame, readmit=readmit)
        validator = self._validator
        assert validator is not None
        validator.accept_norm(norm)
        if frame.control is not None:
            checks.check_finite(frame.control)
        replaced = self._updates.get(frame.edge_id)  # buffered: its older update, if any
        if replaced is not None and self._cycle is not None:
            self._cycle.proofs.pop((frame.edge_id, replaced.base_seq), None)
        self._updates[frame.edge_id] = _Accepted(frame.num_samples, frame.delta, frame.metrics,
                                                 frame.base_seq, self._staleness(frame),
                                                 frame.control)
        if proof is not None:
            assert self._cycle is not None
            self._cycle.proofs[(frame.edge_id, frame.base_seq)] = proof
        need = self.config.min_updates
        sampled = self.privacy.sampled if self.privacy is not None else None
        if sampled:  # privacy sampling: the round waits for its sample only
            need = min(need, len(sampled))
        if self.config.buffer is not None and self.config.buffered:
            need = self.config.buffer.buffer_size  # FedBuff: every K arrivals
        if len(self._updates) >= need:
            return self._close(now, timed_out=False)
        if self.region_edges and record.round_can_close(self.region_edges, self.edges_spent,
                                                        self._updates):
            return self._close(now, timed_out=False)  # record-level DP: no more can come
        return []

    def check_update(self, frame: UpdateFrame, *, readmit: bool = False) -> float:
        """Run every check of :meth:`on_update` without changing anything (the service
        spools an update before the round takes it); return the update's L2 norm.

        Raises:
            ValidationError: as :meth:`on_update`.
        """
        cfg = self.config
        if frame.federation != cfg.federation or frame.fog_id != cfg.fog_id:
            raise WrongRecipientError(
                f"update for {frame.federation}/{frame.fog_id} reached fog {cfg.fog_id}"
            )
        # Strangers are refused as strangers, whatever the round: that is the reason to alert on.
        checks.check_sender(frame.edge_id, cfg.allowed_edges)
        if cfg.secure:
            raise SecAggStageError(f"edge {frame.edge_id}: a plain update reached a secure fog "
                                   "(its updates arrive only masked, through SecAgg+)")
        c, validator = self._cycle, self._validator
        if self.state is FogState.BUDGET_SPENT:
            raise PrivacyBudgetExhaustedError(
                f"edge {frame.edge_id}: region {cfg.fog_id} has spent its privacy budget"
            )
        if self.state is not FogState.COLLECTING or c is None or validator is None:
            raise StaleUpdateError(
                f"edge {frame.edge_id}: fog is {self.state.value}, not collecting"
            )
        if cfg.buffered:
            return self._check_buffered(frame, c, validator)
        if frame.base_version != c.version:
            raise StaleUpdateError(
                f"edge {frame.edge_id} trained from ({frame.base_version}, seq "
                f"{frame.base_seq}); current is ({c.version}, seq {self.seq})"
            )
        if self.privacy is not None:
            self.privacy.check_sampled(frame.edge_id)
        if (frame.edge_id, frame.base_seq) in c.folded:
            raise DuplicateUpdateError(
                f"edge {frame.edge_id}: its update from ({c.version}, seq {frame.base_seq}) "
                f"is already in an earlier fog round of v{c.version}"
            )
        base = self.seq if readmit else frame.base_seq
        if base <= self.seq and c.model_starts:
            # staleness counts model changes, not seqs: seqs of skipped rounds share a model
            newer = sum(1 for start in c.model_starts if base < start <= self.seq)
            if base >= c.model_starts[0] or newer > self.config.max_staleness:
                base = self.seq - newer
        try:  # within one global version, staleness is counted in fog models
            norm = validator.validate(
                frame.edge_id, base, self.seq, frame.num_samples, frame.delta,
                already_seen=self._updates,
            )
        except StaleUpdateError as exc:
            raise StaleUpdateError(f"{exc} [fog model seqs of global v{c.version}]") from None
        return norm

    def _staleness(self, frame: UpdateFrame) -> int:
        """Buffered mode: changed fog models published since ``frame.base_seq`` (0 in sync
        mode, where staleness only gates)."""
        if not self.config.buffered:
            return 0
        return self._clock.staleness(frame.base_seq, self.seq)

    def _check_buffered(self, frame: UpdateFrame, c: _Cycle, validator: UpdateValidator) -> float:
        """The checks of buffered mode after recipient, sender and state.

        An update may come from an older global version (its delta is applied to the current
        model, weighted down, as FedBuff does); staleness counts the changed fog models
        published since its base seq, across global versions, and is bounded by
        ``max_staleness``. An update from a model this fog has not published, or one not
        newer than the last update of its edge folded in, is refused.
        """
        if frame.base_version > c.version or frame.base_seq > self.seq:
            raise StaleUpdateError(
                f"edge {frame.edge_id} trained from ({frame.base_version}, seq "
                f"{frame.base_seq}), which this fog has not published (current: "
                f"({c.version}, seq {self.seq}))"
            )
        if (frame.edge_id, frame.base_seq) in c.folded or (
                frame.base_seq <= self._last_folded.get(frame.edge_id, -1)):
            raise DuplicateUpdateError(
                f"edge {frame.edge_id}: its update from seq {frame.base_seq} is already in an "
                "earlier buffer"
            )
        stale = self._staleness(frame)
        try:
            # an edge's newer update replaces its older one still in the buffer (carried
            # over a new global model): one update per edge per buffer, the newest
            held = self._updates.get(frame.edge_id)
            seen = ({e: u for e, u in self._updates.items() if e != frame.edge_id}
                    if held is not None and held.base_seq < frame.base_seq else self._updates)
            return validator.validate(frame.edge_id, self.seq - stale, self.seq,
                                      frame.num_samples, frame.delta, already_seen=seen)
        except StaleUpdateError as exc:
            raise StaleUpdateError(f"{exc} [buffered: {stale} fog models behind, "
                                   f"max_staleness {self.config.max_staleness}]") from None

    def on_secure_sum(self, result: Any, now: float) -> list[Action]:
        """Secure mode: a SecAgg+ round of this fog round ended; close it with the mean of the
        survivors' clipped updates (the unmasked sum / survivors: the fog never saw one).

        Args:
            result: a :class:`hierfl.secagg.service.SecureSum` (version, seq, survivors, sum).
            now: current time.

        Returns:
            The round's actions; none if the fog round it belongs to is no longer open.
        """
        c = self._cycle
        if (self.state is not FogState.COLLECTING or c is None or not result.survivors
                or (result.version, result.seq) != (c.version, self.seq)):
            return []
        n = len(result.survivors)
        weight = getattr(result, "weight", None)
        if weight is not None and weight <= 0:
            return []
        mean = np.asarray(result.sum, dtype=np.float64) / (n if weight is None else weight)
        empty = np.zeros(0, dtype=np.float32)
        # weighted: the region's total weight (its sample count), spread over the survivors;
        # else every survivor counts once (the fog cannot see a sample count)
        total = n if weight is None else max(n, round(weight))
        share = [total // n + (1 if i < total % n else 0) for i in range(n)]
        self._updates = {e: _Accepted(share[i], empty, {}, result.seq)
                         for i, e in enumerate(result.survivors)}
        for e, proof in getattr(result, "proofs", {}).items():
            c.proofs[(e, result.seq)] = proof  # the masked inputs' signed claims
        if (note := getattr(self.privacy, "note_secure_sum", None)) is not None:
            note(result)  # distributed DP: the sum's noise shares (hierfl/secagg/ddp.py)
        return self._close(now, timed_out=False, secure=mean.astype(np.float32))

    def _buffer_carry(self, size: int) -> tuple[dict[str, _Accepted], dict[Any, Any]] | None:
        """Buffered mode, collecting, a newer global model of the same size: the open
        buffer and its proofs, to carry into the new cycle (None otherwise)."""
        c = self._cycle
        if (not self.config.buffered or self.state is not FogState.COLLECTING or c is None
                or c.weights.size != size or not self._updates):
            return None
        proofs = {k: p for k, p in c.proofs.items()
                  if k[0] in self._updates and self._updates[k[0]].base_seq == k[1]}
        return dict(self._updates), proofs

    def _buffer_restore(self, carried: tuple[dict[str, _Accepted], dict[Any, Any]] | None
                        ) -> None:
        """Put a carried buffer into the new cycle: each update one model staler, dropped
        when that exceeds ``max_staleness`` (FedBuff applies a stale delta to the current
        model; the buffer is a set of deltas, whatever model they came from)."""
        if carried is None or self._cycle is None or self.state is not FogState.COLLECTING:
            return
        updates, proofs = carried
        for edge, u in updates.items():
            u.staleness = self._clock.staleness(u.base_seq, self.seq)
            if u.staleness > self.config.max_staleness:
                log.info("fog %s: dropped %s's buffered update (now %d models behind)",
                         self.config.fog_id, edge, u.staleness)
                continue
            self._updates[edge] = u
            key = (edge, u.base_seq)
            if key in proofs:
                self._cycle.proofs[key] = proofs[key]

    def on_sent(self, frame: AggregateFrame, now: float) -> None:
        """The aggregate ``frame`` (of a :class:`Forward`) is written to Kafka: the resend
        timer (``resend_after_s``) starts."""
        c = self._cycle
        if self.state is not FogState.FORWARDED or c is None or c.out is not frame:
            return
        c.sent_at = now
        after = self.config.resend_after_s
        self.deadline = None if after is None else now + after

    @property
    def unsent(self) -> AggregateFrame | None:
        """The cycle's aggregate while it waits to be sent (again): the fog's outbox."""
        c = self._cycle
        if self.state is not FogState.FORWARDED or c is None or c.sent_at is not None:
            return None
        return c.out

    def on_edges_spent(self, spent: frozenset[str], region: frozenset[str],
                       now: float) -> list[Action]:
        """Record-level DP: ``spent`` of the ``region``'s edges have spent their own budget.

        When no more update can come to the open round (every edge of the region is in it or
        spent), the round closes at once instead of at its deadline; when no edge will ever
        send again, the fog forwards at once (whatever ``k2``; ``dp.region_spent`` in the
        aggregate) and then opens no more rounds. See hierfl/privacy/record.py.
        """
        self.edges_spent, self.region_edges = frozenset(spent), frozenset(region)
        c = self._cycle
        if self.state is not FogState.COLLECTING or c is None or not (
                self.region_spent or record.round_can_close(region, spent, self._updates)):
            return []
        if self._updates:
            return self._close(now, timed_out=False)
        if self.region_spent or record.region_spent(region, spent, {}):
            self.region_spent = True
            if c.fog_round:  # earlier fog rounds of this cloud round: forward what they made
                return self._forward(c)
            self.state = FogState.BUDGET_SPENT
            self.deadline = None
            log.warning("fog %s: every edge of the region (%d) has spent its own privacy "
                        "budget: no more rounds", self.config.fog_id, len(region))
            return [PrivacyStop(c.version, 0, 0.0, record=True)]
        return []

    def on_tick(self, now: float) -> list[Action]:
        """Time passed; close or skip the round if its deadline is reached, or, forwarded,
        send the aggregate again when no newer global model came ``resend_after_s`` after
        it was sent."""
        c = self._cycle
        if (self.state is FogState.FORWARDED and c is not None and c.out is not None
                and c.sent_at is not None and self.deadline is not None
                and now >= self.deadline):
            c.sent_at, self.deadline = None, None
            log.warning("fog %s: no global model newer than v%d %.0f s after forwarding; "
                        "sending the aggregate again", self.config.fog_id, c.version,
                        self.config.resend_after_s or 0)
            return [Forward(c.out, "resend")]
        if self.state is not FogState.COLLECTING or self.deadline is None or now < self.deadline:
            return []
        if len(self._updates) >= self.config.quorum:
            return self._close(now, timed_out=True)
        skipped = RoundSkipped(self.version or 0, self.seq, len(self._updates))
        log.warning(
            "fog %s: round (v%s, seq %s) skipped at its deadline with %d of %d updates",
            self.config.fog_id, skipped.version, skipped.seq, skipped.received, self.config.quorum,
        )
        return [skipped, *self._open_round(now, changed=False)]

    # --- transitions --------------------------------------------------------------------

    def _ensure_validator(self, size: int) -> None:
        # One validator per model size: its adaptive norm window outlives rounds and versions.
        if self._validator is None or self._validator.policy.expected_size != size:
            self._validator = UpdateValidator(self.config.policy(size))

    def _open_round(self, now: float, *, changed: bool = True) -> list[Action]:
        self.seq += 1
        c = self._cycle
        if c is not None and (changed or not c.model_starts):
            c.model_starts.append(self.seq)
            del c.model_starts[:-64]
            self._clock.changed(self.seq)
        self._updates = {}
        self.state = FogState.COLLECTING
        self.deadline = now + self.config.round_timeout_s
        c = self._cycle
        if self.privacy is not None:
            self.privacy.draw_sample()
        return [PublishModel(self._fog_model(), frozenset(c.folded) if c else frozenset())]

    def _budget_spent(self) -> list[Action]:
        """Stop releasing: the region's budget cannot pay for what comes next."""
        assert self.privacy is not None
        self.state = FogState.BUDGET_SPENT
        self.deadline = None
        self._updates = {}
        ledger = self.privacy.ledger
        return [PrivacyStop(self.version or 0, ledger.releases, ledger.epsilon())]

    def _forwarded_samples(self) -> int:
        """The sample count the fog claims for its aggregate (its weight at the cloud).

        With FedAvg the fog trusts its edges' (capped) claims and forwards their sum. A
        robust rule gave every contributor one vote, so one accepted but inflated claim must
        not buy its fog the cloud's weight either: the fog forwards contributors x the
        median claim.
        """
        c = self._cycle
        assert c is not None
        claims = list(c.samples.values())
        if getattr(self._aggregate, "robust", False):
            return max(1, round(len(claims) * float(np.median(claims))))
        return max(1, sum(claims))

    def _fog_model(self) -> ModelFrame:
        c = self._cycle
        if c is None:
            raise StateError("no model yet")
        return ModelFrame(
            federation=self.config.federation,
            version=c.version,
            weights=c.weights,
            parent=c.version,
            scope="fog",
            fog_id=self.config.fog_id,
            seq=self.seq,
            fog_round=c.fog_round,
            layout=c.layout,
            metrics=self.privacy.metrics() if self.privacy is not None else {},
            control=c.control,
        )

    def _close(self, now: float, *, timed_out: bool,
               secure: Float32Vector | None = None) -> list[Action]:
        c = self._cycle
        if self.state is not FogState.COLLECTING or c is None:
            raise StateError(f"cannot close a round in state {self.state.value}")
        if self.privacy is not None and not self.privacy.can_start(1):
            return self._budget_spent()  # refuse to start a release beyond the budget
        edges = tuple(sorted(self._updates))
        weights = np.array([self._updates[e].num_samples for e in edges], dtype=np.float64)
        factors = weights
        if self.config.buffer is not None and self.config.buffered:
            # FedBuff: a stale update counts (1 + s) ** -exponent of its samples
            factors = staleness_weights(weights, [self._updates[e].staleness for e in edges],
                                        self.config.buffer.staleness_exponent)
        try:
            if secure is None:
                delta = self._aggregate(np.stack([self._updates[e].delta for e in edges]),
                                        factors)
            else:
                delta = secure
        except AggregationError as exc:
            if not timed_out:
                # Before the deadline, keep collecting: more updates may satisfy the rule, and
                # skipping now would reopen at once, a tight loop of skipped rounds as fast
                # as edges answer. The deadline decides: at most one skip per deadline.
                log.warning("fog %s: round (v%s, seq %s) not aggregated yet with %d updates "
                            "(%s); collecting until its deadline", self.config.fog_id,
                            c.version, self.seq, len(edges), exc)
                return []
            # The rule cannot combine these updates: skip the round (counted), never crash.
            skipped = RoundSkipped(c.version, self.seq, len(edges), reason="aggregation")
            log.warning("fog %s: round (v%s, seq %s) skipped: %s", self.config.fog_id,
                        c.version, self.seq, exc)
            return [skipped, *self._open_round(now, changed=False)]
        if self.privacy is not None:
            # accounted (and on disk) before anything computed from it leaves the fog
            self.privacy.spend()
        if self.server_opt is not None:  # FedOpt for the region (hierfl/optim/server.py)
            delta = self.server_opt.step(delta)
        # Accumulate the cloud-round delta separately: forwarding (g + D) - g would lose
        # float32 precision that the cloud's weighted average then could not recover.
        c.cum_delta = (c.cum_delta + delta).astype(np.float32)
        base = c.global_weights if c.start is None else c.start
        c.weights = (base + c.cum_delta).astype(np.float32)
        c.fog_round += 1
        controls = [u.control for e in edges if (u := self._updates[e]).control is not None]
        if controls:  # SCAFFOLD: Delta c_f of this fog round (hierfl/optim/scaffold.py)
            step = fog_control(controls)
            c.cum_control = step if c.cum_control is None else c.cum_control + step
        for e in edges:
            u = self._updates[e]
            c.folded.add((e, u.base_seq))
            if self.config.buffered:
                self._last_folded[e] = max(self._last_folded.get(e, -1), u.base_seq)
            c.samples[e] = max(c.samples.get(e, 0), u.num_samples)
            c.metrics.append((u.num_samples, u.metrics))
        total = int(weights.sum())
        closed = RoundClosed(c.version, self.seq, c.fog_round, edges, total, timed_out)
        self.region_spent = self.region_spent or record.region_spent(
            self.region_edges, self.edges_spent, {e: u.metrics for e, u in self._updates.items()})
        self._updates = {}
        if c.fog_round < self.config.k2 and not self.region_spent:
            return [closed, *self._open_round(now)]
        return [closed, *self._forward(c)]

    def _forward(self, c: _Cycle) -> list[Action]:
        """End the cloud round here: forward what its fog rounds made."""
        self.state = FogState.FORWARDED
        self.deadline = None
        if self.config.personalise_alpha is not None:
            self.regional = c.weights.copy()  # the region's model: next round's blend
        agg = AggregateFrame(
            federation=self.config.federation,
            fog_id=self.config.fog_id,
            base_version=c.version,
            num_samples=self._forwarded_samples(),
            contributors=tuple(sorted(c.samples)),
            fog_rounds=c.fog_round,
            delta=c.cum_delta.copy(),
            metrics={**_weighted_metrics(c.metrics),
                     **(self.privacy.metrics() if self.privacy is not None else {}),
                     **({record.REGION_SPENT_METRIC: 1.0} if self.region_spent else {})},
            provenance=tuple(p for (edge, _), p in sorted(c.proofs.items(),
                                                          key=lambda kv: kv[0])
                             if edge in c.samples),
            control=None if c.cum_control is None else c.cum_control.copy(),
        )
        c.out, c.sent_at = agg, None
        return [Forward(agg)]


def _weighted_metrics(items: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Sample-weighted mean of each metric over the updates that reported it; the privacy
    account (``dp.*``, e.g. each edge's own epsilon in record mode) is the worst, not a mean."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    worst: dict[str, float] = {}
    for n, m in items:
        for k, v in m.items():
            if k.startswith("dp."):
                worst[k] = max(worst.get(k, float(v)), float(v))
                continue
            sums[k] = sums.get(k, 0.0) + n * float(v)
            counts[k] = counts.get(k, 0.0) + n
    return {**{k: sums[k] / counts[k] for k in sums if counts[k] > 0}, **worst}
