"""The RTMP server's limits against one hostile client, on a real socket.

Each test runs the asyncio server in process with a sink that accepts every
publish, and attacks it from raw sockets on loopback: too many connections,
a peer that never reads its replies, a peer whose input costs too much to parse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from typing import Any

import paramsets
import pytest
from prometheus_client import CollectorRegistry

from ingest.config import RtmpConfig
from ingest.metrics import IngestMetrics
from ingest.rtmp import amf0, flv
from ingest.rtmp.chunk import ChunkReader, ChunkWriter, Message
from ingest.rtmp.handshake import HandshakePacket
from ingest.rtmp.server import RtmpServer
from ingest.sink import PublishRequest
from ingest.source import SourceLimits
from media import MediaPacket

C1 = bytes(HandshakePacket(0, 0, bytes(1528)))
HANDSHAKE = b"\x03" + C1 + C1


class _Publication:
    async def media(self, packet: MediaPacket) -> None:
        pass

    def metadata(self, values: dict[str, Any]) -> None:
        pass

    async def close(self) -> None:
        pass


class _Sink:
    async def open_publish(self, request: PublishRequest) -> _Publication:
        return _Publication()


@dataclasses.dataclass
class Served:
    server: RtmpServer
    registry: CollectorRegistry

    def rejected(self, reason: str) -> float:
        value = self.registry.get_sample_value("ingest_rejected_total", {"reason": reason})
        return value or 0.0


async def _serve(sink: Any = None, **overrides: Any) -> Served:
    registry = CollectorRegistry()
    config = RtmpConfig(listen="127.0.0.1:0", **overrides)
    server = RtmpServer(config, sink or _Sink(), IngestMetrics(registry))
    await server.start()
    return Served(server, registry)


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    s = await _serve(**getattr(request, "param", {}))
    yield s
    await s.server.stop()


async def _wait(predicate: Any) -> None:
    """Poll a condition the server's own tasks make true, for at most 10 s.

    The conditions are metric values and the server's connection set, which signal
    nothing, so this polls rather than waits on an event.
    """
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def _connected_client() -> tuple[bytes, ChunkWriter]:
    writer = ChunkWriter()
    connect = writer.write(
        Message(3, 0, 20, 0, amf0.encode("connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live"}))
    )
    return HANDSHAKE + connect, writer


@pytest.mark.parametrize("served", [{"max_connections_per_ip": 3}], indirect=True)
async def test_connections_over_the_per_ip_limit_are_refused(served: Served) -> None:
    port = served.server.port
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    await _wait(lambda: len(served.server._conns) == 3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Refused before the handshake: the server closes without sending S0.
    assert await asyncio.wait_for(reader.read(1), 5) == b""
    assert served.rejected("connections") == 1
    writer.close()
    for _, w in held:
        w.close()
    await _wait(lambda: not served.server._conns)
    # Freed slots are usable again.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HANDSHAKE)
    assert len(await asyncio.wait_for(reader.readexactly(3073), 5)) == 3073
    writer.close()


@pytest.mark.parametrize("served", [{"max_connections": 2}], indirect=True)
async def test_connections_over_the_global_limit_are_refused(served: Served) -> None:
    held = [await asyncio.open_connection("127.0.0.1", served.server.port) for _ in range(2)]
    await _wait(lambda: len(served.server._conns) == 2)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    assert await asyncio.wait_for(reader.read(1), 5) == b""
    assert served.rejected("connections") == 1
    for _, w in [*held, (reader, writer)]:
        w.close()


@pytest.mark.parametrize("served", [{"write_timeout": 0.5, "parse_budget": 1.0}], indirect=True)
async def test_a_peer_that_never_reads_is_dropped(served: Served) -> None:
    """Pings make the server reply; a peer that reads none of it fills its socket
    buffers, and the server gives up after write_timeout instead of waiting forever."""
    sock = socket.create_connection(("127.0.0.1", served.server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hello, writer = _connected_client()
    ping = writer.write(Message(2, 0, 4, 0, bytes.fromhex("0006 0000002a")))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, hello)
    # Each ping asks for a 6-byte reply plus headers; send until the server stops reading.
    with pytest.raises((ConnectionError, TimeoutError)):
        async with asyncio.timeout(20):
            while True:
                await loop.sock_sendall(sock, ping * 512)
    await _wait(lambda: served.rejected("write_timeout") == 1)
    await _wait(lambda: not served.server._conns)
    sock.close()


@pytest.mark.parametrize("served", [{"parse_budget": 0.01, "parse_burst": 0.05}], indirect=True)
async def test_a_peer_that_costs_too_much_parsing_is_dropped(served: Served) -> None:
    """Commands full of AMF nulls are the cheapest bytes to send and the dearest to
    decode; a peer that keeps sending them runs out of parse credit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    hello, chunks = _connected_client()
    writer.write(hello)
    costly = chunks.write(Message(3, 0, 20, 0, amf0.encode("_checkbw", 0.0) + b"\x05" * 60_000))
    with pytest.raises((ConnectionError, TimeoutError)):
        async with asyncio.timeout(20):
            while True:
                writer.write(costly)
                await writer.drain()
    await _wait(lambda: served.rejected("parse_budget") == 1)
    writer.close()


