"""WHIP's pure mappers: Annex B -> AVCC + avcC, VP8 key frames, OpusHead, RTP -> ms timeline."""

from __future__ import annotations

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.whip.bitstream import (
    AnnexBToAvcc,
    avc_decoder_config,
    opus_head,
    split_annexb,
    vp8_keyframe,
)
from ingest.whip.mapper import Timeline, TrackMapper
from media.h264 import AvcConfig, split_nals, to_annexb


def nal_units(min_size: int = 1) -> st.SearchStrategy[bytes]:
    """NAL units as an encoder emits them: no start code inside (emulation prevention)."""
    return (
        st.binary(min_size=min_size, max_size=64)
        .filter(lambda b: b"\x00\x00" not in b and b[-1:] != b"\x00")
        .map(lambda b: bytes([b[0] & 0x7F]) + b[1:])
    )


@given(
    st.lists(nal_units(), min_size=1, max_size=8), st.lists(st.booleans(), min_size=8, max_size=8)
)
def test_split_annexb_recovers_nal_units(nals: list[bytes], long_codes: list[bool]) -> None:
    stream = b"".join(
        (b"\x00\x00\x00\x01" if long_codes[i] else b"\x00\x00\x01") + nal
        for i, nal in enumerate(nals)
    )
    assert split_annexb(stream) == nals
    assert split_annexb(stream + b"\x00\x00") == nals  # trailing_zero_8bits


@given(st.binary(max_size=256))
@settings(max_examples=500)
def test_split_annexb_never_fails_unexpectedly(data: bytes) -> None:
    try:
        nals = split_annexb(data)
    except ValueError:
        return
    assert all(nals) and all(b"\x00\x00\x01" not in n for n in nals)


def test_split_annexb_rejects_data_without_start_code() -> None:
    with pytest.raises(ValueError, match="no Annex B start code"):
        split_annexb(b"\x65\x88\x84")
    assert split_annexb(b"") == []


SPS = bytes.fromhex("6742c01e95a0501ec8")
PPS = bytes.fromhex("68ce3c80")


@given(st.lists(nal_units(min_size=2), min_size=1, max_size=5), st.booleans())
def test_annexb_to_avcc_round_trips_through_to_annexb(slices: list[bytes], idr: bool) -> None:
    kind = 5 if idr else 1
    slices = [bytes([(s[0] & 0x60) | kind]) + s[1:] for s in slices]
    conv = AnnexBToAvcc()
    au = conv.convert(b"".join(b"\x00\x00\x00\x01" + n for n in [SPS, PPS, *slices]))
    assert au is not None and au.keyframe == idr
    assert au.config is not None
    config = AvcConfig.parse(au.config)
    assert config.sps == (SPS,) and config.pps == (PPS,) and config.length_size == 4
    assert split_nals(au.data, 4) == slices  # parameter sets travel in the record
    # The worker's Annex B writer (for the source rung) puts them back ahead of an IDR.
    back = split_annexb(to_annexb(au.data, config, au.keyframe))
    assert back[1:] == ([SPS, PPS] if idr else []) + slices
    # The same parameter sets again: no new record.
    again = conv.convert(
        b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x00\x01" + PPS + b"\x00\x00\x01" + slices[0]
    )
    assert again is not None and again.config is None


