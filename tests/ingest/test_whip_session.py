"""WhipSession's frame handling, driven without a peer connection."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from prometheus_client import CollectorRegistry

from ingest.metrics import IngestMetrics
from ingest.whip.config import WhipConfig
from ingest.whip.mapper import TrackMapper
from ingest.whip.session import WhipSession, _Track
from media import MediaPacket, StreamKey


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
