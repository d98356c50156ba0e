"""The in-memory brokers' own behaviour: faults, restarts and bounds (the shared semantics are
checked against real brokers in tests/contract)."""

from __future__ import annotations

import asyncio
import random

import pytest

from hierfl.config import KafkaSettings, MqttSettings
from hierfl.errors import (
    BrokerRefusedError,
    BrokerUnavailableError,
    DisconnectedError,
    PublishTimeoutError,
)
from hierfl.transport.base import Inbound
from hierfl.transport.memory import (
    Envelope,
    Fault,
    MemoryKafkaBroker,
    MemoryKafkaConsumer,
    MemoryKafkaProducer,
    MemoryMqttBroker,
    MemoryMqttTransport,
    random_faults,
    topic_matches,
    validate_filter,
)


async def _next(it: object, timeout: float = 1.0) -> Inbound:
    async with asyncio.timeout(timeout):
        return await anext(it)  # type: ignore[call-overload,no-any-return]


def _drain(conn_link: MemoryMqttTransport) -> list[Inbound]:
    assert conn_link._conn is not None
    q = conn_link._conn.queue
    out = []
    while not q.empty():
        m = q.get_nowait()
        assert m is not None
        out.append(m)
    return out


@pytest.mark.parametrize(("flt", "topic", "match"), [
    ("a/b", "a/b", True),
    ("a/+", "a/b", True),
    ("a/+", "a/b/c", False),
    ("a/#", "a", True),
    ("a/#", "a/b/c", True),
    ("#", "a/b", True),
    ("#", "$SYS/x", False),
    ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("a/+/c", "a//c", True),
    ("a/b", "a/bc", False),
])
def test_topic_matches(flt: str, topic: str, match: bool) -> None:
    assert topic_matches(flt, topic) is match


@pytest.mark.parametrize("flt", ["", "a/#/b", "a/b#", "a+/b"])
def test_invalid_filters_refused(flt: str) -> None:
    with pytest.raises(ValueError, match="filter"):
        validate_filter(flt)


async def test_restart_without_persistence_loses_everything() -> None:
    broker = MemoryMqttBroker()
    async with MemoryMqttTransport(broker, client_id="fog", clean_session=False) as fog:
        await fog.subscribe("u/+")
        await fog.publish("model", b"v1", retain=True)
    broker.restart(persist=False)
    assert broker.retained == {}
    async with MemoryMqttTransport(broker, client_id="edge") as edge:
        await edge.publish("u/e", b"x")
    assert broker.session_backlog("fog") == 0


async def test_restart_with_persistence_keeps_retained_and_sessions() -> None:
    broker = MemoryMqttBroker()
    async with MemoryMqttTransport(broker, client_id="fog", clean_session=False) as fog:
        await fog.subscribe("u/+")
        await fog.publish("model", b"v1", retain=True)
    broker.restart(persist=True)
    async with MemoryMqttTransport(broker, client_id="edge") as edge:
        await edge.publish("u/e", b"x")
    assert broker.retained == {"model": b"v1"}
    async with MemoryMqttTransport(broker, client_id="fog", clean_session=False) as fog:
        assert await _next(fog.messages()) == Inbound("u/e", b"x")


async def test_connected_clients_fail_after_restart_and_while_stopped() -> None:
    broker = MemoryMqttBroker()
    link = MemoryMqttTransport(broker, client_id="c")
    async with link:
        await link.subscribe("t")
        it = link.messages()
        waiting = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0)
        broker.stop(persist=True)
        with pytest.raises(DisconnectedError):
            await waiting
        with pytest.raises(DisconnectedError):
            await link.publish("t", b"x")
        with pytest.raises(DisconnectedError):
            await anext(link.messages())
    with pytest.raises(BrokerUnavailableError):
        await link.__aenter__()
    broker.start()
    async with link:  # reusable once the broker is back
        await link.publish("t", b"x")


async def test_takeover_disconnects_the_older_connection() -> None:
    broker = MemoryMqttBroker()
    async with MemoryMqttTransport(broker, client_id="c") as old:
        async with MemoryMqttTransport(broker, client_id="c") as new:
            with pytest.raises(DisconnectedError):
                await old.publish("t", b"x")
            await new.publish("t", b"x")