def test_new_parameter_sets_announce_a_new_record() -> None:
    conv = AnnexBToAvcc()
    assert conv.convert(b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x00\x01" + PPS) is None
    first = conv.convert(b"\x00\x00\x01\x65\x88")
    assert first is not None and first.config is not None and first.keyframe
    sps2 = bytes.fromhex("6742c01f95a0501ec8")
    au = conv.convert(b"\x00\x00\x01" + sps2 + b"\x00\x00\x01" + PPS + b"\x00\x00\x01\x65\x88")
    assert au is not None and au.config is not None and AvcConfig.parse(au.config).sps == (sps2,)


def test_forbidden_bit_and_short_sps_are_errors() -> None:
    with pytest.raises(ValueError, match="forbidden_zero_bit"):
        AnnexBToAvcc().convert(b"\x00\x00\x01\xe5\x88")
    with pytest.raises(ValueError, match="SPS of 2 bytes"):
        AnnexBToAvcc().convert(b"\x00\x00\x01\x67\x42")
    with pytest.raises(ValueError, match="at least one SPS"):
        avc_decoder_config([], [PPS])


def test_vp8_keyframe_flag() -> None:
    assert vp8_keyframe(b"\x10\x02\x00\x9d\x01\x2a")  # P bit clear: key frame
    assert not vp8_keyframe(b"\x11\x02\x00")
    with pytest.raises(ValueError, match="shorter than its frame tag"):
        vp8_keyframe(b"\x10")


def test_opus_head_opens_ffmpeg_decoder() -> None:
    head = opus_head(2)
    assert len(head) == 19 and head[:8] == b"OpusHead"
    dec = av.CodecContext.create("opus", "r")
    dec.extradata = head
    dec.open()
    assert dec.channels == 2
    with pytest.raises(ValueError, match="1 or 2 channels"):
        opus_head(6)


def test_mapper_anchors_each_track_on_arrival_and_follows_its_rtp_clock() -> None:
    tl = Timeline()
    video = TrackMapper.for_codec("video", "VP8", 90000, tl)
    audio = TrackMapper.for_codec("audio", "opus", 48000, tl)
    delta = b"\x11\x02\x00\x00"
    key = b"\x10\x02\x00\x9d\x01\x2a"
    assert video.map(delta, 0, 100.0) == []  # before the first key frame: dropped
    assert video.waiting_keyframe and video.dropped == 1
    (k,) = video.map(key, 3000, 100.0)
    assert k.keyframe and k.codec == "vp8" and k.pts == k.dts == 33  # anchored on the first frame
    config, first = audio.map(b"\xfc\x01", 0, 100.25)
    assert config.config and config.data == opus_head(2)
    assert first.pts == 250  # audio began 250 ms after video, by arrival
    (a2,) = audio.map(b"\xfc\x01", 960, 100.9)  # late arrival: RTP clock wins, not arrival
    assert a2.pts == 270
    (v2,) = video.map(delta, 6000, 100.5)
    assert v2.pts == 67 and not v2.keyframe


@given(st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=50))
def test_mapper_timestamps_strictly_increase(steps: list[int]) -> None:
    audio = TrackMapper.for_codec("audio", "OPUS", 48000, Timeline())
    t = 0
    last = -1
    for i, step in enumerate(steps):
        t += step  # RTP ticks; equal timestamps map to the same ms
        for p in audio.map(b"\xfc", t, 10.0 + i * 0.02):
            if not p.config:
                assert p.dts > last
                last = p.dts


def test_mapper_refuses_codecs_the_node_does_not_take() -> None:
    with pytest.raises(ValueError, match="video codec AV1 is not accepted"):
        TrackMapper.for_codec("video", "AV1", 90000, Timeline())
    with pytest.raises(ValueError, match="audio codec PCMU is not accepted"):
        TrackMapper.for_codec("audio", "PCMU", 8000, Timeline())


@given(st.text(max_size=400))
@settings(max_examples=300)
def test_check_offer_refuses_any_text_with_offer_error(text: str) -> None:
    from ingest.whip.server import OfferError, check_offer

    try:
        check_offer(text)
    except OfferError as exc:
        assert str(exc)
    else:  # only a real offer with H.264/VP8 video, ICE and DTLS gets through
        raise AssertionError(f"accepted {text!r}")


@given(
    st.lists(
        st.sampled_from(
            [
                "v=0",
                "o=- 1 1 IN IP4 0.0.0.0",
                "s=-",
                "t=0 0",
                "m=video 9 UDP/TLS/RTP/SAVPF 96",
                "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                "a=rtpmap:96 VP8/90000",
                "a=rtpmap:111 opus/48000/2",
                "a=sendonly",
                "a=mid:0",
                "a=ice-ufrag:abcd",
                "a=ice-pwd:0123456789abcdef01234567",
                "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
                "a=setup:actpass",
                "c=IN IP4 0.0.0.0",
                "a=rtpmap:",
                "m=video",
                "a=candidate:1 1 udp 1 1.2.3.4 5 typ host",
                "a=fmtp:96 x",
            ]
        ),
        max_size=20,
    )
)
@settings(max_examples=300)
def test_check_offer_on_shuffled_sdp_lines(lines: list[str]) -> None:
    from ingest.whip.server import OfferError, check_offer

    try:
        check_offer("\r\n".join(lines) + "\r\n")
    except OfferError:
        pass
