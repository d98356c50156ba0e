"""Shared pytest fixtures.

Brokers: one mosquitto (or amqtt) and one Tansu (Kafka wire protocol) per test session, each on a
free 127.0.0.1 port, never on the default ports 1883/9092, so the suite can run beside a
developer's own brokers and beside another test run. They start lazily: a run that uses no
broker starts none. Each test isolates itself with ``unique_id`` (federation ids, topic
prefixes, client ids, consumer group ids), not with a broker of its own. Starting a broker costs
15 ms (mosquitto, Tansu) to 0.3 s (amqtt), but one broker per test would multiply processes on
a 2-core CI machine.

``HIERFL_TEST_MQTT_BROKER=amqtt`` runs the suite against the pure-Python fallback broker
(``auto``, the default, picks mosquitto when it is installed).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from hierfl.sim.brokers import KafkaBroker, MqttBroker

# A loaded 2-core CI runner can take seconds to spawn a process and import amqtt; a healthy
# broker answers in milliseconds, so a generous deadline only delays the report of a real failure.
_BROKER_STARTUP_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[MqttBroker]:
    """An MQTT broker shared by the whole session; connect to ``.host``/``.port`` or ``.url``."""
    prefer = os.environ.get("HIERFL_TEST_MQTT_BROKER", "auto")
    with MqttBroker(prefer=prefer, startup_timeout_s=_BROKER_STARTUP_TIMEOUT_S) as broker:  # type: ignore[arg-type]
        yield broker


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """A Kafka-compatible broker shared by the whole session; use ``.bootstrap``.

    Memory-only and shared: create topics named with ``unique_id``. For consumers, prefer
    ``assign()`` (with a ``group_id`` when offsets must be committed) over ``subscribe()``:
    a group join against Tansu takes at least 1 s (see ``hierfl.sim.brokers``).
    """
    with KafkaBroker(startup_timeout_s=_BROKER_STARTUP_TIMEOUT_S) as broker:
        yield broker


@pytest.fixture
def unique_id() -> str:
    """A short id unique to this test, e.g. ``t3f9a0c2b7e41``.

    Lowercase letters and digits only, starting with a letter, so it is valid as a federation
    id, an MQTT topic level, a Kafka topic name, an MQTT client id and a consumer group id.
    """
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def bench(request: pytest.FixtureRequest) -> ModuleType:
    """The benchmark script a test module names in its ``BENCH`` attribute
    (``benchmarks/<BENCH>.py``), loaded once per module as ``bench_<BENCH>``."""
    name = request.module.BENCH
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"bench_{name}"] = mod
    spec.loader.exec_module(mod)
    return mod
