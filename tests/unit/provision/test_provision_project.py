"""Project files: parsing, numbered edges, and clear ConfigErrors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from hierfl.errors import ConfigError
from hierfl.provision import ProjectSpec, load_project, parse_party
from hierfl.provision.project import numbered_edges

GOOD = """\
federation = "city"
mqtt_hosts = ["mqtt.example.org", "127.0.0.1"]
kafka_hosts = ["kafka.example.org", "::1"]
mqtt_url = "mqtts://mqtt.example.org:8883"
kafka_bootstrap = "kafka.example.org:9093"
[fogs.north]
edges = ["n0", "n1"]
[fogs.south]
edges = 3
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "project.toml"
    path.write_text(text)
    return path


def test_load_project(tmp_path: Path) -> None:
    spec = load_project(_write(tmp_path, GOOD))
    assert spec.federation == "city"
    assert spec.fogs == {"north": ("n0", "n1"), "south": ("e000", "e001", "e002")}
    assert spec.kafka_hosts == ("kafka.example.org", "::1")
    assert [p.id for p in spec.parties] == [
        "cloud", "fog/north", "edge/north/n0", "edge/north/n1",
        "fog/south", "edge/south/e000", "edge/south/e001", "edge/south/e002",
    ]


def test_numbered_edges_widen() -> None:
    assert numbered_edges(2) == ("e000", "e001")
    assert numbered_edges(1001)[-1] == "e1000"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("federation = 'a b'\n[fogs.n]\nedges = 1\n", "federation id 'a b' is invalid"),
        ("federation = 'c'\n", "at least one"),
        ("federation = 'c'\n[fogs.n]\nedges = ['x/y']\n", "edge id 'x/y' is invalid"),
        ("federation = 'c'\n[fogs.'n/1']\nedges = 1\n", "fog id 'n/1' is invalid"),
        ("federation = 'c'\n[fogs.n]\nedges = ['a', 'a']\n", "twice"),
        ("federation = 'c'\n[fogs.n]\nedges = ['n']\n", "id of its fog"),
        ("federation = 'c'\n[fogs.n]\nedges = -1\n", "edges must be in"),
        ("federation = 'c'\n[fogs.n]\nedges = 'many'\n", "list of ids or a count"),
        ("federation = 'c'\nfoo = 1\n[fogs.n]\nedges = 1\n", "unknown key"),
        ("federation = 'c'\nmqtt_url = 'http://x'\n[fogs.n]\nedges = 1\n", "mqtts://"),
        ("federation = 'c'\nkafka_bootstrap = 'x'\n[fogs.n]\nedges = 1\n", "host:port"),
        ("federation = 'c'\nmqtt_hosts = ['bad host']\n[fogs.n]\nedges = 1\n", "mqtt_hosts"),
        ("federation = 'c'\nmin_fogs = 2\n[fogs.n]\nedges = 1\n", "min_fogs"),
        ("federation = [\n", "not valid TOML"),
    ],
)
def test_bad_project_files(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_project(_write(tmp_path, text))


def test_missing_project_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read project file"):
        load_project(tmp_path / "nope.toml")


def test_spec_in_code() -> None:
    spec = ProjectSpec("city", {"north": ["n0"]})  # type: ignore[dict-item]
    assert spec.fogs == {"north": ("n0",)}


def test_parse_party() -> None:
    assert parse_party("cloud").role == "cloud"
    assert parse_party("fog/north").kit_name == "fog-north"
    edge = parse_party("edge/north/n0")
    assert (edge.role, edge.fog, edge.edge, edge.kit_name) == ("edge", "north", "n0",
                                                                 "edge-north-n0")
    for bad in ("edge/north", "fog/a/b", "nobody", "edge/n/x y"):
        with pytest.raises(ConfigError):
            parse_party(bad)


def test_ids_whose_kit_folders_would_collide_are_refused() -> None:
    with pytest.raises(ConfigError, match="share the startup kit folder"):
        ProjectSpec(federation="city", fogs={"a-b": ("c",), "a": ("b-c",)})
