from __future__ import annotations

import pytest

from ingest.rtmp import flv
from ingest.rtmp.exceptions import RtmpProtocolError, UnsupportedCodec
from media.model import MediaPacket


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


VIDEO = [
    # legacy AVC sequence header, NALUs with negative and positive cts, end of sequence
    (
        h("17 00 000000 01640028"),
        MediaPacket("video", "h264", 100, 100, h("01640028"), config=True),
    ),
    (h("17 01 000050 00000001 65"), MediaPacket("video", "h264", 180, 100, h("00000001 65"), True)),
    (h("27 01 ffffd8 00000001 41"), MediaPacket("video", "h264", 60, 100, h("00000001 41"))),
    (h("17 02 000000"), None),
    (h("52 00"), None),  # legacy command frame
    (h("22 aabb"), MediaPacket("video", "flv1", 100, 100, h("aabb"))),
    # Enhanced RTMP: SequenceStart, CodedFrames (cts), CodedFramesX, SequenceEnd, Metadata
    (h("90 68766331 0102"), MediaPacket("video", "hevc", 100, 100, h("0102"), config=True)),
    (h("91 68766331 000014 aa"), MediaPacket("video", "hevc", 120, 100, h("aa"), True)),
    (h("a3 68766331 bb"), MediaPacket("video", "hevc", 100, 100, h("bb"))),
    (h("91 61763031 cc"), MediaPacket("video", "av1", 100, 100, h("cc"), True)),  # no cts
    (h("90 76703039 01"), MediaPacket("video", "vp9", 100, 100, h("01"), config=True)),
    (h("92 61766331"), None),
    (h("94 61766331 0200"), None),
    (h("95 61763031 80"), None),
    (h("d0 00"), None),  # enhanced command frame
    # ModEx (v2): one byte of nanosecond offset, then CodedFramesX
    (h("97 00 2a 03 61763031 dd"), MediaPacket("video", "av1", 100, 100, h("dd"), True)),
]


@pytest.mark.parametrize(("body", "expected"), VIDEO)
def test_parse_video(body: bytes, expected: MediaPacket | None) -> None:
    assert flv.parse_video(100, body) == expected


AUDIO = [
    (h("af 00 1210"), MediaPacket("audio", "aac", 100, 100, h("1210"), config=True)),
    (h("af 01 2100"), MediaPacket("audio", "aac", 100, 100, h("2100"), keyframe=True)),
    (h("2f ff"), MediaPacket("audio", "mp3", 100, 100, h("ff"), keyframe=True)),
    (h("b6 ff"), MediaPacket("audio", "speex", 100, 100, h("ff"), keyframe=True)),
    (h("90 4f707573 01"), MediaPacket("audio", "opus", 100, 100, h("01"), config=True)),
    (h("91 6d703461 02"), MediaPacket("audio", "aac", 100, 100, h("02"), keyframe=True)),
    (h("92 4f707573"), None),
]


@pytest.mark.parametrize(("body", "expected"), AUDIO)
def test_parse_audio(body: bytes, expected: MediaPacket | None) -> None:
    assert flv.parse_audio(100, body) == expected


def test_empty_bodies() -> None:
    assert flv.parse_video(0, b"") is None
    assert flv.parse_audio(0, b"") is None


@pytest.mark.parametrize(
    ("parse", "body", "error", "message"),
    [
        (flv.parse_video, h("17 01"), RtmpProtocolError, "needs at least 5"),
        (flv.parse_video, h("17 05 000000"), RtmpProtocolError, "AVCPacketType 5"),
        (flv.parse_video, h("1c"), UnsupportedCodec, "CodecID 12"),
        (flv.parse_video, h("91 61626364"), UnsupportedCodec, "FourCC b'abcd'"),
        (flv.parse_video, h("96 00"), UnsupportedCodec, "multitrack"),
        (flv.parse_video, h("91 6876"), RtmpProtocolError, "FourCC missing"),
        (flv.parse_video, h("91 68766331 00"), RtmpProtocolError, "SI24 cts"),
        (flv.parse_video, h("98 68766331"), RtmpProtocolError, "PacketType 8"),
        (flv.parse_video, h("97 ff"), RtmpProtocolError, "ModEx"),
        (flv.parse_audio, h("af"), RtmpProtocolError, "AACPacketType"),
        (flv.parse_audio, h("af 02"), RtmpProtocolError, "AACPacketType 2"),
        (flv.parse_audio, h("c0"), UnsupportedCodec, "SoundFormat 12"),
        (flv.parse_audio, h("91 78787878"), UnsupportedCodec, "FourCC b'xxxx'"),
        (flv.parse_audio, h("95"), UnsupportedCodec, "multitrack"),
    ],
)
def test_errors(parse: object, body: bytes, error: type[Exception], message: str) -> None:
    assert callable(parse)
    with pytest.raises(error, match=message):
        parse(100, body)


ROUND_TRIP = [
    (MediaPacket("video", "h264", 40, 40, h("0164"), config=True), False),
    (MediaPacket("video", "h264", 80, 40, h("00000002 6588"), True), False),
    (MediaPacket("video", "h264", 40, 80, h("00000002 4188")), True),
    (MediaPacket("video", "hevc", 40, 40, h("00000002 2601"), True), True),
    (MediaPacket("video", "av1", 40, 40, h("12000a"), True), True),
    (MediaPacket("audio", "aac", 40, 40, h("1190"), config=True), False),
    (MediaPacket("audio", "aac", 40, 40, h("21"), keyframe=True), False),
    (MediaPacket("audio", "opus", 40, 40, h("fc"), keyframe=True), True),
]


@pytest.mark.parametrize(("packet", "enhanced"), ROUND_TRIP)
def test_builders_round_trip(packet: MediaPacket, enhanced: bool) -> None:
    if packet.kind == "video":
        assert flv.parse_video(packet.dts, flv.video_tag(packet, enhanced=enhanced)) == packet
    else:
        assert flv.parse_audio(packet.dts, flv.audio_tag(packet, enhanced=enhanced)) == packet
