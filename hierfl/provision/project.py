"""The project of a federation to provision: parties, hosts and URLs, read from a TOML file.

A project file::

    federation = "city"
    mqtt_hosts = ["mqtt.example.org", "127.0.0.1"]   # SANs of the MQTT broker certificate
    kafka_hosts = ["kafka.example.org", "127.0.0.1"] # SANs of the Kafka broker certificate
    mqtt_url = "mqtts://mqtt.example.org:8883"       # written into the edge and fog kits
    kafka_bootstrap = "kafka.example.org:9093"       # written into the fog and cloud kits
    min_fogs = 2                                      # optional; default: every fog
    [fogs.north]
    edges = ["n0", "n1"]     # explicit edge ids
    [fogs.south]
    edges = 3                # a count: ids e000, e001, e002 (at least 3 digits, zero-padded)

Party ids, used as certificate CNs, MQTT usernames, Kafka principals and trust-bundle keys:
``cloud``, ``fog/<F>`` and ``edge/<F>/<E>``.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hierfl import topics
from hierfl.errors import ConfigError
from hierfl.security.trust import edge_party, fog_party

__all__ = [
    "CLOUD",
    "Party",
    "ProjectSpec",
    "load_project",
    "numbered_edges",
    "parse_party",
    "project_from_dict",
]

CLOUD = "cloud"
_MAX_EDGES_PER_FOG = 100_000


@dataclass(frozen=True, slots=True)
class Party:
    """One party of the federation: its role, fog and edge ids (``None`` where not part of it).

    Attributes:
        role: ``cloud``, ``fog`` or ``edge``.
        fog: the fog id (fog and edge parties).
        edge: the edge id (edge parties).
    """

    role: str
    fog: str | None = None
    edge: str | None = None

    @property
    def id(self) -> str:
        """The party id: ``cloud``, ``fog/<F>`` or ``edge/<F>/<E>``."""
        if self.role == "cloud":
            return CLOUD
        if self.role == "fog":
            return fog_party(str(self.fog))
        return edge_party(str(self.fog), str(self.edge))

    @property
    def kit_name(self) -> str:
        """Folder name of the party's startup kit: ``cloud``, ``fog-<F>``, ``edge-<F>-<E>``."""
        return self.id.replace("/", "-")


def parse_party(party_id: str) -> Party:
    """Parse a party id.

    Args:
        party_id: ``cloud``, ``fog/<F>`` or ``edge/<F>/<E>``.

    Returns:
        The party.

    Raises:
        ConfigError: if the id has another form or an invalid fog or edge id.
    """
    parts = party_id.split("/")
    if parts == [CLOUD]:
        return Party("cloud")
    if len(parts) == 2 and parts[0] == "fog":
        return Party("fog", topics.check_id("fog", parts[1]))
    if len(parts) == 3 and parts[0] == "edge":
        return Party("edge", topics.check_id("fog", parts[1]), topics.check_id("edge", parts[2]))
    raise ConfigError(f"party id {party_id!r} is invalid: use cloud, fog/<F> or edge/<F>/<E>")


