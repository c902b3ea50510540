"""Protocol tests: bytes in, exact events out; replies decoded with our own reader."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.rtmp import amf0, flv
from ingest.rtmp.chunk import ChunkReader, ChunkWriter, Message
from ingest.rtmp.exceptions import RtmpProtocolError
from ingest.rtmp.handshake import HandshakePacket
from ingest.rtmp.session import (
    BytesAcknowledged,
    ConnectRequested,
    Event,
    HandshakeCompleted,
    MediaReceived,
    MetadataReceived,
    PlayRequested,
    PongReceived,
    PublishRequested,
    PublishStopped,
    ServerSession,
    State,
)
from media.model import MediaPacket

C1 = bytes(HandshakePacket(0, 0, bytes(1528)))
HANDSHAKE = b"\x03" + C1 + C1
TC_URL = "rtmp://127.0.0.1/live?token=x"
AVCC = bytes.fromhex("0164001fffe1000467640028 01000468ee3c80")
ASC = bytes.fromhex("1210")


class Client:
    """Writes what FFmpeg's rtmpproto.c sends (csid 3 commands, 4 audio/data, 6 video)."""

    def __init__(self) -> None:
        self.writer = ChunkWriter(compress=True)

    def command(self, *values: Any, stream_id: int = 0, csid: int = 3) -> bytes:
        return self.writer.write(Message(csid, 0, 20, stream_id, amf0.encode(*values)))

    def chunk_size(self, size: int) -> bytes:
        data = self.writer.write(Message(2, 0, 1, 0, size.to_bytes(4, "big")))
        self.writer.chunk_size = size
        return data

    def media(self, type_id: int, ts: int, body: bytes) -> bytes:
        return self.writer.write(Message(6 if type_id == 9 else 4, ts, type_id, 1, body))


def decode_replies(data: bytes, chunk_size: int = 128) -> list[tuple[int, int, list[Any] | bytes]]:
    reader = ChunkReader()
    reader.chunk_size = chunk_size
    out: list[tuple[int, int, list[Any] | bytes]] = []
    for m in reader.feed(data):
        out.append(
            (m.type_id, m.stream_id, amf0.decode(m.payload) if m.type_id == 20 else m.payload)
        )
    return out


def drive(session: ServerSession, data: bytes) -> list[Event]:
    """Act like the adapter: decide on requests, then resume held-back input."""
    events: list[Event] = []
    new = session.receive_data(data)
    while new:
        events += new
        if isinstance(new[-1], ConnectRequested):
            session.accept_connect()
        elif isinstance(new[-1], PublishRequested):
            session.accept_publish(new[-1].stream_id)
        else:
            break
        new = session.receive_data(b"")
    return events


def ffmpeg_conversation() -> list[bytes]:
    c = Client()
    connect = {
        "app": "live?token=x",
        "type": "nonprivate",
        "flashVer": "FMLE/3.0 (compatible; Lavf61.7.100)",
        "tcUrl": TC_URL,
    }
    return [
        HANDSHAKE[:1537],
        HANDSHAKE[1537:] + c.chunk_size(4096) + c.command("connect", 1.0, connect),
        c.command("releaseStream", 2.0, None, "cam")
        + c.command("FCPublish", 3.0, None, "cam")
        + c.command("createStream", 4.0, None),
        c.command("publish", 5.0, None, "cam?k=1", "live", stream_id=1, csid=8),
        c.writer.write(
            Message(
                4,
                0,
                18,
                1,
                amf0.encode("@setDataFrame", "onMetaData", amf0.EcmaArray(width=320.0)),
            )
        )
        + c.media(9, 0, flv.video_tag(MediaPacket("video", "h264", 0, 0, AVCC, config=True)))
        + c.media(8, 0, flv.audio_tag(MediaPacket("audio", "aac", 0, 0, ASC, config=True)))
        + c.media(9, 0, flv.video_tag(MediaPacket("video", "h264", 80, 0, b"\x00" * 5000, True)))
        + c.media(8, 23, flv.audio_tag(MediaPacket("audio", "aac", 23, 23, b"\x21" * 300)))
        + c.media(9, 40, flv.video_tag(MediaPacket("video", "h264", 40, 40, b"\x01" * 10)))
        + c.media(9, 0x1000000, b""),
        c.command("FCUnpublish", 6.0, None, "cam") + c.command("deleteStream", 7.0, None, 1.0),
    ]


