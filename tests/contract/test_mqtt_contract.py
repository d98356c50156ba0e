"""The MQTT contract: what the tiers rely on, checked on mosquitto, amqtt and the memory broker."""

from __future__ import annotations

import asyncio
import contextlib
import os

from hierfl.transport.base import Inbound
from tests.contract.harness import MQTT_PACKET_BYTES, MqttHarness, messages_of, take_own


async def test_publish_subscribe_round_trip(mqtt: MqttHarness, unique_id: str) -> None:
    topic = f"{unique_id}/a"
    async with mqtt.link(f"{unique_id}-s") as sub, mqtt.link(f"{unique_id}-p") as pub:
        await sub.subscribe(topic)
        await pub.publish(topic, b"hello")
        async with messages_of(sub) as it:
            [m] = await take_own(it, 1, unique_id)
    assert m == Inbound(topic, b"hello", retain=False)
    assert (m.partition, m.offset, m.error) == (None, None, None)
    await m.ack()  # the one inbound type's ack: nothing left to do on MQTT (QoS 1 is acked)


async def test_qos1_in_order_per_publisher(mqtt: MqttHarness, unique_id: str) -> None:
    topic = f"{unique_id}/seq"
    sent = [f"m{i}".encode() for i in range(50)]
    async with mqtt.link(f"{unique_id}-s") as sub, mqtt.link(f"{unique_id}-p") as pub:
        await sub.subscribe(topic, qos=1)
        for payload in sent:
            await pub.publish(topic, payload, qos=1)
        async with messages_of(sub) as it:
            got = await take_own(it, len(sent), unique_id)
    assert [m.payload for m in got] == sent


async def _first_after(mqtt: MqttHarness, client_id: str, topic_filter: str,
                       marker_topic: str) -> list[Inbound]:
    """What a new subscription to ``topic_filter`` receives before a marker published after it.

    On amqtt a retained message can come twice (at connect, see ``take_own``, and on subscribe):
    repeats are dropped there only.
    """
    prefix = marker_topic.split("/")[0]
    async with mqtt.link(client_id) as sub:
        await sub.subscribe(topic_filter)
        await sub.subscribe(marker_topic)
        await sub.publish(marker_topic, b"marker")
        got: list[Inbound] = []
        async with messages_of(sub) as it:
            while not got or got[-1].topic != marker_topic:
                got.extend(await take_own(it, 1, prefix))
    got = got[:-1]
    if mqtt.kind == "amqtt":
        got = [m for i, m in enumerate(got) if m not in got[:i]]
    return got


async def test_retained_delivered_replaced_and_cleared(mqtt: MqttHarness, unique_id: str) -> None:
    topic, marker = f"{unique_id}/model", f"{unique_id}/marker"
    async with mqtt.link(f"{unique_id}-p") as pub:
        await pub.publish(topic, b"v1", retain=True)
        await pub.publish(topic, b"v2", retain=True)
        got = await _first_after(mqtt, f"{unique_id}-s1", topic, marker)
        assert got == [Inbound(topic, b"v2", retain=True)]

        await pub.publish(topic, b"", retain=True)
        assert await _first_after(mqtt, f"{unique_id}-s2", topic, marker) == []


async def test_wildcard_filters(mqtt: MqttHarness, unique_id: str) -> None:
    u, marker = unique_id, f"{unique_id}/marker"
    async with mqtt.link(f"{u}-s") as sub, mqtt.link(f"{u}-p") as pub:
        await sub.subscribe(f"{u}/+/x")
        await sub.subscribe(f"{u}/a/#")
        await sub.subscribe(marker)
        for topic in (f"{u}/b/x", f"{u}/b/y", f"{u}/a/b/c", f"{u}/a", f"{u}/c/x/d", f"{u}/ab"):
            await pub.publish(topic, b"1")
        await pub.publish(marker, b"end")
        got: list[str] = []
        async with messages_of(sub) as it:
            while marker not in got:
                got.extend(m.topic for m in await take_own(it, 1, unique_id))
    assert sorted(got[:-1]) == sorted([f"{u}/b/x", f"{u}/a/b/c", f"{u}/a"])


async def test_persistent_session_gets_what_was_published_while_away(
    mqtt: MqttHarness, unique_id: str
) -> None:
    topic, client_id = f"{unique_id}/update/e1", f"{unique_id}-fog"
    async with mqtt.link(client_id, clean_session=False) as fog:
        await fog.subscribe(f"{unique_id}/update/+")
    sent = [f"u{i}".encode() for i in range(5)]
    async with mqtt.link(f"{unique_id}-edge") as edge:
        for payload in sent:
            await edge.publish(topic, payload)
    async with mqtt.link(client_id, clean_session=False) as fog:
        async with messages_of(fog) as it:
            got = await take_own(it, len(sent), unique_id)
    assert [(m.topic, m.payload) for m in got] == [(topic, p) for p in sent]
    async with mqtt.link(client_id, clean_session=True):
        pass  # end the session, so a shared broker does not keep it