def numbered_edges(count: int) -> tuple[str, ...]:
    """Edge ids for ``edges = count``: ``e000``, ``e001``, ... (at least 3 digits)."""
    width = max(3, len(str(count - 1)))
    return tuple(f"e{i:0{width}d}" for i in range(count))


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    """What to provision. Build it in code or with :func:`load_project`.

    Example::

        spec = ProjectSpec(federation="city", fogs={"north": ("n0", "n1"), "south": ("s0",)})

    Attributes:
        federation: the federation id.
        fogs: fog id -> its edge ids.
        mqtt_hosts: DNS names and IP addresses of the MQTT broker (its certificate's SANs).
        kafka_hosts: the same for the Kafka broker.
        mqtt_url: MQTT URL written into the edge and fog kits.
        kafka_bootstrap: Kafka bootstrap servers written into the fog and cloud kits.
        min_fogs: the cloud's quorum (``None``: every fog).
    """

    federation: str
    fogs: dict[str, tuple[str, ...]]
    mqtt_hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    kafka_hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    mqtt_url: str = "mqtts://localhost:8883"
    kafka_bootstrap: str = "localhost:9093"
    min_fogs: int | None = None

    def __post_init__(self) -> None:
        topics.check_id("federation", self.federation)
        if not self.fogs:
            raise ConfigError("a project needs at least one fog ([fogs.<id>] in the project file)")
        object.__setattr__(self, "fogs", {f: tuple(e) for f, e in self.fogs.items()})
        object.__setattr__(self, "mqtt_hosts", tuple(self.mqtt_hosts))
        object.__setattr__(self, "kafka_hosts", tuple(self.kafka_hosts))
        for fog, edges in self.fogs.items():
            topics.check_id("fog", fog)
            seen: set[str] = set()
            for edge in edges:
                topics.check_id("edge", edge)
                if edge in seen:
                    raise ConfigError(f"fog {fog!r} lists edge {edge!r} twice")
                if edge == fog:
                    # Both would own hierfl/<fed>/<fog>/status/<fog>.
                    raise ConfigError(f"edge {edge!r} has the id of its fog; rename it")
                seen.add(edge)
        for name in ("mqtt_hosts", "kafka_hosts"):
            hosts = getattr(self, name)
            if not hosts or not all(isinstance(h, str) and _valid_host(h) for h in hosts):
                raise ConfigError(f"{name} must be a non-empty list of DNS names or IP addresses")
        _check_url(self.mqtt_url)
        if not self.kafka_bootstrap or any(
            not _host_port(hp) for hp in self.kafka_bootstrap.split(",")
        ):
            raise ConfigError(
                f"kafka_bootstrap {self.kafka_bootstrap!r} must be host:port[,host:port...]"
            )
        if self.min_fogs is not None and not 1 <= self.min_fogs <= len(self.fogs):
            raise ConfigError(f"min_fogs must be in 1..{len(self.fogs)}, got {self.min_fogs}")
        kits: dict[str, str] = {}
        for party in self.parties:
            other = kits.setdefault(party.kit_name, party.id)
            if other != party.id:
                # ids may hold "-", the kit names' separator: fog "a-b" edge "c" and fog "a"
                # edge "b-c" would share the folder edge-a-b-c (and one would overwrite the other)
                raise ConfigError(
                    f"{party.id} and {other} would share the startup kit folder "
                    f"{party.kit_name!r}; rename one of them"
                )

    @property
    def parties(self) -> tuple[Party, ...]:
        """Every party: the cloud, then each fog followed by its edges."""
        out = [Party("cloud")]
        for fog, edges in self.fogs.items():
            out.append(Party("fog", fog))
            out.extend(Party("edge", fog, e) for e in edges)
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data (the form :func:`project_from_dict` reads)."""
        return {
            "federation": self.federation,
            "fogs": {f: {"edges": list(e)} for f, e in self.fogs.items()},
            "mqtt_hosts": list(self.mqtt_hosts),
            "kafka_hosts": list(self.kafka_hosts),
            "mqtt_url": self.mqtt_url,
            "kafka_bootstrap": self.kafka_bootstrap,
            "min_fogs": self.min_fogs,
        }


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        return bool(host) and len(host) <= 253 and all(
            0 < len(lb) <= 63 and lb.replace("-", "").replace("*", "").isalnum()
            for lb in labels
        )
    return True


def _host_port(value: str) -> bool:
    host, sep, port = value.strip().rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    try:
        _ = parts.port  # raises on a malformed port
    except ValueError:
        ok = False
    else:
        ok = parts.scheme in ("mqtt", "mqtts") and bool(parts.hostname)
    if not ok:
        raise ConfigError(f"mqtt_url {url!r} must look like mqtts://host:8883")


def project_from_dict(data: dict[str, Any], *, source: str = "project") -> ProjectSpec:
    """Build a :class:`ProjectSpec` from parsed project-file data.

    Args:
        data: the parsed TOML (or JSON) document.
        source: where it came from, for error messages.

    Returns:
        The validated spec.

    Raises:
        ConfigError: on a missing, unknown or malformed key.
    """
    known = {"federation", "fogs", "mqtt_hosts", "kafka_hosts", "mqtt_url", "kafka_bootstrap",
             "min_fogs"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
    if "federation" not in data or not isinstance(data["federation"], str):
        raise ConfigError(f"{source}: 'federation' (a string) is required")
    fogs_raw = data.get("fogs")
    if not isinstance(fogs_raw, dict) or not fogs_raw:
        raise ConfigError(f"{source}: at least one [fogs.<id>] table is required")
    fogs: dict[str, tuple[str, ...]] = {}
    for fog, table in fogs_raw.items():
        if not isinstance(table, dict) or set(table) != {"edges"}:
            raise ConfigError(f"{source}: [fogs.{fog}] must hold exactly one key, 'edges'")
        edges = table["edges"]
        if isinstance(edges, bool) or not isinstance(edges, int | list):
            raise ConfigError(f"{source}: fogs.{fog}.edges must be a list of ids or a count")
        if isinstance(edges, int):
            if not 0 <= edges <= _MAX_EDGES_PER_FOG:
                raise ConfigError(
                    f"{source}: fogs.{fog}.edges must be in 0..{_MAX_EDGES_PER_FOG}, got {edges}"
                )
            fogs[fog] = numbered_edges(edges)
        else:
            if not all(isinstance(e, str) for e in edges):
                raise ConfigError(f"{source}: fogs.{fog}.edges must hold strings")
            fogs[fog] = tuple(edges)
    kwargs: dict[str, Any] = {}
    for key in ("mqtt_hosts", "kafka_hosts"):
        if key in data:
            if not isinstance(data[key], list):
                raise ConfigError(f"{source}: {key} must be a list of strings")
            kwargs[key] = tuple(data[key])
    for key in ("mqtt_url", "kafka_bootstrap"):
        if key in data:
            if not isinstance(data[key], str):
                raise ConfigError(f"{source}: {key} must be a string")
            kwargs[key] = data[key]
    min_fogs = data.get("min_fogs")
    if min_fogs is not None and (isinstance(min_fogs, bool) or not isinstance(min_fogs, int)):
        raise ConfigError(f"{source}: min_fogs must be an integer")
    try:
        return ProjectSpec(data["federation"], fogs, min_fogs=min_fogs, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_project(path: Path) -> ProjectSpec:
    """Read and validate a project file (TOML).

    Args:
        path: the project file.

    Returns:
        The validated spec.

    Raises:
        ConfigError: if the file cannot be read, is not TOML, or describes an invalid project.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read project file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"project file {path} is not valid TOML: {exc}") from None
    return project_from_dict(data, source=str(path))