EXPECTED_EVENTS: list[Event] = [
    HandshakeCompleted(),
    ConnectRequested(
        "live",
        TC_URL,
        {"token": "x"},
        "token=x",
        {
            "app": "live?token=x",
            "type": "nonprivate",
            "flashVer": "FMLE/3.0 (compatible; Lavf61.7.100)",
            "tcUrl": TC_URL,
        },
    ),
    PublishRequested(1, "cam", "k=1", "live"),
    MetadataReceived(1, {"width": 320.0}),
    MediaReceived(1, MediaPacket("video", "h264", 0, 0, AVCC, config=True)),
    MediaReceived(1, MediaPacket("audio", "aac", 0, 0, ASC, config=True)),
    MediaReceived(1, MediaPacket("video", "h264", 80, 0, b"\x00" * 5000, True)),
    MediaReceived(1, MediaPacket("audio", "aac", 23, 23, b"\x21" * 300, True)),
    MediaReceived(1, MediaPacket("video", "h264", 40, 40, b"\x01" * 10)),
    PublishStopped(1),
]


def test_ffmpeg_conversation() -> None:
    session = ServerSession(chunk_size=4096, handshake_random=bytes(1528))
    events: list[Event] = []
    output = b""
    for piece in ffmpeg_conversation():
        events += drive(session, piece)
        output += session.data_to_send()
    assert events == EXPECTED_EVENTS
    assert output[:1] == b"\x03" and output[1537:3073] == C1
    replies = decode_replies(output[3073:])
    assert [r[0] for r in replies[:3]] == [5, 6, 1]  # window ack, peer bandwidth, chunk size
    commands = [(r[1], r[2][:2]) for r in replies if r[0] == 20 and isinstance(r[2], list)]
    assert commands == [
        (0, ["_result", 1.0]),
        (0, ["_result", 2.0]),
        (0, ["_result", 3.0]),
        (0, ["onFCPublish", 0.0]),
        (0, ["_result", 4.0]),
        (1, ["onStatus", 0.0]),
        (0, ["_result", 6.0]),
    ]
    connect_result = next(r[2] for r in replies if r[0] == 20)
    assert isinstance(connect_result, list)
    assert connect_result[2] == {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0}
    assert connect_result[3]["code"] == "NetConnection.Connect.Success"
    assert connect_result[3]["objectEncoding"] == 0.0
    create = [r[2] for r in replies if r[0] == 20 and r[2][1] == 4.0]
    assert create == [["_result", 4.0, None, 1.0]]
    status = [r[2] for r in replies if r[0] == 20 and r[1] == 1]
    assert status[0][3]["code"] == "NetStream.Publish.Start"  # type: ignore[index]
    assert (4, 0, bytes.fromhex("000000000001")) in replies  # StreamBegin 1


def test_split_anywhere_gives_same_events() -> None:
    data = b"".join(ffmpeg_conversation())
    for step in (1, 97, 1536):
        session = ServerSession(handshake_random=bytes(1528))
        events: list[Event] = []
        for i in range(0, len(data), step):
            events += drive(session, data[i : i + step])
        assert events == EXPECTED_EVENTS


def connected(**kwargs: Any) -> tuple[ServerSession, Client]:
    session = ServerSession(**kwargs)
    client = Client()
    drive(session, HANDSHAKE + client.command("connect", 1.0, {"app": "live", "tcUrl": TC_URL}))
    session.data_to_send()
    return session, client


def test_reject_connect() -> None:
    session = ServerSession()
    events = session.receive_data(HANDSHAKE + Client().command("connect", 1.0, {"app": "x"}))
    assert events[1] == ConnectRequested("x", "", {}, "", {"app": "x"})
    session.reject_connect("unknown tenant 'x'")
    (reply,) = [r for r in decode_replies(session.data_to_send()[3073:]) if r[0] == 20]
    assert reply[2] == [
        "_error",
        1.0,
        None,
        {
            "level": "error",
            "code": "NetConnection.Connect.Rejected",
            "description": "unknown tenant 'x'",
        },
    ]
    assert session.closed and session.receive_data(b"more") == []


@pytest.mark.parametrize(
    ("code", "description"),
    [("NetStream.Publish.BadName", "taken"), ("NetStream.Publish.Unauthorized", "bad token")],
)
def test_reject_publish_and_media_is_dropped(code: str, description: str) -> None:
    session, client = connected()
    events = session.receive_data(client.command("publish", 5.0, None, "cam", "live", stream_id=1))
    assert events == [PublishRequested(1, "cam", "", "live")]
    session.reject_publish(1, code, description)
    (reply,) = decode_replies(session.data_to_send(), 4096)
    assert reply[2] == [
        "onStatus",
        0.0,
        None,
        {"level": "error", "code": code, "description": description},
    ]
    body = flv.audio_tag(MediaPacket("audio", "aac", 0, 0, ASC, config=True))
    assert session.receive_data(client.media(8, 0, body)) == []


def test_play_is_refused() -> None:
    session, client = connected()
    assert session.receive_data(client.command("play", 4.0, None, "cam", stream_id=1)) == [
        PlayRequested(1, "cam")
    ]
    (reply,) = decode_replies(session.data_to_send(), 4096)
    assert reply[2][3]["code"] == "NetStream.Play.Failed"  # type: ignore[index]