async def test_clean_session_gets_nothing_from_while_away(
    mqtt: MqttHarness, unique_id: str
) -> None:
    topic, client_id, marker = f"{unique_id}/t", f"{unique_id}-c", f"{unique_id}/marker"
    async with mqtt.link(client_id, clean_session=True) as sub:
        await sub.subscribe(topic)
    async with mqtt.link(f"{unique_id}-p") as pub:
        await pub.publish(topic, b"while away")
    async with mqtt.link(client_id, clean_session=True) as sub:
        await sub.subscribe(marker)  # not `topic`: a clean session kept no subscription
        await sub.publish(topic, b"after")
        await sub.publish(marker, b"marker")
        async with messages_of(sub) as it:
            [m] = await take_own(it, 1, unique_id)
    assert m.topic == marker


async def test_chunked_payload_reassembled(mqtt: MqttHarness, unique_id: str) -> None:
    topic, retained = f"{unique_id}/big", f"{unique_id}/big-retained"
    payload = os.urandom(5 * MQTT_PACKET_BYTES + 123)
    small = MQTT_PACKET_BYTES
    async with mqtt.link(f"{unique_id}-s", max_packet_bytes=small) as sub, \
            mqtt.link(f"{unique_id}-p", max_packet_bytes=small) as pub:
        await sub.subscribe(topic)
        await pub.publish(topic, payload)
        await pub.publish(retained, payload[::-1], retain=True)
        await sub.subscribe(retained)
        async with messages_of(sub) as it:
            got = await take_own(it, 2, unique_id)
    assert got == [Inbound(topic, payload), Inbound(retained, payload[::-1], retain=True)]


async def test_last_will_on_unclean_disconnect_only(mqtt: MqttHarness, unique_id: str) -> None:
    status = f"{unique_id}/status/+"
    will_a, will_b = f"{unique_id}/status/a", f"{unique_id}/status/b"
    async with mqtt.link(f"{unique_id}-s") as sub:
        await sub.subscribe(status)
        async with mqtt.link(f"{unique_id}-b", will=(will_b, b"offline")):
            pass  # a clean exit (DISCONNECT): no will
        async with mqtt.link(f"{unique_id}-a", will=(will_a, b"offline")) as a:
            await a.publish(will_a, b"online")
            await mqtt.kill(a)
        got: list[Inbound] = []
        async with messages_of(sub) as it:
            while {b"online", b"offline"} - {m.payload for m in got if m.topic == will_a}:
                got.extend(await take_own(it, 1, unique_id))
    late = await _first_after(mqtt, f"{unique_id}-late", will_a, f"{unique_id}/marker")
    if mqtt.kind == "amqtt":
        # amqtt 0.12 races a client's end: when paho closes its socket right after DISCONNECT,
        # amqtt may read EOF first and publish the will anyway (Broker._handle_disconnect sees
        # no DisconnectPacket); and it broadcasts the will in a task of its own, which may
        # overtake the client's last publish. Its leak of retained messages at connect (see
        # take_own) can bring will_b to the late subscriber. Order and will_b are not checked.
        got = sorted((m for m in got if m.topic != will_b), key=lambda m: m.payload != b"online")
        late = [m for m in late if m.topic == will_a]
    assert [(m.topic, m.payload) for m in got] == [(will_a, b"online"), (will_a, b"offline")]
    # the will is retained: a later subscriber learns the client is gone
    assert [(m.topic, m.payload, m.retain) for m in late] == [(will_a, b"offline", True)]


async def test_concurrent_publishers_each_in_order(mqtt: MqttHarness, unique_id: str) -> None:
    topic = f"{unique_id}/c"
    async with mqtt.link(f"{unique_id}-s") as sub, contextlib.AsyncExitStack() as stack:
        await sub.subscribe(topic)
        links = [await stack.enter_async_context(mqtt.link(f"{unique_id}-p{i}"))
                 for i in range(3)]

        async def publish_all(i: int) -> None:
            for j in range(5):
                await links[i].publish(topic, f"{i}:{j}".encode())

        await asyncio.gather(*(publish_all(i) for i in range(3)))
        # received while the publishers are still connected: with the publishers leaving
        # right after their last PUBACK, amqtt 0.12 once (1 run in 6) never delivered one of
        # the 15 messages; mosquitto and the memory broker always did
        async with messages_of(sub) as it:
            got = await take_own(it, 15, unique_id)
    by_pub: dict[str, list[int]] = {}
    for m in got:
        i, j = m.payload.decode().split(":")
        by_pub.setdefault(i, []).append(int(j))
    assert by_pub == {str(i): list(range(5)) for i in range(3)}