@pytest.mark.parametrize("name", ["<img src=x onerror=alert(1)>", "..", ".", "a\r\nb"])
async def test_publish_to_a_name_outside_the_rule_gets_bad_name(served: Served, name: str) -> None:

    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    hello, chunks = _connected_client()
    writer.write(hello)
    writer.write(chunks.write(Message(3, 0, 20, 0, amf0.encode("createStream", 2.0, None))))
    writer.write(chunks.write(Message(8, 0, 20, 1, amf0.encode("publish", 3.0, None, name))))
    await writer.drain()
    await reader.readexactly(3073)  # S0 S1 S2
    replies = ChunkReader()
    codes: list[str] = []
    async with asyncio.timeout(10):
        while data := await reader.read(65536):
            for m in replies.feed(data):
                if m.type_id == 20:
                    values = amf0.decode(m.payload)
                    if values[0] == "onStatus":
                        codes.append(values[3]["code"])
    assert codes == ["NetStream.Publish.BadName"]
    assert served.rejected("name") == 1
    writer.close()


class _RecordingPublication(_Publication):
    def __init__(self) -> None:
        self.packets: list[MediaPacket] = []
        self.closed = False

    async def media(self, packet: MediaPacket) -> None:
        self.packets.append(packet)

    async def close(self) -> None:
        self.closed = True


class _LimitingSink:
    """Accepts every publish, holding its source to 1920x1080 at 60 fps, as the node does."""

    def __init__(self) -> None:
        self.publications: dict[str, _RecordingPublication] = {}

    async def open_publish(self, request: PublishRequest) -> _RecordingPublication:
        request.source_limits = SourceLimits(1920, 1080, 60.0)
        pub = self.publications[request.key.stream] = _RecordingPublication()
        return pub


@pytest.fixture
async def limiting() -> AsyncIterator[tuple[Served, _LimitingSink]]:
    """A server whose sink holds every source to 1920x1080 at 60 fps."""
    sink = _LimitingSink()
    served = await _serve(sink)
    yield served, sink
    await served.server.stop()


async def _publish(port: int, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hello, chunks = _connected_client()
    writer.write(hello)
    writer.write(chunks.write(Message(3, 0, 20, 0, amf0.encode("createStream", 2.0, None))))
    writer.write(chunks.write(Message(8, 0, 20, 1, amf0.encode("publish", 3.0, None, name))))
    await writer.drain()
    await reader.readexactly(3073)
    return reader, writer, chunks


def _video(chunks: ChunkWriter, packet: MediaPacket) -> bytes:
    return bytes(chunks.write(Message(6, packet.dts, 9, 1, flv.video_tag(packet))))


async def _statuses(reader: asyncio.StreamReader) -> list[dict[str, Any]]:
    """Every onStatus until the server closes the connection."""
    replies = ChunkReader()
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while data := await reader.read(65536):
            for m in replies.feed(data):
                if m.type_id == 20:
                    values = amf0.decode(m.payload)
                    if values[0] == "onStatus":
                        out.append(values[3])
    return out


async def test_a_source_over_the_limit_is_refused_and_others_go_on(
    limiting: tuple[Served, _LimitingSink],
) -> None:
    served, sink = limiting
    server = served.server
    _, ok_writer, ok_chunks = await _publish(server.port, "class")
    _, avcc = paramsets.h264(1280, 720)
    ok_writer.write(_video(ok_chunks, MediaPacket("video", "h264", 0, 0, avcc, config=True)))
    await _wait(lambda: "class" in sink.publications and sink.publications["class"].packets)

    reader, writer, chunks = await _publish(server.port, "uhd")
    _, big = paramsets.h264(3840, 2160)
    writer.write(_video(chunks, MediaPacket("video", "h264", 0, 0, big, config=True)))
    statuses = await _statuses(reader)  # ends when the server closes the connection
    assert statuses[0]["code"] == "NetStream.Publish.Start"
    assert statuses[-1]["level"] == "error"
    assert statuses[-1]["code"] == "NetStream.Publish.Rejected"
    assert "3840x2160 is larger than 1920x1080" in statuses[-1]["description"]
    assert served.rejected("source_too_large") == 1
    await _wait(lambda: sink.publications["uhd"].closed)
    assert sink.publications["uhd"].packets == []  # the 4K header never reached the node

    # The other publisher goes on.
    frame = MediaPacket("video", "h264", 40, 40, b"\x00\x00\x00\x02\x65\x88", keyframe=True)
    ok_writer.write(_video(ok_chunks, frame))
    await _wait(lambda: len(sink.publications["class"].packets) == 2)
    assert not sink.publications["class"].closed
    ok_writer.close()
    writer.close()


async def test_a_refused_source_whose_publish_ended_in_the_same_read_only_closes(
    limiting: tuple[Served, _LimitingSink], caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the fuzzing publisher: a header over the limits and a deleteStream in one
    write. The core has ended the publish by the time the header is checked; the refusal
    closes the connection and nothing fails (it used to raise in fail_publish)."""
    served, sink = limiting
    reader, writer, chunks = await _publish(served.server.port, "uhd")
    _, big = paramsets.h264(3840, 2160)
    delete = chunks.write(Message(3, 0, 20, 0, amf0.encode("deleteStream", 4.0, None, 1.0)))
    writer.write(_video(chunks, MediaPacket("video", "h264", 0, 0, big, config=True)) + delete)
    await _statuses(reader)  # ends when the server closes the connection
    assert served.rejected("source_too_large") == 1
    await _wait(lambda: sink.publications["uhd"].closed)
    assert sink.publications["uhd"].packets == []
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    writer.close()