def test_control_messages() -> None:
    session, client = connected(window_ack_size=5000)
    w = client.writer
    events = session.receive_data(
        w.write(Message(2, 0, 4, 0, bytes.fromhex("0006 0000002a")))  # PingRequest 42
        + w.write(Message(2, 0, 4, 0, bytes.fromhex("0007 00000007")))  # PingResponse 7
        + w.write(Message(2, 0, 3, 0, bytes.fromhex("00001000")))  # Acknowledgement
        + w.write(Message(2, 0, 5, 0, bytes.fromhex("00000800")))  # Window Ack Size 2048
    )
    assert events == [PongReceived(7), BytesAcknowledged(4096)]
    replies = decode_replies(session.data_to_send(), 4096)
    assert replies[0] == (4, 0, bytes.fromhex("0007 0000002a"))
    # Crossing the peer's 2048-byte window triggers an Acknowledgement of all bytes.
    session.receive_data(client.command("_checkbw", 9.0, None, "x" * 2100))
    replies = decode_replies(session.data_to_send(), 4096)
    assert replies[-1][0] == 3
    assert int.from_bytes(replies[-1][2], "big") == session._received
    session.ping(123)
    assert decode_replies(session.data_to_send(), 4096) == [(4, 0, bytes.fromhex("0006 0000007b"))]


def test_unknown_command_gets_error_not_crash() -> None:
    session, client = connected()
    assert session.receive_data(client.command("fooBar", 3.0, None)) == []
    (reply,) = decode_replies(session.data_to_send(), 4096)
    assert reply[2][0] == "_error"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x06" + C1, "unsupported RTMP version 6"),
        (HANDSHAKE + Client().command("createStream", 2.0, None), "before connect"),
        (HANDSHAKE + Client().command(5.0), "does not start with a command name"),
        (HANDSHAKE + ChunkWriter().write(Message(3, 0, 20, 0, b"\x02\x00")), "string length"),
    ],
)
def test_protocol_errors(data: bytes, message: str) -> None:
    session = ServerSession()
    with pytest.raises(RtmpProtocolError, match=message):
        session.receive_data(data)
    assert session.state is State.CLOSED


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([0, 1, 2, 3, 4]))
def test_property_garbage(data: bytes, prefix_parts: int) -> None:
    session = ServerSession(handshake_random=bytes(1528))
    try:
        for piece in ffmpeg_conversation()[:prefix_parts]:
            drive(session, piece)
        drive(session, data)
    except RtmpProtocolError:
        pass


# -- limits against hostile peers -----------------------------------------------------


def test_huge_amf_command_is_refused_before_it_is_decoded() -> None:
    """A 16 MiB connect of nulls took seconds of loop time to decode; it is now
    refused from its chunk header, before a byte of its body is buffered."""
    session = ServerSession()
    header = ChunkWriter().write(Message(3, 0, 20, 0, b"\x05" * 200))[:12]
    big = bytes([header[0]]) + b"\x00\x00\x00" + (16 * 1024 * 1024 - 1).to_bytes(3, "big")
    with pytest.raises(RtmpProtocolError, match="over the limit of 65536"):
        session.receive_data(HANDSHAKE + big + header[7:12] + b"\x05" * 128)
    assert session.closed


def test_chunk_size_below_128_is_refused() -> None:
    session, client = connected()
    with pytest.raises(RtmpProtocolError, match="Set Chunk Size of 1 is outside 128"):
        session.receive_data(client.chunk_size(1))


def test_media_larger_than_a_command_waits_for_publish() -> None:
    """Before Publish.Start every message is capped at the command size; after it,
    a keyframe may be as large as max_message_size."""
    keyframe = b"\x17\x01\x00\x00\x00" + bytes(200_000)
    session, client = connected()
    with pytest.raises(RtmpProtocolError, match="200005-byte message of type 9"):
        session.receive_data(client.media(9, 0, keyframe))

    session, client = connected()
    drive(session, client.command("publish", 5.0, None, "cam", "live", stream_id=1))
    assert session.publishing == {1: "cam"}
    session.receive_data(client.media(9, 40, keyframe))  # no limit error


def test_data_message_stays_capped_while_publishing() -> None:
    session, client = connected()
    drive(session, client.command("publish", 5.0, None, "cam", "live", stream_id=1))
    meta = amf0.encode("@setDataFrame", "onMetaData", amf0.EcmaArray(x="y" * 70_000))
    with pytest.raises(RtmpProtocolError, match="of type 18, over the limit of 65536"):
        session.receive_data(client.writer.write(Message(4, 0, 18, 1, meta)))


def test_replies_never_echo_more_than_a_short_prefix() -> None:
    session, client = connected()
    name = "n" * 60_000
    session.receive_data(
        client.command("FCPublish", 3.0, None, name + "?token=secret") + client.command(name, 4.0)
    )
    out = session.data_to_send()
    assert len(out) < 2_000
    assert b"secret" not in out
