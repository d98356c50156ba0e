"""In-memory MQTT and Kafka brokers and transports: the real links' semantics, no sockets.

The in-memory twin of :mod:`hierfl.transport.mqtt` and :mod:`hierfl.transport.kafka`, as httpx's
``MockTransport`` is of its HTTP transports: :class:`MemoryMqttTransport` satisfies
:class:`~hierfl.transport.base.MqttLink`, :class:`MemoryKafkaProducer`
:class:`~hierfl.transport.base.FrameProducer` and :class:`MemoryKafkaConsumer`
:class:`~hierfl.transport.base.FrameConsumer`, and ``tests/contract`` runs one suite against them
and against mosquitto, amqtt and Tansu. Everything runs on the caller's event loop: deliveries go
through asyncio queues and events, nothing sleeps or reads a clock, so a seeded scheduler and a
virtual clock (the simulator) decide every interleaving.

What is modelled:

* MQTT 3.1.1 (:class:`MemoryMqttBroker`): QoS 0 and 1, in order per publisher; topic filters
  with ``+`` and ``#`` (``a/#`` matches ``a``; wildcards at the first level skip ``$`` topics);
  retained messages (a retained publish replaces the topic's, an empty one clears it, a new or
  repeated subscription gets the matching ones first with ``retain`` set; live deliveries have
  ``retain`` False, as brokers must send them); persistent sessions (``clean_session=False``
  keeps the subscriptions, and QoS 1 messages published while the client is away are queued,
  in order, at most ``max_queued_messages``, newer ones dropped and counted, like mosquitto's
  ``max_queued_messages``); a client id connecting again takes the session over; the last will,
  published retained when a client vanishes (:meth:`MemoryMqttBroker.drop_client`), never on a
  clean exit (aiomqtt 2 always sends DISCONNECT); payloads over ``MqttSettings.max_packet_bytes``
  split into chunks and reassembled exactly as :class:`~hierfl.transport.mqtt.MqttTransport`
  does (same sub-topics, same :class:`~hierfl.wire.chunking.ChunkCollector`).
* Kafka (:class:`MemoryKafkaBroker`): topics of ``partitions`` append-only logs with offsets
  from 0 (a key picks its partition, so one key's records stay in order); frames sent as chunk
  records by :func:`~hierfl.wire.chunking.split_frame` with ``KafkaSettings.chunk_bytes``, read
  back by a :class:`~hierfl.wire.chunking.Reassembler`; consumer groups whose committed offsets
  outlive their consumers; the start modes of
  :class:`~hierfl.transport.kafka.KafkaConsumerTransport`
  (``committed``, ``earliest``, ``latest_frame``).
* Faults, for the simulator: ``restart(persist=...)`` of either broker (without persistence,
  retained messages, sessions, queued messages, logs and committed offsets are lost); every
  connected client gets a :class:`~hierfl.errors.DisconnectedError` on its next call or
  iteration, and connecting while a broker is stopped raises
  :class:`~hierfl.errors.BrokerUnavailableError`. A :data:`FaultHook` decides per message:
  on MQTT per delivery to one subscriber (drop it, deliver it twice, or hold it back until
  :meth:`MemoryMqttBroker.release_delayed`, which reorders it after later messages); on Kafka
  per chunk record produced (drop: the send fails and nothing is written; duplicate: written
  twice, a retried send; delay: written but the acknowledgement is lost, so the send fails and
  a retry duplicates it). :func:`random_faults` builds one from a seeded ``random.Random``.

The brokers live in :mod:`hierfl.transport.memory_mqtt` and :mod:`hierfl.transport.memory_kafka`,
the fault hook in :mod:`hierfl.transport.faults`; this module gathers them.

What is not: QoS 2; MQTT 5 (properties, shared subscriptions, session or message expiry);
authentication and ACLs; packet limits enforced by the broker (a publish over the limit is split
by the transport, never refused); in-flight QoS 1 redelivery after a reconnect (a message is
acknowledged once it is in the client's queue, as paho does, so what sat in a dropped
connection's queue is lost: use a duplicate fault for DUP redelivery); a message matching two
filters of one session is delivered once. On Kafka: consumer-group membership and rebalancing
(consumers are assigned every partition, as the real transport assigns them), transactions,
idempotent producers, retention and compaction, timestamps and headers.
"""

from __future__ import annotations

from hierfl.transport.faults import Envelope, Fault, FaultHook, random_faults
from hierfl.transport.memory_kafka import (
    KafkaRecord,
    MemoryKafkaBroker,
    MemoryKafkaConsumer,
    MemoryKafkaProducer,
)
from hierfl.transport.memory_mqtt import (
    MemoryMqttBroker,
    MemoryMqttTransport,
    topic_matches,
    validate_filter,
    validate_topic,
)

__all__ = [
    "Envelope",
    "Fault",
    "FaultHook",
    "KafkaRecord",
    "MemoryKafkaBroker",
    "MemoryKafkaConsumer",
    "MemoryKafkaProducer",
    "MemoryMqttBroker",
    "MemoryMqttTransport",
    "random_faults",
    "topic_matches",
    "validate_filter",
    "validate_topic",
]
