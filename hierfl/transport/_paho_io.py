"""paho-mqtt's socket I/O without its copies of large packets.

paho-mqtt (2.x, under aiomqtt) moves a large PUBLISH in ways that cost more than the network:

* **sending**: every ``send()`` of a partly written packet is given ``packet[pos:]``, a fresh
  copy of the rest of the packet (bytes slicing copies). A 4.5 MB model that the socket takes
  in pieces is copied again for every piece: quadratic in the packet's size.
* **receiving**: every ``recv()`` asks for all the bytes still missing, so the interpreter
  allocates a buffer of the whole remaining size each time (fresh pages for the kernel to
  zero), and :func:`paho.mqtt._packet.decode_publish` then copies the payload three times
  (``struct.unpack`` of the rest of the packet, after the topic, after the packet id).

Measured on a 2-core machine (``benchmarks/mqtt_large.py``: mosquitto on loopback, 20
PUBLISHes of 4.5 MB at QoS 1 through :class:`~hierfl.transport.mqtt.MqttTransport`, process
CPU time per message; ``benchmarks/results/mqtt-large-2026-12-07.jsonl``): the publisher
9.2-10.1 ms with paho as it is, 2.8-3.9 ms with this; the subscriber 7.2-8.9 ms, 3.7-7.0 ms.

What this module changes, and only for the clients hierfl makes (:func:`speed_up`, applied
by :class:`hierfl.transport.mqtt.MqttTransport` to its aiomqtt client's paho client):

* a queued packet larger than 64 KiB is kept as a :class:`memoryview` (slicing a view copies
  nothing; ``socket.send`` takes one), except over websockets, whose wrapper frames the data;
* ``recv()`` asks for at most 256 KiB at a time (paho appends each piece to its bytearray);

and, process-wide (:func:`install_decode_publish`), paho's ``decode_publish`` is wrapped: an
MQTT 3.1.1 PUBLISH of more than 64 KiB is parsed through a memoryview and its payload copied
once, into the ``bytes`` paho would have produced. Everything else (MQTT 5, small packets,
a packet the fast parse does not accept) goes to paho's own function, so the results and the
errors are paho's (tests/unit/transport/test_transport_paho_io.py compares the two).

Nothing here applies to a paho version other than the 2.x this was written against: it
checks the methods it relies on exist and does nothing otherwise.
"""

from __future__ import annotations

import struct
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import _packet

__all__ = ["BIG_PACKET", "RECV_CHUNK", "install_decode_publish", "speed_up"]

#: packets above this many bytes take the zero-copy paths
BIG_PACKET = 64 * 1024
#: most bytes one ``recv()`` asks for
RECV_CHUNK = 256 * 1024

_H = struct.Struct("!H")
_SUPPORTED = all(hasattr(paho.Client, m) for m in ("_packet_queue", "_sock_recv",
                                                     "_packet_write", "_packet_read"))


class _FastIOClient(paho.Client):
    """paho's client with the two overrides; instances are made by class swap
    (:func:`speed_up`), never constructed."""

    def _packet_queue(self, command: int, packet: Any, mid: int, qos: int,
                      info: Any = None) -> Any:
        if len(packet) > BIG_PACKET and getattr(self, "_transport", "tcp") != "websockets":
            packet = memoryview(packet)  # _packet_write slices packet[pos:] for every send
        return super()._packet_queue(command, packet, mid, qos, info)

    def _sock_recv(self, bufsize: int) -> bytes:
        return super()._sock_recv(min(bufsize, RECV_CHUNK))


def speed_up(client: paho.Client) -> bool:
    """Give ``client`` (a plain :class:`paho.mqtt.client.Client`) the zero-copy I/O; False
    (nothing changed) for a subclass or an unsupported paho."""
    install_decode_publish()
    if not _SUPPORTED or type(client) is not paho.Client:
        return type(client) is _FastIOClient
    client.__class__ = _FastIOClient
    return True


_original_decode_publish = getattr(_packet, "decode_publish", None)


def _decode_publish(header: int, packet: Any, protocol: Any) -> Any:
    """paho's ``decode_publish``, for a large MQTT 3.1.1 PUBLISH without the copies."""
    assert _original_decode_publish is not None
    if len(packet) <= BIG_PACKET or protocol == paho.MQTTv5:
        return _original_decode_publish(header, packet, protocol)
    view = memoryview(packet)
    (slen,) = _H.unpack_from(view, 0)
    pos = 2 + slen
    qos = (header & 0x06) >> 1
    if slen == 0 or pos + (2 if qos else 0) > len(view):
        return _original_decode_publish(header, packet, protocol)  # paho's own error
    mid = 0
    if qos > 0:
        (mid,) = _H.unpack_from(view, pos)
        pos += 2
    return _packet.PublishPacket(
        dup=((header & 0x08) >> 3) != 0,
        qos=qos,
        retain=(header & 0x01) != 0,
        topic=bytes(view[2:2 + slen]),
        mid=mid,
        properties=None,
        payload=bytes(view[pos:]),
    )


def install_decode_publish() -> bool:
    """Wrap paho's ``decode_publish`` (process-wide, idempotent); False when this paho has
    no such function (nothing changed)."""
    if _original_decode_publish is None or not hasattr(_packet, "PublishPacket"):
        return False
    _packet.decode_publish = _decode_publish
    return True
