"""Broker I/O. Only this package imports aiomqtt and aiokafka.

The seam the tiers code against is in :mod:`hierfl.transport.base` (re-exported here, cheap to
import); the real links are :mod:`~hierfl.transport.mqtt` and :mod:`~hierfl.transport.kafka`,
their in-memory twins :mod:`~hierfl.transport.memory`.
"""

from hierfl.transport.base import (
    ConsumerStart,
    FrameConsumer,
    FrameProducer,
    Inbound,
    MqttLink,
    MqttPublisher,
    MqttSubscriber,
)

__all__ = [
    "ConsumerStart",
    "FrameConsumer",
    "FrameProducer",
    "Inbound",
    "MqttLink",
    "MqttPublisher",
    "MqttSubscriber",
]
