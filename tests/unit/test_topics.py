"""Topic names: built and parsed in one place; anything else on the wire is refused."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfl import topics
from hierfl.errors import ConfigError, UnknownSenderError
from hierfl.topics import ParsedMqttTopic

ids = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=64)
PROPS = settings(max_examples=100, deadline=None, database=None)


def test_names() -> None:
    assert topics.PREFIX == "hierfl"
    assert topics.model("fed", "g1") == "hierfl/fed/g1/model"
    assert topics.update("fed", "g1", "e1") == "hierfl/fed/g1/update/e1"
    assert topics.update_filter("fed", "g1") == "hierfl/fed/g1/update/+"
    assert topics.status("fed", "g1", "e1") == "hierfl/fed/g1/status/e1"
    assert topics.status_filter("fed", "g1") == "hierfl/fed/g1/status/+"
    assert topics.stats("fed", "g1") == "hierfl/fed/g1/stats"
    assert topics.model_delta("fed", "g1") == "hierfl/fed/g1/delta"
    assert topics.aggregates("fed") == "hierfl.fed.aggregates"
    assert topics.models("fed") == "hierfl.fed.models"


@PROPS
@given(fed=ids, fog=ids, client=ids)
def test_build_parse_round_trip(fed: str, fog: str, client: str) -> None:
    assert topics.parse_mqtt(topics.model(fed, fog)) == ParsedMqttTopic(fed, fog, "model", None)
    assert topics.parse_mqtt(topics.stats(fed, fog)) == ParsedMqttTopic(fed, fog, "stats", None)
    assert topics.parse_mqtt(topics.model_delta(fed, fog)) == ParsedMqttTopic(
        fed, fog, "delta", None
    )
    assert topics.parse_mqtt(topics.update(fed, fog, client)) == ParsedMqttTopic(
        fed, fog, "update", client
    )
    assert topics.parse_mqtt(topics.status(fed, fog, client)) == ParsedMqttTopic(
        fed, fog, "status", client
    )


def test_kind_words_are_valid_ids() -> None:
    # A fog may be called "update" without confusing the parser
    assert topics.parse_mqtt("hierfl/model/update/model") == ParsedMqttTopic(
        "model", "update", "model", None
    )
    assert topics.parse_mqtt("hierfl/f/status/update/status").client == "status"


@PROPS
@given(fed=ids, fog=ids)
def test_kafka_names_are_valid_kafka_topics(fed: str, fog: str) -> None:
    # Kafka topic names: [a-zA-Z0-9._-], at most 249 characters
    for name in (topics.aggregates(fed), topics.models(fed)):
        assert len(name) <= 249
        assert set(name) <= set(string.ascii_letters + string.digits + "._-")
    assert topics.aggregates(fed) != topics.models(fed)


@PROPS
@given(fed=ids, fog=ids)
def test_filters_match_only_their_own_fog(fed: str, fog: str) -> None:
    # A '+' filter for one fog, read as a pattern, matches exactly the edges of that fog
    f = topics.update_filter(fed, fog)
    assert f.count("+") == 1
    assert "#" not in f
    assert f.rsplit("/", 1)[0] == topics.update(fed, fog, "x").rsplit("/", 1)[0]


MALICIOUS = [
    "",
    "/",
    "hierfl",
    "hierfl/",
    "hierfl/f/g",
    "hierfl/f/g/",
    "hierfl/f/g/model/",
    "hierfl/f/g/model/extra",
    "hierfl/f/g/update",
    "hierfl/f/g/update/",
    "hierfl/f/g/update/e/extra",
    "hierfl/f/g/update/e/",
    "hierfl/f/g/status",
    "hierfl/f/g/stats/e",
    "hierfl/f/g/unknown/e",
    "hierfl/f/g/Update/e",
    "hierfl/f/g/models",
    "/hierfl/f/g/model",
    "Hierfl/f/g/model",
    "other/f/g/model",
    "hierfl//g/model",
    "hierfl/f//model",
    "hierfl/f/g/update/+",
    "hierfl/f/g/update/#",
    "hierfl/+/g/model",
    "hierfl/f/#",
    "#",
    "+/+/+/model",
    "hierfl/f/g/update/e 1",
    "hierfl/f/g/update/é",
    "hierfl/f/g/update/ｅ",  # fullwidth
    "hierfl/f/g/update/e\u200b",  # zero-width space
    "hierfl/f/g/update/e\x00",
    "hierfl/f/g/update/e\t",
    "hierfl/f/g/update/..",
    "hierfl/f/g/update/e.1",
    "hierfl/f/g/update/" + "e" * 65,
    "hierfl/" + "f" * 65 + "/g/model",
    "hierfl.f.aggregates",
    "hierfl\\f\\g\\model",
]


@pytest.mark.parametrize("topic", MALICIOUS)
def test_malicious_topics(topic: str) -> None:
    with pytest.raises(UnknownSenderError):
        topics.parse_mqtt(topic)


@PROPS
@given(topic=st.text(max_size=80))
def test_any_text_parses_to_itself_or_is_refused(topic: str) -> None:
    try:
        p = topics.parse_mqtt(topic)
    except UnknownSenderError:
        return
    if p.client is None:
        rebuilt = topics.model(p.federation, p.fog) if p.kind == "model" else topics.stats(
            p.federation, p.fog
        )
    elif p.kind == "update":
        rebuilt = topics.update(p.federation, p.fog, p.client)
    else:
        rebuilt = topics.status(p.federation, p.fog, p.client)
    assert rebuilt == topic


@PROPS
@given(levels=st.lists(st.one_of(ids, st.sampled_from(["model", "update", "status", "stats",
                                                         "+", "#", ""])), max_size=7))
def test_random_level_combinations(levels: list[str]) -> None:
    topic = "/".join(["hierfl", *levels])
    try:
        p = topics.parse_mqtt(topic)
    except UnknownSenderError:
        return
    assert p.kind in ("model", "update", "status", "stats")
    assert "+" not in topic
    assert "#" not in topic
    assert len(levels) in (3, 4)


@pytest.mark.parametrize("value", ["a", "A-z_09", "x" * 64, "-", "_"])
def test_check_id_accepts(value: str) -> None:
    assert topics.check_id("edge", value) is value


@pytest.mark.parametrize(
    "value",
    ["", "x" * 65, "a b", "a/b", "a+b", "a#b", "a.b", "é", "ａ", "a\x00", " a", "a\t", 5, None,
     b"abc"],
)
def test_check_id_rejects(value: object) -> None:
    with pytest.raises(ConfigError, match="edge id"):
        topics.check_id("edge", value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call",
    [
        lambda: topics.check_id("edge", "edge\n"),
        lambda: topics.parse_mqtt("hierfl/f/g/update/edge\n"),
        lambda: topics.parse_mqtt("hierfl/f\n/g/model"),
    ],
    ids=["check_id", "parse-client", "parse-federation"],
)
def test_trailing_newline_is_refused(call: object) -> None:
    with pytest.raises((ConfigError, UnknownSenderError)):
        call()  # type: ignore[operator]
