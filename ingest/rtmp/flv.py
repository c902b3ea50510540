"""FLV audio and video tag bodies (FLV specification v10.1, annex E.4.2 and E.4.3;
Enhanced RTMP v1 and v2) mapped to :class:`media.model.MediaPacket`.

Codec policy: every codec FFmpeg can decode yields a packet named after its FFmpeg
decoder, legacy ones included (``flv1``, ``vp6f``, ``mp3``, ``speex``...). The
adapter compares ``packet.codec`` with what it can transcode and refuses the stream
with a clear message. Codec ids and FourCCs with no FFmpeg name, and Enhanced RTMP
multitrack tags, raise :class:`UnsupportedCodec`.

Sequence-end, metadata and command-frame tags carry no media and return ``None``.
Audio packets are marked ``keyframe=True``: every frame of these codecs is a sync
sample, and segmenters may rely on the flag.
"""

from __future__ import annotations

from media.model import AUDIO, VIDEO, MediaPacket

from .exceptions import RtmpProtocolError, UnsupportedCodec

# E.4.3.1 VideoTagHeader
FRAME_KEY = 1
FRAME_INTER = 2
FRAME_COMMAND = 5
CODEC_AVC = 7
AVC_SEQUENCE_HEADER = 0
AVC_NALU = 1
AVC_END_OF_SEQUENCE = 2

# E.4.2.1 AudioTagHeader
SOUND_AAC = 10
SOUND_EX_HEADER = 9  # Enhanced RTMP v2 reuses the reserved id 9 for the ExHeader.
AAC_SEQUENCE_HEADER = 0
AAC_RAW = 1

# Enhanced RTMP PacketType values (video; audio shares 0-2 and 7).
PACKET_SEQUENCE_START = 0
PACKET_CODED_FRAMES = 1
PACKET_SEQUENCE_END = 2
PACKET_CODED_FRAMES_X = 3
PACKET_METADATA = 4
PACKET_MPEG2TS_SEQUENCE_START = 5
PACKET_MULTITRACK = 6
PACKET_MODEX = 7
AUDIO_PACKET_MULTICHANNEL_CONFIG = 4
AUDIO_PACKET_MULTITRACK = 5

LEGACY_VIDEO_CODECS = {2: "flv1", 3: "flashsv", 4: "vp6f", 5: "vp6a", 6: "flashsv2", 7: "h264"}
VIDEO_FOURCCS = {b"avc1": "h264", b"hvc1": "hevc", b"av01": "av1", b"vp09": "vp9", b"vp08": "vp8"}
AUDIO_FOURCCS = {
    b"mp4a": "aac",
    b"Opus": "opus",
    b"fLaC": "flac",
    b"ac-3": "ac3",
    b"ec-3": "eac3",
    b".mp3": "mp3",
}
_FOURCC_BY_CODEC = {name: fourcc for fourcc, name in VIDEO_FOURCCS.items()}
_AUDIO_FOURCC_BY_CODEC = {name: fourcc for fourcc, name in AUDIO_FOURCCS.items()}


def _fourcc(body: bytes, offset: int, kind: str, table: dict[bytes, str]) -> tuple[str, int]:
    """Read an Enhanced RTMP FourCC and map it to an FFmpeg codec name."""
    if len(body) < offset + 4:
        raise RtmpProtocolError(f"Enhanced RTMP {kind} tag is {len(body)} bytes, FourCC missing")
    fourcc = bytes(body[offset : offset + 4])
    codec = table.get(fourcc)
    if codec is None:
        raise UnsupportedCodec(f"Enhanced RTMP {kind} FourCC {fourcc!r} is not supported")
    return codec, offset + 4


def _legacy_audio_codec(sound_format: int, sound_size: int) -> str:
    if sound_format in (0, 3):
        # 0 is "platform endian" PCM; FFmpeg's flvdec treats it as little endian too.
        return "pcm_s16le" if sound_size else "pcm_u8"
    names = {
        1: "adpcm_swf",
        2: "mp3",
        4: "nellymoser",
        5: "nellymoser",
        6: "nellymoser",
        7: "pcm_alaw",
        8: "pcm_mulaw",
        10: "aac",
        11: "speex",
        14: "mp3",
    }
    name = names.get(sound_format)
    if name is None:
        raise UnsupportedCodec(f"FLV audio SoundFormat {sound_format} is not supported")
    return name


def _si24(data: bytes, offset: int) -> int:
    value = int.from_bytes(data[offset : offset + 3], "big")
    return value - 0x1000000 if value & 0x800000 else value


