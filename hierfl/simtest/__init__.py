"""The deterministic simulator of the whole hierarchy (``hierfl simtest``, ``make simtest``).

The real cloud, fog and edge services run over the in-memory brokers on a virtual clock;
a seed decides the topology, the settings and every fault; invariants are checked after every
step. See docs/simulation.md.
"""

from hierfl.simtest.world import SeedResult, plan_for, run_seed

__all__ = ["SeedResult", "plan_for", "run_seed"]