async def test_reentering_a_live_transport_is_refused() -> None:
    link = MemoryMqttTransport(MemoryMqttBroker(), client_id="c")
    async with link:
        with pytest.raises(RuntimeError, match="reentrant"):
            await link.__aenter__()


async def test_offline_queue_bounded_and_qos0_not_queued() -> None:
    broker = MemoryMqttBroker(max_queued_messages=3)
    async with MemoryMqttTransport(broker, client_id="fog", clean_session=False) as fog:
        await fog.subscribe("u")
    async with MemoryMqttTransport(broker, client_id="edge") as edge:
        await edge.publish("u", b"qos0", qos=0)
        for i in range(5):
            await edge.publish("u", bytes([i]))
    assert broker.session_backlog("fog") == 3
    assert broker.stats["dropped_queue_full"] == 2
    async with MemoryMqttTransport(broker, client_id="fog", clean_session=False) as fog:
        assert [m.payload for m in _drain(fog)] == [b"\0", b"\1", b"\2"]


async def test_inbound_queue_bounded_by_settings() -> None:
    broker = MemoryMqttBroker()
    async with MemoryMqttTransport(broker, client_id="s", settings=MqttSettings(queue_size=2)) as s:
        await s.subscribe("t")
        for i in range(4):
            await s.publish("t", bytes([i]))
        assert s.dropped == 2
        assert [m.payload for m in _drain(s)] == [b"\0", b"\1"]


async def test_faults_drop_duplicate_and_delay() -> None:
    fates = {b"drop": Fault.DROP, b"dup": Fault.DUPLICATE, b"late": Fault.DELAY}
    seen: list[Envelope] = []

    def hook(env: Envelope) -> Fault:
        seen.append(env)
        return fates.get(env.payload, Fault.DELIVER)

    broker = MemoryMqttBroker(faults=hook)
    async with MemoryMqttTransport(broker, client_id="s") as s, \
            MemoryMqttTransport(broker, client_id="p") as p:
        await s.subscribe("t")
        for payload in (b"late", b"drop", b"dup", b"ok"):
            await p.publish("t", payload)
        assert [m.payload for m in _drain(s)] == [b"dup", b"dup", b"ok"]
        assert broker.release_delayed() == 1
        assert [m.payload for m in _drain(s)] == [b"late"]
    assert seen[0] == Envelope("mqtt", "t", b"late", "p", "s")
    assert broker.stats["dropped_fault"] == 1 and broker.stats["duplicated"] == 1


def test_random_faults_replay_from_seed() -> None:
    env = Envelope("mqtt", "t", b"", "p", "s")
    a = random_faults(random.Random(7), drop=0.2, duplicate=0.2, delay=0.2)
    b = random_faults(random.Random(7), drop=0.2, duplicate=0.2, delay=0.2)
    run_a, run_b = [a(env) for _ in range(200)], [b(env) for _ in range(200)]
    assert run_a == run_b and set(run_a) == set(Fault)
    with pytest.raises(ValueError, match="probabilities"):
        random_faults(random.Random(0), drop=0.6, delay=0.6)


async def test_last_will_only_when_dropped() -> None:
    broker = MemoryMqttBroker()
    async with MemoryMqttTransport(broker, client_id="a", will=("st/a", b"off")):
        pass
    assert broker.retained == {}
    async with MemoryMqttTransport(broker, client_id="a", will=("st/a", b"off")) as a:
        assert broker.drop_client("a")
        with pytest.raises(DisconnectedError):
            await a.publish("x", b"")
    assert broker.retained == {"st/a": b"off"}
    assert not broker.drop_client("a")


# -- Kafka -----------------------------------------------------------------------------------

SETTINGS = KafkaSettings(chunk_bytes=4096)