def _skip_modex(body: bytes, offset: int, kind: str) -> tuple[int, int]:
    """Skip Enhanced RTMP v2 ModEx prefixes; return (real packet type, offset).

    The only ModEx type defined so far is a nanosecond timestamp offset, below our
    millisecond resolution, so the data is ignored.
    """
    packet_type = PACKET_MODEX
    while packet_type == PACKET_MODEX:
        if offset >= len(body):
            raise RtmpProtocolError(f"FLV {kind} ModEx header is truncated")
        size = body[offset] + 1
        offset += 1
        if size == 256:
            if offset + 2 > len(body):
                raise RtmpProtocolError(f"FLV {kind} ModEx size is truncated")
            size = int.from_bytes(body[offset : offset + 2], "big") + 1
            offset += 2
        offset += size
        if offset >= len(body):
            raise RtmpProtocolError(f"FLV {kind} ModEx data is truncated")
        packet_type = body[offset] & 0x0F
        offset += 1
    return packet_type, offset


def parse_video(timestamp: int, body: bytes) -> MediaPacket | None:
    """Parse a video message body (RTMP type 9) received at ``timestamp`` ms (the DTS)."""
    if not body:
        return None
    b0 = body[0]
    if b0 & 0x80:
        return _parse_enhanced_video(timestamp, body)
    frame_type = b0 >> 4
    codec_id = b0 & 0x0F
    if frame_type == FRAME_COMMAND:
        return None  # E.4.3.1: a one-byte seek command, no media.
    codec = LEGACY_VIDEO_CODECS.get(codec_id)
    if codec is None:
        raise UnsupportedCodec(f"FLV video CodecID {codec_id} is not supported")
    keyframe = frame_type == FRAME_KEY
    if codec_id != CODEC_AVC:
        return MediaPacket(VIDEO, codec, timestamp, timestamp, bytes(body[1:]), keyframe)
    if len(body) < 5:
        raise RtmpProtocolError(f"FLV AVC video tag is {len(body)} bytes, needs at least 5")
    packet_type = body[1]
    if packet_type == AVC_SEQUENCE_HEADER:
        return MediaPacket(VIDEO, codec, timestamp, timestamp, bytes(body[5:]), config=True)
    if packet_type == AVC_NALU:
        # E.4.3.1: CompositionTime is SI24, pts = dts + cts.
        pts = timestamp + _si24(body, 2)
        return MediaPacket(VIDEO, codec, pts, timestamp, bytes(body[5:]), keyframe)
    if packet_type == AVC_END_OF_SEQUENCE:
        return None
    raise RtmpProtocolError(f"FLV AVCPacketType {packet_type} is not 0, 1 or 2")


def _parse_enhanced_video(timestamp: int, body: bytes) -> MediaPacket | None:
    b0 = body[0]
    frame_type = (b0 >> 4) & 0x07
    packet_type = b0 & 0x0F
    offset = 1
    if packet_type == PACKET_MODEX:
        packet_type, offset = _skip_modex(body, offset, "video")
    if frame_type == FRAME_COMMAND and packet_type != PACKET_METADATA:
        return None  # Enhanced RTMP: a VideoCommand byte instead of a FourCC and data.
    if packet_type == PACKET_MULTITRACK:
        raise UnsupportedCodec("Enhanced RTMP multitrack video is not supported")
    codec, offset = _fourcc(body, offset, "video", VIDEO_FOURCCS)
    if packet_type == PACKET_SEQUENCE_START:
        return MediaPacket(VIDEO, codec, timestamp, timestamp, bytes(body[offset:]), config=True)
    keyframe = frame_type == FRAME_KEY
    if packet_type == PACKET_CODED_FRAMES:
        pts = timestamp
        # Only AVC and HEVC carry a composition time offset in CodedFrames.
        if codec in ("h264", "hevc"):
            if len(body) < offset + 3:
                raise RtmpProtocolError("Enhanced RTMP CodedFrames tag is missing its SI24 cts")
            pts += _si24(body, offset)
            offset += 3
        return MediaPacket(VIDEO, codec, pts, timestamp, bytes(body[offset:]), keyframe)
    if packet_type == PACKET_CODED_FRAMES_X:
        return MediaPacket(VIDEO, codec, timestamp, timestamp, bytes(body[offset:]), keyframe)
    if packet_type in (PACKET_SEQUENCE_END, PACKET_METADATA, PACKET_MPEG2TS_SEQUENCE_START):
        # Metadata is HDR colour info; MPEG2TSSequenceStart is the AV1 TS descriptor,
        # redundant with the av1C SequenceStart that OBS and FFmpeg also send.
        return None
    raise RtmpProtocolError(f"Enhanced RTMP video PacketType {packet_type} is unknown")


