"""Settings: sources and precedence, validation, error messages, and the shipped examples."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from hierfl.config import (
    CloudSettings,
    EdgeSettings,
    FogSettings,
    KafkaSettings,
    LimitsSettings,
    MqttSettings,
)
from hierfl.errors import ConfigError
from hierfl.wire import DecodeLimits

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    (EdgeSettings, ROOT / "edge" / "edge.toml"),
    (FogSettings, ROOT / "fog" / "fog.toml"),
    (CloudSettings, ROOT / "cloud" / "cloud.toml"),
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No HIERFL_* variable of the developer's shell or CI leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("HIERFL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


# --- the shipped example configs --------------------------------------------------------------


@pytest.mark.parametrize(("cls", "path"), EXAMPLES, ids=["edge", "fog", "cloud"])
def test_example_config_loads(cls: type[Any], path: Path) -> None:
    settings = cls.load(path)
    assert settings.federation == "city-air"
    assert settings.limits.decode_limits().max_frame_bytes == settings.limits.max_frame_bytes


def test_example_edge_config_values() -> None:
    from hierfl.compression import make_codec

    s = EdgeSettings.load(ROOT / "edge" / "edge.toml")
    assert s.task == "hierfl.sim.scenarios:digits_task"
    assert s.task_options == {"index": 0}
    assert (s.fog_id, s.edge_id) == ("district-3", "sensor-0017")
    assert s.mqtt.password is None  # secrets come from the environment
    assert make_codec(s.codec).name == s.codec


def test_example_fog_and_cloud_configs_agree() -> None:
    from hierfl.aggregation import make_aggregator

    edge = EdgeSettings.load(ROOT / "edge" / "edge.toml")
    fog = FogSettings.load(ROOT / "fog" / "fog.toml")
    cloud = CloudSettings.load(ROOT / "cloud" / "cloud.toml")
    assert fog.fog_id == edge.fog_id
    assert not fog.allowed_edges or edge.edge_id in fog.allowed_edges
    assert fog.fog_id in cloud.fogs
    assert fog.kafka.chunk_bytes < 1_048_588  # stock Kafka message.max.bytes
    make_aggregator(fog.aggregator, fog.aggregator_params)
    make_aggregator(cloud.aggregator, cloud.aggregator_params)


def test_example_cloud_initial_model_is_not_read() -> None:
    s = CloudSettings.load(ROOT / "cloud" / "cloud.toml")
    assert s.initial_model is not None
    assert s.initial_model.is_absolute()


def _all_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield prefix, f"[{name}]"
            yield from _all_fields(ann, name)
        else:
            yield prefix, name


@pytest.mark.parametrize(("cls", "path"), EXAMPLES, ids=["edge", "fog", "cloud"])
def test_example_config_covers_every_field(cls: type[BaseModel], path: Path) -> None:
    # Every field appears, set or commented out, in its section of the example
    text = path.read_text()
    sections = re.split(r"^(\[\w+\])\s*$", text, flags=re.M)
    by_section = {"": sections[0]} | dict(zip(sections[1::2], sections[2::2], strict=True))
    for section, name in _all_fields(cls):
        body = by_section.get(f"[{section}]" if section else "", "")
        if name.startswith("["):
            assert name in by_section, f"{path.name}: section {name} missing"
        else:
            assert re.search(rf"^#? ?{name} =", body, re.M), f"{path.name}: {section}.{name}"


# --- sources and precedence -------------------------------------------------------------------


def test_defaults() -> None:
    s = FogSettings.load(fog_id="g")
    assert s.federation == "default"
    assert s.mqtt == MqttSettings()
    assert s.kafka == KafkaSettings()
    assert s.limits == LimitsSettings()
    assert s.limits.decode_limits() == DecodeLimits()


def test_toml_file_is_read(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'fog_id = "from-toml"\nk2 = 3\n[mqtt]\nurl = "mqtt://toml.host:1884"\n')
    s = FogSettings.load(path)
    assert (s.fog_id, s.k2, s.mqtt.host, s.mqtt.port) == ("from-toml", 3, "toml.host", 1884)


def test_env_over_toml(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    # Prepare
    path = _toml(tmp_path, 'fog_id = "from-toml"\nk2 = 3\n')
    clean_env.setenv("HIERFL_FOG_ID", "from-env")
    # Execute
    s = FogSettings.load(path)
    # Assert
    assert s.fog_id == "from-env"
    assert s.k2 == 3


def test_nested_env_over_toml_merges_the_section(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    # Prepare: the file sets two keys of [mqtt], the environment one
    path = _toml(tmp_path, 'fog_id = "g"\n[mqtt]\nurl = "mqtt://toml:1883"\nkeepalive_s = 60\n')
    clean_env.setenv("HIERFL_MQTT__URL", "mqtt://env.host:2883")
    # Execute
    s = FogSettings.load(path)
    # Assert: env wins for url, the file still supplies keepalive_s
    assert s.mqtt.url == "mqtt://env.host:2883"
    assert s.mqtt.port == 2883
    assert s.mqtt.keepalive_s == 60


def test_nested_env_without_file(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HIERFL_KAFKA__CHUNK_BYTES", "500000")
    clean_env.setenv("HIERFL_LIMITS__MAX_PARAMS", "1234")
    clean_env.setenv("HIERFL_FOGS", '["a", "b"]')
    clean_env.setenv("HIERFL_KAFKA__CREATE_TOPICS", "false")
    s = CloudSettings.load()
    assert s.kafka.chunk_bytes == 500_000
    assert s.kafka.create_topics is False
    assert s.limits.max_params == 1234
    assert s.fogs == ["a", "b"]


def test_env_json_for_maps(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HIERFL_TASK_OPTIONS", '{"index": 3, "lr": 0.1}')
    s = EdgeSettings.load(fog_id="g", edge_id="e")
    assert s.task_options == {"index": 3, "lr": 0.1}


def test_kwargs_over_env_over_toml(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = _toml(tmp_path, 'fog_id = "from-toml"\nmin_updates = 2\n')
    clean_env.setenv("HIERFL_FOG_ID", "from-env")
    clean_env.setenv("HIERFL_MIN_UPDATES", "4")
    s = FogSettings.load(path, fog_id="from-kwargs")
    assert s.fog_id == "from-kwargs"
    assert s.min_updates == 4


def test_env_var_names_are_case_insensitive(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("hierfl_fog_id", "lower")
    assert FogSettings.load().fog_id == "lower"


def test_env_vars_of_other_tiers_are_ignored(clean_env: pytest.MonkeyPatch) -> None:
    # One environment may serve several tiers: the edge has no kafka or store_dir
    clean_env.setenv("HIERFL_KAFKA__BOOTSTRAP", "k:9092")
    clean_env.setenv("HIERFL_STORE_DIR", "/srv/hierfl-store")
    clean_env.setenv("HIERFL_TEST_MQTT_BROKER", "amqtt")
    s = EdgeSettings.load(fog_id="g", edge_id="e")
    assert not hasattr(s, "kafka")


def test_password_is_secret(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HIERFL_MQTT__PASSWORD", "hunter2")
    s = EdgeSettings.load(fog_id="g", edge_id="e")
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)


def test_settings_are_frozen() -> None:
    s = FogSettings.load(fog_id="g")
    with pytest.raises(Exception):  # noqa: B017, PT011 - pydantic's frozen-instance error
        s.fog_id = "other"  # type: ignore[misc]


def test_load_does_not_leak_the_file_to_the_next_load(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'fog_id = "from-toml"\n')
    assert FogSettings.load(path).fog_id == "from-toml"
    with pytest.raises(ConfigError, match="fog_id"):
        FogSettings.load()


# --- errors -----------------------------------------------------------------------------------


def test_bad_env_value_names_field_and_env_var(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HIERFL_MQTT__KEEPALIVE_S", "soon")
    with pytest.raises(ConfigError) as info:
        FogSettings.load(fog_id="g")
    message = str(info.value)
    assert "mqtt.keepalive_s" in message
    assert "HIERFL_MQTT__KEEPALIVE_S" in message
    assert "invalid fog settings" in message


def test_bad_toml_value_names_file_field_and_env_var(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'fog_id = "g"\nk2 = 0\n')
    with pytest.raises(ConfigError) as info:
        FogSettings.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "k2" in message
    assert "HIERFL_K2" in message


def test_every_invalid_field_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        EdgeSettings.load(fog_id="g", edge_id="e", local_epochs=0, threads=0, log_level="LOUD")
    message = str(info.value)
    for name in ("local_epochs", "threads", "log_level"):
        assert f"  {name}:" in message


def test_missing_required_field() -> None:
    with pytest.raises(ConfigError) as info:
        EdgeSettings.load(fog_id="g")
    assert "edge_id" in str(info.value)
    assert "HIERFL_EDGE_ID" in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["fog_id = ", "fog_id = 'unterminated", "[mqtt\nurl='x'", "fog_id = 'a'\nfog_id = 'b'\n",
     "\xff\xfe"],
)
def test_bad_toml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        FogSettings.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        FogSettings.load(tmp_path / "nope.toml")


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        FogSettings.load(tmp_path)


@pytest.mark.parametrize(
    "text",
    ['fog_id = "g"\nbogus = 1\n', 'fog_id = "g"\n[mqtt]\nurl = "mqtt://h"\nbogus = 1\n',
     'fog_id = "g"\nstore_dir = "/x"\n', 'fog_id = "g"\nkafka = 5\n'],
)
def test_unknown_or_misplaced_toml_keys(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        FogSettings.load(_toml(tmp_path, text))


def test_unknown_kwarg() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        FogSettings.load(fog_id="g", bogus=1)


@pytest.mark.parametrize(("quorum", "min_updates"), [(2, 1), (5, 4)])
def test_quorum_over_min_updates(quorum: int, min_updates: int) -> None:
    with pytest.raises(ConfigError, match="quorum"):
        FogSettings.load(fog_id="g", quorum=quorum, min_updates=min_updates)


def test_quorum_equal_to_min_updates_is_fine() -> None:
    assert FogSettings.load(fog_id="g", quorum=3, min_updates=3).quorum == 3


def test_quorum_from_env_against_toml(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = _toml(tmp_path, 'fog_id = "g"\nmin_updates = 3\nquorum = 2\n')
    clean_env.setenv("HIERFL_MIN_UPDATES", "1")
    with pytest.raises(ConfigError, match="quorum"):
        FogSettings.load(path)


def test_min_fogs_over_listed_fogs() -> None:
    with pytest.raises(ConfigError, match="min_fogs"):
        CloudSettings.load(fogs=["a", "b"], min_fogs=3)
    assert CloudSettings.load(min_fogs=3).min_fogs == 3  # no list: any fog


BAD_IDS = ["", "a" * 65, "a b", "a/b", "a+b", "#", "a.b", "é", "fog:1"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_ids(bad: str) -> None:
    with pytest.raises(ConfigError, match="federation"):
        FogSettings.load(fog_id="g", federation=bad)
    with pytest.raises(ConfigError, match="fog_id"):
        FogSettings.load(fog_id=bad)
    with pytest.raises(ConfigError, match="edge_id"):
        EdgeSettings.load(fog_id="g", edge_id=bad)
    with pytest.raises(ConfigError, match="fogs"):
        CloudSettings.load(fogs=["ok", bad])


def test_repeated_fog_ids() -> None:
    with pytest.raises(ConfigError, match="repeat"):
        CloudSettings.load(fogs=["a", "b", "a"])


def test_longest_id_is_valid() -> None:
    assert FogSettings.load(fog_id="F" * 64).fog_id == "F" * 64


@pytest.mark.parametrize(
    "url",
    ["http://broker:1883", "broker:1883", "mqtt://", "mqtt://:1883",
     "mqtt://broker:99999", "mqtt://broker:port", "tcp://broker", ""],
)
def test_bad_mqtt_url(url: str, clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        FogSettings.load(fog_id="g", mqtt={"url": url})
    assert "mqtt.url" in str(info.value)
    clean_env.setenv("HIERFL_MQTT__URL", url)
    with pytest.raises(ConfigError, match="HIERFL_MQTT__URL"):
        FogSettings.load(fog_id="g")


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [("mqtt://broker", "broker", 1883), ("mqtt://10.0.0.2:2883", "10.0.0.2", 2883),
     ("mqtt://[::1]:1884", "::1", 1884)],
)
def test_mqtt_url_parts(url: str, host: str, port: int) -> None:
    m = MqttSettings(url=url)
    assert (m.host, m.port) == (host, port)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mqtt": {"keepalive_s": 4}}, "mqtt.keepalive_s"),
        ({"mqtt": {"queue_size": 0}}, "mqtt.queue_size"),
        ({"mqtt": {"connect_timeout_s": 0}}, "mqtt.connect_timeout_s"),
        ({"kafka": {"chunk_bytes": 1000}}, "kafka.chunk_bytes"),
        ({"kafka": {"partitions": 0}}, "kafka.partitions"),
        ({"limits": {"max_frame_bytes": 10}}, "limits.max_frame_bytes"),
        ({"limits": {"max_params": 0}}, "limits.max_params"),
        ({"round_timeout_s": 0}, "round_timeout_s"),
        ({"k2": 10_001}, "k2"),
        ({"max_norm": 0}, "max_norm"),
        ({"metrics_port": 70000}, "metrics_port"),
        ({"log_level": "info"}, "log_level"),
        ({"resume_wait_s": -1}, "resume_wait_s"),
    ],
)
def test_out_of_range_settings(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        FogSettings.load(fog_id="g", **kwargs)
    message = str(info.value)
    assert field in message
    assert "HIERFL_" + field.replace(".", "__").upper() in message


def test_non_json_env_for_a_list_is_a_config_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HIERFL_FOGS", "a,b")
    with pytest.raises(ConfigError, match="HIERFL_FOGS"):
        CloudSettings.load()


def test_id_with_trailing_newline_is_rejected(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HIERFL_FOG_ID", "fog-1\n")
    with pytest.raises(ConfigError):
        FogSettings.load()


# --- per-link codecs ----------------------------------------------------------------------------


def test_per_link_codec_defaults() -> None:
    fog = FogSettings.load(fog_id="g")
    assert (fog.cloud_codec, fog.model_codec, fog.downlink_delta) == ("raw", "raw", True)
    assert CloudSettings.load().model_codec == "raw"
    assert EdgeSettings.load(fog_id="g", edge_id="e").codec == "raw"


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (EdgeSettings, {"fog_id": "g", "edge_id": "e", "codec": "zip"}, "codec"),
        (EdgeSettings, {"fog_id": "g", "edge_id": "e", "codec": "topk:fraction=0"}, "codec"),
        (FogSettings, {"fog_id": "g", "cloud_codec": "int8:chunk=0"}, "cloud_codec"),
        (FogSettings, {"fog_id": "g", "model_codec": "fp8"}, "model_codec"),
        # full models need a dense codec: sparse ones would zero most weights
        (FogSettings, {"fog_id": "g", "model_codec": "topk", "downlink_delta": False},
         "model_codec with downlink_delta = false"),
        (CloudSettings, {"model_codec": "topk+fp16"}, "model_codec"),
        (CloudSettings, {"model_codec": "randk"}, "model_codec"),
        # deltas are sent with error feedback: rand-k must not scale
        (FogSettings, {"fog_id": "g", "model_codec": "randk:fraction=0.1"}, "scaled=false"),
    ],
)
def test_bad_codec_specs_fail_at_load(cls: type[Any], kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        cls.load(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model_codec": "topk+fp16:fraction=0.05"},  # sparse deltas
        {"model_codec": "randk:fraction=0.1,scaled=false"},
        {"model_codec": "fp16", "downlink_delta": False},
        {"model_codec": "int8:chunk=1024", "cloud_codec": "topk+int8:fraction=0.01"},
    ],
)
def test_good_fog_codec_specs(kwargs: dict[str, Any]) -> None:
    fog = FogSettings.load(fog_id="g", **kwargs)
    assert fog.model_codec == kwargs["model_codec"]


def test_downlink_settings_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HIERFL_MODEL_CODEC", "fp16")
    clean_env.setenv("HIERFL_DOWNLINK_DELTA", "false")
    fog = FogSettings.load(fog_id="g")
    assert (fog.model_codec, fog.downlink_delta) == ("fp16", False)
