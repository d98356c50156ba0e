"""Every MQTT and Kafka topic name hierfl uses, built and parsed in one place.

MQTT (edge <-> fog), for federation ``F``, fog ``G``, edge ``E``:

- ``hierfl/F/G/model``        retained, QoS 1: the model the edges of fog G train from next
- ``hierfl/F/G/delta``        QoS 1, not retained: each new fog model as a delta against the
                              previous one (or in full when the fog has no base to send)
- ``hierfl/F/G/update/E``     QoS 1: edge E's update frame (broker ACLs can pin E to it)
- ``hierfl/F/G/status/E``     retained ``online``/``offline`` (last will), for liveness
- ``hierfl/F/G/stats``        retained JSON counters of fog G (monitoring; never aggregated)
- ``hierfl/F/G/secagg/begin``     QoS 1: fog G opens a secure-aggregation round (signed)
- ``hierfl/F/G/secagg/up/E``      QoS 1: edge E's signed SecAgg+ messages to fog G
- ``hierfl/F/G/secagg/down/E``    QoS 1: fog G's signed SecAgg+ messages addressed to edge E

Kafka (fog <-> cloud):

- ``hierfl.F.aggregates``     key = fog id; value = chunks of a fog aggregate frame
- ``hierfl.F.models``         key = federation; value = chunks of a global model frame
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hierfl.errors import ConfigError, UnknownSenderError

__all__ = [
    "PREFIX",
    "ParsedMqttTopic",
    "aggregates",
    "check_id",
    "model",
    "model_delta",
    "models",
    "parse_mqtt",
    "secagg_begin",
    "secagg_down",
    "secagg_up",
    "secagg_up_filter",
    "stats",
    "status",
    "status_filter",
    "update",
    "update_filter",
]

PREFIX = "hierfl"

# Ids end up in MQTT topic levels and Kafka topic names: keep them to a safe alphabet.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # always used with fullmatch


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid federation/fog/edge id.

    Args:
        kind: what the id names, for the error message.
        value: the id.

    Returns:
        The id, unchanged.

    Raises:
        ConfigError: if the id is empty, too long, or holds characters other than
            ``A-Z a-z 0-9 _ -``.
    """
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ConfigError(
            f"{kind} id {value!r} is invalid: use 1-64 characters from A-Z a-z 0-9 _ -"
        )
    return value


def model(federation: str, fog: str) -> str:
    """MQTT topic of the (retained) model that fog ``fog``'s edges train from."""
    return f"{PREFIX}/{federation}/{fog}/model"


def model_delta(federation: str, fog: str) -> str:
    """MQTT topic of fog ``fog``'s model stream (not retained): deltas, or full models."""
    return f"{PREFIX}/{federation}/{fog}/delta"


def update(federation: str, fog: str, edge: str) -> str:
    """MQTT topic on which edge ``edge`` publishes its updates to fog ``fog``."""
    return f"{PREFIX}/{federation}/{fog}/update/{edge}"


def update_filter(federation: str, fog: str) -> str:
    """MQTT subscription filter matching every edge's update topic of one fog."""
    return f"{PREFIX}/{federation}/{fog}/update/+"


def status(federation: str, fog: str, edge: str) -> str:
    """MQTT topic of a client's retained online/offline status (its last will)."""
    return f"{PREFIX}/{federation}/{fog}/status/{edge}"


def status_filter(federation: str, fog: str) -> str:
    """MQTT subscription filter matching every status topic of one fog."""
    return f"{PREFIX}/{federation}/{fog}/status/+"


def stats(federation: str, fog: str) -> str:
    """MQTT topic where fog ``fog`` publishes its counters (retained JSON, for monitoring)."""
    return f"{PREFIX}/{federation}/{fog}/stats"


def secagg_begin(federation: str, fog: str) -> str:
    """MQTT topic on which fog ``fog`` opens each secure-aggregation round."""
    return f"{PREFIX}/{federation}/{fog}/secagg/begin"


def secagg_up(federation: str, fog: str, edge: str) -> str:
    """MQTT topic of edge ``edge``'s secure-aggregation messages to its fog."""
    return f"{PREFIX}/{federation}/{fog}/secagg/up/{edge}"


def secagg_up_filter(federation: str, fog: str) -> str:
    """MQTT filter matching every edge's secure-aggregation topic of one fog."""
    return f"{PREFIX}/{federation}/{fog}/secagg/up/+"


def secagg_down(federation: str, fog: str, edge: str) -> str:
    """MQTT topic of the fog's secure-aggregation messages addressed to edge ``edge``."""
    return f"{PREFIX}/{federation}/{fog}/secagg/down/{edge}"


def aggregates(federation: str) -> str:
    """Kafka topic carrying fog aggregates to the cloud (key = fog id)."""
    return f"{PREFIX}.{federation}.aggregates"


def models(federation: str) -> str:
    """Kafka topic carrying global models from the cloud to every fog."""
    return f"{PREFIX}.{federation}.models"


@dataclass(frozen=True, slots=True)
class ParsedMqttTopic:
    """The parts of an MQTT topic name: ``kind`` is ``model``, ``delta``, ``stats``,
    ``update`` or ``status``."""

    federation: str
    fog: str
    kind: str
    client: str | None


def parse_mqtt(topic: str) -> ParsedMqttTopic:
    """Split an MQTT topic built by this module into its parts.

    Args:
        topic: the topic name a message arrived on.

    Returns:
        The parsed parts.

    Raises:
        UnknownSenderError: if the topic is not one hierfl builds (the sender is not
            where a sender may be).
    """
    parts = topic.split("/")
    ok = (
        len(parts) >= 4
        and parts[0] == PREFIX
        and all(_ID.fullmatch(p) for p in parts[1:])
    )
    if ok and len(parts) == 4 and parts[3] in ("model", "delta", "stats"):
        return ParsedMqttTopic(parts[1], parts[2], parts[3], None)
    if ok and len(parts) == 5 and parts[3] in ("update", "status"):
        return ParsedMqttTopic(parts[1], parts[2], parts[3], parts[4])
    raise UnknownSenderError(f"topic {topic!r} is not a hierfl topic")