def parse_audio(timestamp: int, body: bytes) -> MediaPacket | None:
    """Parse an audio message body (RTMP type 8) received at ``timestamp`` ms."""
    if not body:
        return None
    b0 = body[0]
    sound_format = b0 >> 4
    if sound_format == SOUND_EX_HEADER:
        return _parse_enhanced_audio(timestamp, body)
    codec = _legacy_audio_codec(sound_format, (b0 >> 1) & 1)
    if sound_format != SOUND_AAC:
        return MediaPacket(AUDIO, codec, timestamp, timestamp, bytes(body[1:]), keyframe=True)
    if len(body) < 2:
        raise RtmpProtocolError("FLV AAC audio tag is missing its AACPacketType")
    packet_type = body[1]
    if packet_type == AAC_SEQUENCE_HEADER:
        return MediaPacket(AUDIO, codec, timestamp, timestamp, bytes(body[2:]), config=True)
    if packet_type == AAC_RAW:
        return MediaPacket(AUDIO, codec, timestamp, timestamp, bytes(body[2:]), keyframe=True)
    raise RtmpProtocolError(f"FLV AACPacketType {packet_type} is not 0 or 1")


def _parse_enhanced_audio(timestamp: int, body: bytes) -> MediaPacket | None:
    packet_type = body[0] & 0x0F
    offset = 1
    if packet_type == PACKET_MODEX:
        packet_type, offset = _skip_modex(body, offset, "audio")
    if packet_type == AUDIO_PACKET_MULTITRACK:
        raise UnsupportedCodec("Enhanced RTMP multitrack audio is not supported")
    codec, offset = _fourcc(body, offset, "audio", AUDIO_FOURCCS)
    data = bytes(body[offset:])
    if packet_type == PACKET_SEQUENCE_START:
        return MediaPacket(AUDIO, codec, timestamp, timestamp, data, config=True)
    if packet_type == PACKET_CODED_FRAMES:
        return MediaPacket(AUDIO, codec, timestamp, timestamp, data, keyframe=True)
    if packet_type in (PACKET_SEQUENCE_END, AUDIO_PACKET_MULTICHANNEL_CONFIG):
        return None
    raise RtmpProtocolError(f"Enhanced RTMP audio PacketType {packet_type} is unknown")


def video_tag(packet: MediaPacket, *, enhanced: bool = False) -> bytes:
    """Build a video tag body; the inverse of :func:`parse_video` (used by tests).

    H.264 uses the legacy AVC layout unless ``enhanced``; other codecs always use
    Enhanced RTMP. Like FFmpeg's flvenc, a zero composition time is sent as
    CodedFramesX.
    """
    cts = packet.pts - packet.dts
    frame = FRAME_KEY if packet.keyframe or packet.config else FRAME_INTER
    if packet.codec == "h264" and not enhanced:
        kind = AVC_SEQUENCE_HEADER if packet.config else AVC_NALU
        head = bytes([(frame << 4) | CODEC_AVC, kind]) + (cts & 0xFFFFFF).to_bytes(3, "big")
        return head + packet.data
    fourcc = _FOURCC_BY_CODEC.get(packet.codec)
    if fourcc is None:
        raise ValueError(f"no FLV video mapping for codec {packet.codec!r}")
    if packet.config:
        return bytes([0x80 | (frame << 4) | PACKET_SEQUENCE_START]) + fourcc + packet.data
    if cts == 0 or fourcc not in (b"avc1", b"hvc1"):
        if cts != 0:
            raise ValueError(f"{packet.codec} frames cannot carry a composition time")
        return bytes([0x80 | (frame << 4) | PACKET_CODED_FRAMES_X]) + fourcc + packet.data
    head = bytes([0x80 | (frame << 4) | PACKET_CODED_FRAMES]) + fourcc
    return head + (cts & 0xFFFFFF).to_bytes(3, "big") + packet.data


def audio_tag(packet: MediaPacket, *, enhanced: bool = False) -> bytes:
    """Build an audio tag body; the inverse of :func:`parse_audio` for AAC and ExHeader
    codecs (used by tests). Legacy AAC is flagged 44.1 kHz, 16-bit, stereo, as
    E.4.2.1 requires for AAC whatever the real parameters are.
    """
    if packet.codec == "aac" and not enhanced:
        return bytes([0xAF, AAC_SEQUENCE_HEADER if packet.config else AAC_RAW]) + packet.data
    fourcc = _AUDIO_FOURCC_BY_CODEC.get(packet.codec)
    if fourcc is None:
        raise ValueError(f"no FLV audio mapping for codec {packet.codec!r}")
    kind = PACKET_SEQUENCE_START if packet.config else PACKET_CODED_FRAMES
    return bytes([(SOUND_EX_HEADER << 4) | kind]) + fourcc + packet.data
