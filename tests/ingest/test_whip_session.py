"""WhipSession's frame handling, driven without a peer connection."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from paramsets import h264
from prometheus_client import CollectorRegistry

from ingest.metrics import IngestMetrics
from ingest.source import SourceGuard, SourceLimits
from ingest.whip.config import WhipConfig
from ingest.whip.mapper import TrackMapper
from ingest.whip.session import WhipSession, _Track
from media import MediaPacket, StreamKey
from media.h264 import AvcConfig


class FakePublication:
    def __init__(self) -> None:
        self.packets: list[MediaPacket] = []

    async def media(self, packet: MediaPacket) -> None:
        self.packets.append(packet)

    def metadata(self, values: dict[str, Any]) -> None:
        pass

    async def close(self) -> None:
        pass


class FakeReceiver:
    def getSynchronizationSources(self) -> list[Any]:  # noqa: N802 (aiortc's name)
        return []


def session(registry: CollectorRegistry | None = None) -> WhipSession:
    return WhipSession(
        WhipConfig(),
        IngestMetrics(registry or CollectorRegistry()),
        lambda _s: None,
        "sid",
        StreamKey("live", "flood"),
        "192.0.2.7",
        None,  # type: ignore[arg-type]  # no peer connection: frames are fed directly
        FakePublication(),
        0.0,
    )


H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=96)


async def test_ten_thousand_bad_frames_log_a_handful_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = session()
    track = _Track(FakeReceiver(), TrackMapper.for_codec("video", "H264", 90000, s.timeline))  # type: ignore[arg-type]
    on_frame = s._frame_callback(track)
    with caplog.at_level(logging.WARNING, logger="ingest.whip.session"):
        for i in range(10_000):
            on_frame(H264, JitterFrame(b"\x01\x02 no start code", i * 3000))
    lines = [r for r in caplog.records if "bad h264 frame dropped" in r.getMessage()]
    assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines]
    s.abort()


def _annexb(*nals: bytes) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


async def test_a_source_over_the_limit_is_refused_at_its_first_keyframe() -> None:
    registry = CollectorRegistry()
    s = session(registry)
    s.guard = SourceGuard(SourceLimits(1920, 1080, 60.0), "live/flood")
    track = _Track(FakeReceiver(), TrackMapper.for_codec("video", "H264", 90000, s.timeline))  # type: ignore[arg-type]
    on_frame = s._frame_callback(track)
    idr = b"\x65\x88\x80\x10"
    for i, (w, h) in enumerate([(1280, 720), (3840, 2160), (1280, 720)]):
        sps, avcc = h264(w, h)
        (pps,) = AvcConfig.parse(avcc).pps
        on_frame(H264, JitterFrame(_annexb(sps, pps, idr), i * 3000))
    assert s.closed
    assert registry.get_sample_value("ingest_rejected_total", {"reason": "source_too_large"}) == 1
    queued = [s._queue.get_nowait() for _ in range(s._queue.qsize())]
    # Only the 720p stream got through: nothing from the 4K keyframe on.
    assert [(p.config, p.keyframe) for p in queued if p is not None] == [
        (True, False),
        (False, True),
    ]
    s.abort()
