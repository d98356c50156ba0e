"""Differential privacy: clipping and Gaussian noise, accounting, the persisted ledger.

Nothing here imports torch (fog and cloud use it); the record-level DP-SGD trainer
(:mod:`hierfl.privacy.dpsgd`) is the one torch-only module and is imported lazily by the edge.
"""
