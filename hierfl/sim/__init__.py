"""Run a whole federation on one machine: throwaway brokers, topology, datasets, attacks, report.

Nothing is imported here on purpose: ``hierfl.sim.brokers`` and friends are imported by name,
so that importing the package costs nothing and pulls in no optional dependency.
"""
