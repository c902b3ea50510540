from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MediaKind = Literal["video", "audio"]
VIDEO: MediaKind = "video"
AUDIO: MediaKind = "audio"


@dataclass(frozen=True, slots=True)
class StreamKey:
    """A live stream is named by its tenant (the RTMP app) and its stream name."""

    tenant: str
    stream: str

    def __str__(self) -> str:
        return f"{self.tenant}/{self.stream}"


@dataclass(frozen=True, slots=True)
class MediaPacket:
    """One compressed access unit, or a codec configuration record.

    ``codec`` is an FFmpeg decoder name (``h264``, ``hevc``, ``av1``, ``aac``,
    ``opus``, ``vp8``). Video ``data`` is length-prefixed NAL units (AVCC/HVCC,
    as FLV carries them); AAC ``data`` is a raw frame without ADTS. When
    ``config`` is true, ``data`` is the decoder configuration instead
    (AVCDecoderConfigurationRecord, AudioSpecificConfig, ...).
    """

    kind: MediaKind
    codec: str
    pts: int
    dts: int
    data: bytes
    keyframe: bool = False
    config: bool = False
