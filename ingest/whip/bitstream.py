"""Codec bitstream helpers for WebRTC ingest (pure, sans-I/O).

WebRTC carries H.264 as Annex B NAL units (RFC 6184; aiortc's depayloader
re-inserts start codes) with the parameter sets in-band, while the node's media
model (:class:`media.MediaPacket`) carries H.264 the way RTMP does: an
AVCDecoderConfigurationRecord, then length-prefixed access units. WebRTC
carries Opus without an ``OpusHead`` (RFC 7587), which FFmpeg's decoder takes
as extradata. These helpers map the one to the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (3- or 4-byte start codes).

    Bytes before the first start code and trailing zero bytes (ISO 14496-10
    B.1 ``trailing_zero_8bits``) are not part of any NAL unit.
    """
    nals: list[bytes] = []
    n = len(data)
    i = data.find(b"\x00\x00\x01")
    if i < 0:
        if data.strip(b"\x00"):
            raise ValueError("H.264 access unit has no Annex B start code")
        return nals
    start = i + 3
    while True:
        j = data.find(b"\x00\x00\x01", start)
        end = n if j < 0 else j
        nal = data[start:end].rstrip(b"\x00")
        if nal:
            nals.append(nal)
        if j < 0:
            return nals
        start = j + 3


def avc_decoder_config(sps: Sequence[bytes], pps: Sequence[bytes]) -> bytes:
    """An AVCDecoderConfigurationRecord (ISO 14496-15 §5.3.3.1) with 4-byte lengths."""
    if not sps or not pps:
        raise ValueError("an AVCDecoderConfigurationRecord needs at least one SPS and one PPS")
    first = sps[0]
    if len(first) < 4:
        raise ValueError(f"H.264 SPS of {len(first)} bytes is too short")
    if len(sps) > 31 or len(pps) > 255:
        raise ValueError("too many H.264 parameter sets for an AVCDecoderConfigurationRecord")
    out = bytearray([1, first[1], first[2], first[3], 0xFF, 0xE0 | len(sps)])
    for ps in sps:
        if len(ps) > 0xFFFF:
            raise ValueError("H.264 SPS is larger than 65535 bytes")
        out += len(ps).to_bytes(2, "big") + ps
    out.append(len(pps))
    for ps in pps:
        if len(ps) > 0xFFFF:
            raise ValueError("H.264 PPS is larger than 65535 bytes")
        out += len(ps).to_bytes(2, "big") + ps
    return bytes(out)


@dataclass(frozen=True, slots=True)
class AvcAccessUnit:
    """One access unit in the node's form: 4-byte length-prefixed NAL units."""

    data: bytes
    keyframe: bool
    config: bytes | None = None  # a new AVCDecoderConfigurationRecord to send first


@dataclass
class AnnexBToAvcc:
    """Turns Annex B access units into AVCC ones, announcing each new parameter set pair.

    Parameter sets stay out of the access units (as in FLV); a change of SPS or PPS,
    as when a browser adapts its resolution, yields a new configuration record.
    """

    sps: bytes | None = None  # the latest SPS and PPS seen
    pps: bytes | None = None
    announced: bytes | None = None

    def convert(self, annexb: bytes) -> AvcAccessUnit | None:
        """The access unit, or ``None`` when it held nothing but parameter sets or delimiters."""
        out = bytearray()
        keyframe = False
        for nal in split_annexb(annexb):
            kind = nal[0] & 0x1F
            if nal[0] & 0x80:
                raise ValueError("H.264 NAL unit has its forbidden_zero_bit set")
            if kind == NAL_SPS:
                if len(nal) < 4:
                    raise ValueError(f"H.264 SPS of {len(nal)} bytes is too short")
                self.sps = nal
                continue
            if kind == NAL_PPS:
                self.pps = nal
                continue
            if kind == NAL_AUD:
                continue
            if kind == NAL_IDR:
                keyframe = True
            out += len(nal).to_bytes(4, "big") + nal
        if not out:
            return None  # parameter sets alone: announced with the next picture
        config: bytes | None = None
        if self.sps and self.pps:
            record = avc_decoder_config([self.sps], [self.pps])
            if record != self.announced:
                self.announced = config = record
        return AvcAccessUnit(bytes(out), keyframe, config)


def vp8_keyframe(frame: bytes) -> bool:
    """Whether a VP8 frame is a key frame (RFC 6386 §9.1: P bit of the frame tag clear)."""
    if len(frame) < 3:
        raise ValueError(f"VP8 frame of {len(frame)} bytes is shorter than its frame tag")
    return not frame[0] & 0x01


def opus_head(channels: int = 2, input_rate: int = 48000, pre_skip: int = 0) -> bytes:
    """An ``OpusHead`` identification header (RFC 7845 §5.1), mapping family 0."""
    if channels not in (1, 2):
        raise ValueError(f"Opus mapping family 0 has 1 or 2 channels, not {channels}")
    return (
        b"OpusHead"
        + bytes([1, channels])
        + pre_skip.to_bytes(2, "little")
        + input_rate.to_bytes(4, "little")
        + b"\x00\x00"  # output gain
        + b"\x00"  # channel mapping family
    )
