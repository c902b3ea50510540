"""Framing between node and worker: every frame kind round-trips; corrupt input is refused."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media import MediaPacket
from media.segments import InitFrame, PartFrame, SegmentFrame
from transcode.protocol import (
    FrameReader,
    FrameType,
    FramingError,
    decode_init,
    decode_packet,
    decode_part,
    decode_segment,
    encode_init,
    encode_packet,
    encode_part,
    encode_segment,
)


def _one(data: bytes) -> tuple[FrameType, bytes]:
    frames = FrameReader().feed(data)
    assert len(frames) == 1
    return frames[0]


def test_init_and_part_round_trip() -> None:
    init = InitFrame("480p", "avc1.64001f,mp4a.40.2", b"\x00\x00\x00\x18ftyp")
    assert _one(encode_init(init)) == (FrameType.INIT, encode_init(init)[5:])
    assert decode_init(_one(encode_init(init))[1]) == init
    part = PartFrame("480p", 7, 2, 14.666, 0.333, False, b"moof" * 10)
    ftype, payload = _one(encode_part(part))
    assert ftype is FrameType.PART
    assert decode_part(payload) == part


def test_tap_packet_keeps_its_frame_type() -> None:
    pkt = MediaPacket("audio", "opus", 20, 20, b"\xfc" * 40, keyframe=True)
    ftype, payload = _one(encode_packet(pkt, 1.5, FrameType.TAP))
    assert ftype is FrameType.TAP
    assert decode_packet(payload) == (pkt, 1.5)


@given(st.binary(max_size=64))
def test_corrupt_meta_is_a_framing_error(data: bytes) -> None:
    for parse in (decode_init, decode_part, decode_segment):
        try:
            parse(data)
        except (FramingError, KeyError, TypeError, ValueError):
            pass


def test_short_meta_is_refused() -> None:
    with pytest.raises(FramingError):
        decode_part(b"\x00\x00\x10\x00{}")


def test_segment_round_trip_keeps_its_frame_type() -> None:
    seg = SegmentFrame("360p", 3, 6.0, 2.0, "avc1.64001e,mp4a.40.2", b"\x47" * 188)
    ftype, payload = _one(encode_segment(seg, FrameType.RECORD_SEGMENT))
    assert ftype is FrameType.RECORD_SEGMENT
    assert decode_segment(payload) == seg
