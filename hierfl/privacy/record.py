"""Record-level DP's end of a region: when every edge has spent its own budget, stop at once.

In ``record`` mode each edge accounts for its own records (DP-SGD, :mod:`hierfl.privacy.dpsgd`)
and stops training once its budget cannot pay for another local round. Without more, its fog
would keep opening rounds nobody answers (each skipped at its deadline) and the cloud would wait
for aggregates that never come. So:

- the edge marks its last update (:data:`LAST_UPDATE_METRIC` = 1: its budget cannot pay for
  another round of ``local_epochs``), decided by :func:`is_last_update` after training;
- the fog knows which of its edges are spent (each edge's retained status ``budget_spent``) and
  which edges its region has (``allowed_edges``, else the edges that announced a status);
  :func:`round_can_close`: every edge of the region is either in the open round or spent, so
  nothing more can come: the fog closes the round at once (not at its deadline);
  :func:`region_spent`: every edge is spent or sent its last update: the fog forwards at once
  (whatever ``k2``) with :data:`REGION_SPENT_METRIC` = 1 in the aggregate, and opens no more
  rounds (state ``budget_spent``);
- the cloud (:class:`hierfl.privacy.federation.FederationPrivacy`) ends the federation
  (status ``stopped: privacy budget``) once every region it knows has reported that.

Pure logic; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "LAST_UPDATE_METRIC",
    "REGION_SPENT_METRIC",
    "is_last_update",
    "region_spent",
    "reported_samples",
    "round_can_close",
]

#: an edge's update metric: 1.0 when its budget cannot pay for another local round
LAST_UPDATE_METRIC = "dp.last_update"
#: a fog aggregate's metric: 1.0 when no edge of its region will send another update
REGION_SPENT_METRIC = "dp.region_spent"


def is_last_update(task: Any, epochs: int) -> bool:
    """Whether a DP-SGD task (``accountant``, ``steps_per_epoch``, ``target_epsilon``) cannot
    pay for another ``epochs`` of training: the update just trained is the edge's last.
    A task without an accountant (not record mode) never is."""
    accountant = getattr(task, "accountant", None)
    target = getattr(task, "target_epsilon", None)
    steps = getattr(task, "steps_per_epoch", None)
    if accountant is None or target is None or steps is None:
        return False
    return bool(accountant.would_exceed(target, int(epochs) * int(steps)))


def reported_samples(privacy: Any, true_count: int) -> int:
    """The sample count an edge reports with its update.

    DP-SGD protects the records, not their number: the true count (the update's FedAvg weight)
    tells the fog, and through its aggregate the cloud, how much data the edge holds. With DP
    on and ``privacy.report_samples`` set, every edge reports that fixed number instead (FedAvg
    then weighs edges equally); otherwise the true count (docs/privacy.md says so).
    """
    fixed = getattr(privacy, "report_samples", None)
    if getattr(privacy, "mode", "off") != "off" and fixed is not None:
        return int(fixed)
    return int(true_count)


def _last(metrics: Mapping[str, float]) -> bool:
    return float(metrics.get(LAST_UPDATE_METRIC, 0.0)) >= 1.0


def round_can_close(region: Iterable[str], spent: Iterable[str],
                    pending: Iterable[str]) -> bool:
    """Whether no more update can come to the open round: every edge of ``region`` (non-empty)
    is in it (``pending``) or has spent its budget."""
    r = frozenset(region)
    return bool(r) and r <= (frozenset(spent) | frozenset(pending))


def region_spent(region: Iterable[str], spent: Iterable[str],
                 pending: Mapping[str, Mapping[str, float]]) -> bool:
    """Whether no edge of ``region`` (non-empty) will ever send again: each has spent its
    budget or marked its update in the open round (``pending``: edge -> metrics) as its last."""
    r = frozenset(region)
    done = frozenset(spent) | {e for e, m in pending.items() if _last(m)}
    return bool(r) and r <= done
