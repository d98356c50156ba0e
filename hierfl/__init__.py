"""hierfl: hierarchical edge-fog-cloud federated learning for IoT over MQTT and Kafka.

Importing this package is cheap: it pulls in no broker client, no torch.
"""

from hierfl.errors import HierflError

__version__ = "0.1.0"

__all__ = ["HierflError", "__version__"]
