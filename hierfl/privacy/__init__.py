"""Differential privacy: clipping and noise, accounting, the persisted ledger, distributed DP.

Nothing here imports torch (fog and cloud use it); the record-level DP-SGD trainer
(:mod:`hierfl.privacy.dpsgd`) is the one torch-only module and is imported lazily by the edge.
:mod:`hierfl.privacy.distributed` holds the integer (Skellam) noise shares edges add before
secure aggregation, and :mod:`hierfl.privacy.record` record-level DP's end of a region.
"""
