"""The worker's pipeline, in-process: decode once, ladder, forced IDRs, segments."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import pytest

from transcode.offline import file_packets
from transcode.config import Rendition
from transcode.protocol import FrameReader, FrameType, SegmentFrame
from transcode.worker import Output, Pipeline, Spec

SMALL = str(Path(__file__).resolve().parent.parent / "samples" / "small-360p.mp4")
LADDER = [
    Rendition("360p", 640, 360, 700_000),
    Rendition("240p", 426, 240, 400_000),
    Rendition("720p", 1280, 720, 2_800_000),  # larger than the source: must be dropped
]


@pytest.fixture(scope="module")
def segments() -> dict[str, list[SegmentFrame]]:
    buf = io.BytesIO()
    pipeline = Pipeline(Spec(stream="t/t", ladder=LADDER, x264_threads=1), Output(buf))
    for p in file_packets(SMALL):
        pipeline.feed(p)
    pipeline.finish()
    out: dict[str, list[SegmentFrame]] = {}
    for ftype, payload in FrameReader().feed(buf.getvalue()):
        if ftype is FrameType.SEGMENT:
            s = SegmentFrame.parse(payload)
            out.setdefault(s.rendition, []).append(s)
    return out


def test_no_upscaled_rendition(segments: dict[str, list[SegmentFrame]]) -> None:
    assert sorted(segments) == ["240p", "360p"]


def test_segments_start_with_idr_and_have_expected_size(
    segments: dict[str, list[SegmentFrame]],
) -> None:
    sizes = {"360p": (640, 360), "240p": (426, 240)}
    for name, segs in segments.items():
        for s in segs:
            with av.open(io.BytesIO(s.data), format="mpegts") as c:
                assert c.streams.audio, "audio is muxed in every rendition"
                packets = [p for p in c.demux(c.streams.video[0]) if p.size]
                assert packets[0].is_keyframe, f"{name} segment {s.index} starts without an IDR"
                frames = [f for p in packets for f in p.decode()]
                assert frames and all((f.width, f.height) == sizes[name] for f in frames)


def test_boundaries_align_across_renditions(segments: dict[str, list[SegmentFrame]]) -> None:
    a, b = segments["360p"], segments["240p"]
    assert len(a) == len(b) >= 3
    for x, y in zip(a, b, strict=True):
        assert x.index == y.index
        assert abs(x.start - y.start) < 1 / 30
        assert abs(x.duration - y.duration) < 1 / 30


def test_durations_follow_the_grid(segments: dict[str, list[SegmentFrame]]) -> None:
    for segs in segments.values():
        for s in segs[:-1]:
            assert 1.9 <= s.duration <= 2.1
        assert round(segs[-1].duration) <= 2


def test_missing_hardware_encoder_falls_back_to_x264(caplog: pytest.LogCaptureFixture) -> None:
    """A profile naming NVENC still plays on a node without a GPU."""
    buf = io.BytesIO()
    ladder = [Rendition("240p", 426, 240, 400_000, codec="h264_nvenc")]
    pipeline = Pipeline(Spec(stream="t/hw", ladder=ladder, x264_threads=1), Output(buf))
    for n, p in enumerate(file_packets(SMALL)):
        pipeline.feed(p)
        if n > 120:
            break
    pipeline.finish()
    frames = FrameReader().feed(buf.getvalue())
    info = next(json.loads(p) for t, p in frames if t is FrameType.RENDITIONS)
    assert info["renditions"][0]["encoder"] == "libx264"
    assert any(t is FrameType.SEGMENT for t, _ in frames)
    assert "falling back to libx264" in caplog.text
