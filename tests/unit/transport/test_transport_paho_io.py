"""paho-mqtt's I/O without its copies (hierfl/transport/_paho_io.py): the same packets parsed
to the same results (and the same errors) as paho's own parser, every byte of a large packet
sent in order, recv() asking for bounded pieces, and large payloads through a real broker
byte for byte."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import threading

import paho.mqtt.client as paho
import pytest
from paho.mqtt import _packet

from hierfl.config import MqttSettings
from hierfl.transport import _paho_io
from hierfl.transport.mqtt import MqttTransport

_original = _paho_io._original_decode_publish


def _publish_body(topic: bytes, payload: bytes, qos: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", 4242)
    return body + payload


@pytest.mark.parametrize("size", [0, 10, _paho_io.BIG_PACKET - 20, _paho_io.BIG_PACKET + 1,
                                  1_000_003])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_large_and_small_publishes_parse_as_paho_parses_them(size, qos):
    rng = random.Random(size * 3 + qos)
    for flags in (0, 0x01, 0x08, 0x09):
        topic = rng.choice([b"a", b"hierfl/fed/fog0/model", bytes(range(33, 120))])
        payload = rng.randbytes(size)
        header = 0x30 | (qos << 1) | flags
        for packet in (_publish_body(topic, payload, qos),
                       bytearray(_publish_body(topic, payload, qos))):
            fast = _paho_io._decode_publish(header, packet, paho.MQTTv311)
            assert fast == _original(header, packet, paho.MQTTv311)
            assert type(fast.payload) is bytes and fast.payload == payload


def _error_of(fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - comparing whatever each raises
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("body", [
    struct.pack("!H", 0) + b"x" * 70_000,  # empty topic: MQTT 3.1.1 forbids it
    struct.pack("!H", 65_000) + b"x" * 66_000,  # topic beyond what is there... almost
    struct.pack("!H", 65_535) + b"x" * 65_540,  # a topic and no room for the packet id
    struct.pack("!H", 65_535) + b"x" * 65_534,  # a topic longer than the packet
])
def test_malformed_large_publishes_fail_as_paho_fails(body):
    for header in (0x30, 0x32):
        assert _error_of(_paho_io._decode_publish, header, body, paho.MQTTv311) == \
            _error_of(_original, header, body, paho.MQTTv311)


def test_mqtt5_publishes_go_to_paho():
    body = _publish_body(b"t", b"\x00" + os.urandom(100_000), 0)  # property length 0
    fast, own = (f(0x30, body, paho.MQTTv5) for f in (_paho_io._decode_publish, _original))
    assert fast._replace(properties=None) == own._replace(properties=None)
    assert str(fast.properties) == str(own.properties)


def test_the_wrapper_is_installed_once_process_wide():
    assert _paho_io.install_decode_publish() is True
    assert _packet.decode_publish is _paho_io._decode_publish
    assert _paho_io.install_decode_publish() is True  # idempotent: still paho's underneath
    assert _paho_io._original_decode_publish is _original
    assert _original is not _paho_io._decode_publish


def _client() -> paho.Client:
    return paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="t")


def test_speed_up_swaps_the_class_of_plain_paho_clients_only():
    c = _client()
    assert _paho_io.speed_up(c) is True and type(c) is _paho_io._FastIOClient
    assert _paho_io.speed_up(c) is True  # already done

    class Mine(paho.Client):
        pass

    m = Mine(paho.CallbackAPIVersion.VERSION2, client_id="m")
    assert _paho_io.speed_up(m) is False and type(m) is Mine


def test_a_large_packet_is_sent_whole_in_order_without_copies():
    """A 3 MB packet through a socket that takes it in pieces: every byte arrives, in order,
    and the queued packet is a view (slicing it for each send copies nothing)."""
    c = _client()
    _paho_io.speed_up(c)
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    c._sock = a
    packet = bytearray(os.urandom(3_000_000))
    small = bytearray(b"\x30\x03\x00\x01x")
    got = bytearray()
    done = threading.Event()

    def drain() -> None:
        while len(got) < len(packet) + len(small):
            chunk = b.recv(65536)
            if not chunk:
                break
            got.extend(chunk)
        done.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    c._packet_queue(0x30, packet, 1, 1)
    c._packet_queue(0x30, small, 2, 1)
    assert all(isinstance(p["packet"], memoryview) == (len(p["packet"]) > _paho_io.BIG_PACKET)
               for p in c._out_packet) or not c._out_packet
    for _ in range(10_000):
        if not c._out_packet:
            break
        c._packet_write()
        done.wait(0.001)
    assert done.wait(10)
    assert bytes(got) == bytes(packet) + bytes(small)
    a.close()
    b.close()


def test_recv_asks_for_bounded_pieces():
    c = _client()
    _paho_io.speed_up(c)
    a, b = socket.socketpair()
    c._sock = a
    data = os.urandom(_paho_io.RECV_CHUNK * 3)
    writer = threading.Thread(target=b.sendall, args=(data,), daemon=True)
    writer.start()
    got = bytearray()
    while len(got) < len(data):
        piece = c._sock_recv(10_000_000)
        assert 0 < len(piece) <= _paho_io.RECV_CHUNK
        got += piece
    writer.join(10)
    assert bytes(got) == data
    a.close()
    b.close()


async def test_large_payloads_cross_a_real_broker_byte_for_byte(mqtt_broker, unique_id):
    settings = MqttSettings(url=mqtt_broker.url)
    payloads = [os.urandom(n) for n in (70_000, 1_000_000, 4_500_000, 100)]
    topic = f"{unique_id}/big"
    async with MqttTransport(settings, client_id=f"{unique_id}-s") as sub, \
            MqttTransport(settings, client_id=f"{unique_id}-p") as pub:
        assert type(sub._client._client) is _paho_io._FastIOClient
        await sub.subscribe(topic)
        await asyncio.gather(*(pub.publish(topic, p) for p in payloads))
        got = []
        async with asyncio.timeout(30):
            async for m in sub.messages():
                got.append(m.payload)
                if len(got) == len(payloads):
                    break
        await pub.publish(topic, payloads[2], retain=True)
    assert got == payloads  # one connection: the broker keeps their order
    async with MqttTransport(settings, client_id=f"{unique_id}-r") as late:
        await late.subscribe(topic)
        async with asyncio.timeout(30):
            async for m in late.messages():
                assert m.retain and m.payload == payloads[2]
                break
        await late.publish(topic, b"", retain=True)
