"""Learning-quality tools that need no torch: server optimisers (FedOpt) and their state.

:mod:`hierfl.optim.server` holds the maths (numpy only: fogs and the cloud run without torch);
:mod:`hierfl.optim.checkpoint` keeps an optimiser's state beside the cloud's model versions.
"""

from hierfl.optim.server import (
    SERVER_OPTIMIZERS,
    ServerOptConfig,
    ServerOptimizer,
    make_server_optimizer,
)

__all__ = ["SERVER_OPTIMIZERS", "ServerOptConfig", "ServerOptimizer", "make_server_optimizer"]