async def test_kafka_restart_without_persistence_loses_logs_and_offsets() -> None:
    broker = MemoryKafkaBroker()
    async with MemoryKafkaProducer(broker, SETTINGS, client_id="p") as p:
        await p.send_frame("t", key=b"k", frame=b"f1")
    async with MemoryKafkaConsumer(broker, "t", client_id="c", group_id="g") as c:
        await c.commit(await _next(c.messages()))  # type: ignore[arg-type]
    broker.restart(persist=True)
    async with MemoryKafkaConsumer(broker, "t", client_id="c", group_id="g") as c:
        assert await c.committed() == {0: 1}
    broker.restart(persist=False)
    assert broker.topics == []
    async with MemoryKafkaConsumer(broker, "t", client_id="c", group_id="g") as c:
        assert await c.committed() == {0: None}


async def test_kafka_consumer_waiting_fails_on_stop() -> None:
    broker = MemoryKafkaBroker()
    async with MemoryKafkaConsumer(broker, "t", client_id="c") as c:
        waiting = asyncio.ensure_future(anext(c.messages()))
        await asyncio.sleep(0)
        broker.stop(persist=True)
        with pytest.raises(DisconnectedError):
            await waiting
    with pytest.raises(BrokerUnavailableError):
        await MemoryKafkaProducer(broker, client_id="p").__aenter__()


async def test_kafka_faults() -> None:
    fates = iter([Fault.DROP, Fault.DELAY, Fault.DUPLICATE, Fault.DELIVER])
    broker = MemoryKafkaBroker(faults=lambda _: next(fates))
    async with MemoryKafkaProducer(broker, SETTINGS, client_id="p") as p:
        with pytest.raises(PublishTimeoutError, match="dropped"):
            await p.send_frame("t", key=b"k", frame=b"a")
        assert broker.log("t") == []
        with pytest.raises(PublishTimeoutError, match="ack lost"):
            await p.send_frame("t", key=b"k", frame=b"b")
        await p.send_frame("t", key=b"k", frame=b"c")  # written twice
        await p.send_frame("t", key=b"k", frame=b"d")
    async with MemoryKafkaConsumer(broker, "t", client_id="c", start="earliest") as c:
        it = c.messages()
        got = [(await _next(it)).payload for _ in range(4)]  # type: ignore[attr-defined]
    assert got == [b"b", b"c", b"c", b"d"]  # a one-chunk frame written twice comes twice


async def test_kafka_commit_stops_before_a_partial_frame() -> None:
    fates = iter([Fault.DELIVER, Fault.DROP] + [Fault.DELIVER] * 10)
    broker = MemoryKafkaBroker(faults=lambda _: next(fates))
    async with MemoryKafkaProducer(broker, SETTINGS, client_id="p") as p:
        with pytest.raises(PublishTimeoutError):
            await p.send_frame("t", key=b"k", frame=bytes(10_000))  # only chunk 0 written
        await p.send_frame("t", key=b"k", frame=b"whole")
    async with MemoryKafkaConsumer(broker, "t", client_id="c", group_id="g") as c:
        inbound = await _next(c.messages())
        assert inbound.payload == b"whole"  # type: ignore[attr-defined]
        await c.commit(inbound)  # type: ignore[arg-type]
        assert await c.committed() == {0: 0}  # not past the partial frame at offset 0


async def test_kafka_unknown_topic_refused_without_auto_create() -> None:
    broker = MemoryKafkaBroker(auto_create_topics=False)
    with pytest.raises(BrokerRefusedError):
        await MemoryKafkaConsumer(broker, "t", client_id="c").__aenter__()
    with pytest.raises(ValueError, match="start"):
        MemoryKafkaConsumer(broker, "t", client_id="c", start="newest")
    broker.create_topic("t")
    async with MemoryKafkaConsumer(broker, "t", client_id="c") as c:
        assert await c.committed() == {0: None}


async def test_kafka_keys_pick_partitions_and_stay_in_order() -> None:
    broker = MemoryKafkaBroker(partitions=3)
    async with MemoryKafkaProducer(broker, SETTINGS, client_id="p") as p:
        for i in range(6):
            await p.send_frame("t", key=b"fog-a", frame=bytes([i]))
    used = [n for n in range(3) if broker.log("t", n)]
    assert len(used) == 1 and [r.value[-1] for r in broker.log("t", used[0])] == list(range(6))
