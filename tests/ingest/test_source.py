"""SourceGuard: the largest source a publisher may send (ingest.max_width, ...)."""

from __future__ import annotations

from typing import Any

import pytest
from paramsets import h264, hevc, vp8_keyframe

from ingest.config import IngestConfig, TenantIngest
from ingest.sink import PublishRefused
from ingest.source import SourceGuard, SourceLimits
from media import MediaPacket
from settings import ConfigError

HD = SourceLimits(1920, 1080, 60.0)


def config(codec: str, data: bytes) -> MediaPacket:
    return MediaPacket("video", codec, 0, 0, data, config=True)


@pytest.mark.parametrize(
    ("codec", "width", "height", "fps", "refused"),
    [
        ("h264", 1920, 1080, 60, False),
        ("h264", 1080, 1920, 30, False),  # portrait fits too
        ("h264", 1280, 720, 30, False),
        ("h264", 3840, 2160, 30, True),
        ("h264", 2048, 1080, 30, True),
        ("h264", 1280, 720, 120, True),
        ("hevc", 1920, 1080, 30, False),
        ("hevc", 3840, 2160, 30, True),
    ],
)
def test_sequence_header_sps_decides(
    codec: str, width: int, height: int, fps: int, refused: bool
) -> None:
    guard = SourceGuard(HD, "live/cam")
    data = (h264(width, height, fps) if codec == "h264" else hevc(width, height, fps))[1]
    if not refused:
        guard.packet(config(codec, data))
        return
    with pytest.raises(PublishRefused) as info:
        guard.packet(config(codec, data))
    assert info.value.reason == "source_too_large"
    assert "live/cam" in info.value.description and "ingest.max_width" in info.value.description


@pytest.mark.parametrize(
    ("metadata", "refused"),
    [
        ({"width": 1920.0, "height": 1080.0, "framerate": 59.94}, False),
        ({"width": 1920.0, "height": 1080.0, "framerate": 60.0}, False),
        ({"width": 3840.0, "height": 2160.0, "framerate": 30.0}, True),
        ({"width": 1280.0, "height": 720.0, "framerate": 240.0}, True),
        ({"width": "huge", "height": float("nan"), "fps": -1.0}, False),  # no usable claim
        ({}, False),
    ],
)
def test_onmetadata_claims_are_held_to_the_limit(metadata: dict[str, Any], refused: bool) -> None:
    guard = SourceGuard(HD, "live/cam")
    if refused:
        with pytest.raises(PublishRefused, match="onMetaData"):
            guard.metadata(metadata)
    else:
        guard.metadata(metadata)


def test_a_4k_sps_inside_a_keyframe_is_refused() -> None:
    guard = SourceGuard(HD, "live/cam")
    guard.packet(config("h264", h264(1280, 720)[1]))
    sps = h264(3840, 2160)[0]
    idr = b"\x65\x88\x80"
    au = len(sps).to_bytes(4, "big") + sps + len(idr).to_bytes(4, "big") + idr
    with pytest.raises(PublishRefused, match="3840x2160"):
        guard.packet(MediaPacket("video", "h264", 40, 40, au, keyframe=True))


def test_vp8_keyframes_carry_the_size() -> None:
    guard = SourceGuard(HD, "live/cam")
    guard.packet(MediaPacket("video", "vp8", 0, 0, vp8_keyframe(1280, 720), keyframe=True))
    with pytest.raises(PublishRefused, match="VP8"):
        guard.packet(MediaPacket("video", "vp8", 0, 0, vp8_keyframe(2560, 1440), keyframe=True))


def test_an_unreadable_sequence_header_is_refused() -> None:
    with pytest.raises(PublishRefused) as info:
        SourceGuard(HD, "live/cam").packet(config("h264", b"\x01\x64\x00"))
    assert info.value.reason == "source_invalid"


def test_no_limit_checks_nothing() -> None:
    guard = SourceGuard(SourceLimits(), "live/cam")
    guard.packet(config("h264", b"garbage"))
    guard.metadata({"width": 1e6, "height": 1e6})


def test_a_tenant_may_raise_the_limit() -> None:
    cfg = IngestConfig(tenants={"tv": TenantIngest(max_width=3840, max_height=2160)})
    assert cfg.source_limits("live") == SourceLimits(1920, 1080, 60.0)
    assert cfg.source_limits("tv") == SourceLimits(3840, 2160, 60.0)
    SourceGuard(cfg.source_limits("tv"), "tv/news").packet(config("h264", h264(3840, 2160)[1]))


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="'max_fps' must be >= 0"):
        IngestConfig(max_fps=-1)
    with pytest.raises(ConfigError, match="'max_width' must be >= 0"):
        TenantIngest(max_width=-1)
