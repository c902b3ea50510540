"""The stream sink packages the worker's TAP packets as the hidden ``webrtc`` rendition.

The sink is driven as the transcode pool drives it (on_renditions, on_tap, on_restart,
then finish) with real tap packets; the store it feeds must serve the rendition without
offering it to players or to the recorder.
"""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace
from typing import Any, cast

import m3u8
import pytest
from servehelp import INFO
from taputil import encode_tap

from distribute.config import HlsConfig
from distribute.hls.stream import LiveStream
from distribute.whep.cmaf_source import TAP_RENDITION, CmafDemuxer
from media import MediaPacket, StreamKey
from media.segments import SegmentFrame
from nearcast.node import Node
from nearcast.session import _StoreSink
from transcode.config import Rendition
from transcode.metrics import TranscodeMetrics
from transcode.spec import Spec

KEY = StreamKey("live", "tap")
LADDER = [Rendition("360p", 640, 360, 700_000, 30.0), Rendition("180p", 320, 180, 200_000, 30.0)]


@functools.cache
def tap_packets() -> list[MediaPacket]:
    return encode_tap(3.0)


class FakeWhep:
    def __init__(self) -> None:
        self.fed: list[MediaPacket] = []
        self.restarts = 0

    def feed(self, key: StreamKey, packet: MediaPacket) -> None:
        self.fed.append(packet)

    def restart(self, key: StreamKey) -> None:
        self.restarts += 1


def sink_for(
    hls: HlsConfig | None = None,
    tap: str = "180p",
    info: dict[str, Any] = INFO,
    recorder: object = None,
    ladder: list[Rendition] = LADDER,
) -> tuple[_StoreSink, LiveStream, FakeWhep]:
    whep = FakeWhep()
    node = SimpleNamespace(whep=whep, recorder=recorder, tmetrics=TranscodeMetrics(None))
    stream = LiveStream(KEY, hls or HlsConfig(segment_duration=1.0, lead_parts=3), now=0.0)
    stream.begin_generation()
    sink = _StoreSink(cast(Node, node), stream, Spec(stream=str(KEY), ladder=ladder, tap=tap))
    sink.on_renditions(info)
    return sink, stream, whep


def feed(sink: _StoreSink, packets: list[MediaPacket], shift_ms: int = 0) -> None:
    for p in packets:
        sink.on_tap(
            MediaPacket(p.kind, p.codec, p.pts + shift_ms, p.dts + shift_ms, p.data, p.keyframe),
            0.0,
        )


def test_tap_packets_become_a_hidden_rendition_served_like_the_others() -> None:
    sink, stream, whep = sink_for()
    feed(sink, tap_packets())
    sink.finish()
    assert len(whep.fed) == len(tap_packets())  # WHEP viewers get every packet, as before
    track = stream.renditions[TAP_RENDITION]
    # Three 1 s segments, the first listed as a three-part lead and the rest (LL-HLS).
    assert [s.msn for s in track.segments] == [0, 1, 2, 3]
    playlist = m3u8.loads(track.playlist.decode())
    assert playlist.segments[0].init_section.uri == f"init-{track.init_id}.mp4"
    assert any(p.independent for s in playlist.segments for p in s.parts or [])
    # Offered to no player: not in the master playlist, the other renditions' reports
    # or the stream's description; and the stream is ready without it.
    assert b"webrtc" not in stream.master and b"180p/index.m3u8" in stream.master
    stream.add_segment(SegmentFrame("360p", 0, 0.0, 1.0, "avc1.64001E", b"x"))
    assert b"webrtc" not in stream.renditions["360p"].playlist
    assert b"../360p/index.m3u8" in track.playlist
    assert [r["name"] for r in stream.describe(0.0)["renditions"]] == ["360p", "180p"]
    stream.add_segment(SegmentFrame("180p", 0, 0.0, 1.0, "avc1.64001E", b"x"))
    assert stream.ready()
    # What a relay pulls reads back as the tap's own packets.
    d = CmafDemuxer()
    d.init(track.inits[track.init_id])
    video = [p for s in track.segments for p in d.fragment(s.data) if p.kind == "video"]
    assert [(p.pts, p.keyframe) for p in video] == [
        (p.pts, p.keyframe) for p in tap_packets() if p.kind == "video"
    ]


def test_a_worker_restart_starts_the_rendition_over_after_a_discontinuity() -> None:
    sink, stream, whep = sink_for()
    feed(sink, tap_packets()[: len(tap_packets()) // 2])
    sink.on_restart()
    assert whep.restarts == 1
    feed(sink, tap_packets(), shift_ms=10_000)  # the new worker resumes later on the timeline
    sink.finish()
    text = stream.renditions[TAP_RENDITION].playlist.decode()
    assert text.count("#EXT-X-DISCONTINUITY\n") == 1
    playlist = m3u8.loads(text)
    # The first run's whole segment (lead and rest), then the new run from its lead.
    assert [s.discontinuity for s in playlist.segments] == [False, False, True, False, False, False]


@pytest.mark.parametrize(
    ("hls", "tap"),
    [
        (HlsConfig(segment_format="ts", low_latency=False), "180p"),  # no fMP4 to serve
        (HlsConfig(), ""),  # WebRTC off: the worker sends no tap
    ],
)
def test_no_hidden_rendition_without_fmp4_or_a_tap(hls: HlsConfig, tap: str) -> None:
    sink, stream, whep = sink_for(hls, tap)
    feed(sink, tap_packets())
    assert TAP_RENDITION not in stream.renditions and not stream.hidden


def test_a_rung_named_webrtc_stays_listed(caplog: pytest.LogCaptureFixture) -> None:
    info = {**INFO, "renditions": [{**INFO["renditions"][0], "name": TAP_RENDITION}]}
    ladder = [Rendition(TAP_RENDITION, 640, 360, 700_000, 30.0)]
    sink, stream, whep = sink_for(tap=TAP_RENDITION, info=info, ladder=ladder)
    with caplog.at_level(logging.WARNING):
        feed(sink, tap_packets())
    assert not stream.hidden and b"webrtc/index.m3u8" in stream.master
    assert "already has a listed rendition 'webrtc'" in caplog.text
    assert len(whep.fed) == len(tap_packets())
    with pytest.raises(ValueError, match="listed rendition"):
        stream.add_hidden_rendition(TAP_RENDITION, width=1, height=1, fps=1, codecs="")


def test_the_recorder_never_gets_the_hidden_rendition(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: list[str] = []
    sink, stream, _ = sink_for(recorder=SimpleNamespace(mode=lambda tenant: None))
    monkeypatch.setattr(sink, "_record_segment", lambda name, *a, **k: recorded.append(name))
    feed(sink, tap_packets())
    sink.on_segment(SegmentFrame("180p", 0, 0.0, 1.0, "avc1.64001E", b"x"))
    assert recorded == ["180p"]
    assert TAP_RENDITION in stream.renditions


def test_tap_idrs_before_the_renditions_report_wait_for_it() -> None:
    sink, stream, whep = sink_for(info={})  # the worker has not reported its rungs yet
    packets = tap_packets()
    first_gop = [p for p in packets if p.pts < 1000]
    feed(sink, first_gop)
    assert TAP_RENDITION not in stream.renditions
    sink.on_renditions(INFO)
    feed(sink, [p for p in packets if p.pts >= 1000])
    sink.finish()
    assert [s.msn for s in stream.renditions[TAP_RENDITION].segments] == [0, 1, 2]
