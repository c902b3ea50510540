from __future__ import annotations

import logging

import m3u8
import pytest
from servehelp import INFO

from distribute.config import HlsConfig
from distribute.hls.stream import LiveStream
from media import StreamKey
from media.segments import SegmentFrame

# MPEG-TS delivery (LL-HLS is the default; tests/distribute/test_llhls.py covers it).
TS = {"segment_format": "ts", "low_latency": False}


def seg(rendition: str, index: int, size: int = 1000, duration: float = 2.0) -> SegmentFrame:
    return SegmentFrame(rendition, index, index * 2.0, duration, "avc1.64001E", b"x" * size)


def stream(window: int = 3) -> LiveStream:
    s = LiveStream(StreamKey("live", "t"), HlsConfig(window=window, **TS), now=0.0)
    s.begin_generation()
    s.set_renditions(INFO)
    return s


def test_sliding_window_and_media_sequence() -> None:
    s = stream(window=3)
    for i in range(5):
        s.add_segment(seg("360p", i))
    pl = m3u8.loads(s.renditions["360p"].playlist.decode())
    assert pl.media_sequence == 2
    assert [x.uri for x in pl.segments] == ["2.ts", "3.ts", "4.ts"]
    assert pl.target_duration == 2 and not pl.is_endlist
    # Evicted from the playlist, still served for a while (RFC 8216bis §6.2.2).
    assert 1 in s.renditions["360p"].by_msn


def test_reconnect_adds_discontinuity_and_continues_numbering() -> None:
    s = stream(window=6)
    for i in range(2):
        s.add_segment(seg("360p", i))
    s.begin_generation()  # the publisher came back: a new worker numbers from 0
    s.add_segment(seg("360p", 0))
    text = s.renditions["360p"].playlist.decode()
    pl = m3u8.loads(text)
    assert [x.uri for x in pl.segments] == ["0.ts", "1.ts", "2.ts"]
    assert [x.discontinuity for x in pl.segments] == [False, False, True]


def test_discontinuity_sequence_counts_evicted_discontinuities() -> None:
    s = stream(window=3)
    s.add_segment(seg("360p", 0))
    s.begin_generation()
    for i in range(5):
        s.add_segment(seg("360p", i))
    pl = m3u8.loads(s.renditions["360p"].playlist.decode())
    assert pl.discontinuity_sequence == 1


def test_skipped_slots_become_gaps() -> None:
    s = stream(window=6)
    for i in range(4):
        s.add_segment(seg("180p", i))
    s.add_segment(seg("360p", 0))
    s.add_segment(seg("360p", 3))
    text = s.renditions["360p"].playlist.decode()
    assert text.count("#EXT-X-GAP") == 2
    assert "1.ts" in text and "3.ts" in text


def test_end_writes_endlist_and_oversize_segments_are_dropped() -> None:
    s = LiveStream(StreamKey("live", "t"), HlsConfig(max_segment_bytes=65536, **TS), now=0.0)
    s.begin_generation()
    s.set_renditions(INFO)
    s.add_segment(seg("360p", 0, size=70_000))
    assert s.dropped_segments == 1 and not s.renditions["360p"].segments
    s.add_segment(seg("360p", 1))
    s.end(now=10.0)
    assert m3u8.loads(s.renditions["360p"].playlist.decode()).is_endlist


def test_master_playlist_lists_every_rendition_with_attributes() -> None:
    s = stream()
    s.add_segment(seg("360p", 0))
    master = m3u8.loads(s.master.decode())
    assert [p.stream_info.resolution for p in master.playlists] == [(640, 360), (320, 180)]
    for p in master.playlists:
        assert p.stream_info.codecs.endswith("mp4a.40.2")
        assert p.stream_info.frame_rate == 30.0
        assert p.stream_info.average_bandwidth < p.stream_info.bandwidth


def test_a_flood_of_out_of_order_segments_logs_a_few_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = stream()
    s.add_segment(seg("360p", 5))
    with caplog.at_level(logging.WARNING, logger="distribute.hls.stream"):
        for _ in range(1000):
            s.add_segment(seg("360p", 1))
    lines = [r for r in caplog.records if "out of order" in r.getMessage()]
    assert 1 <= len(lines) <= 3


def test_describe_gives_the_age_of_the_live_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    s = stream()
    assert s.describe(1000.0)["edge_age"] is None  # nothing listed yet
    # The first segment's end is anchored at the wall clock it arrived at.
    monkeypatch.setattr("distribute.hls.stream.time.time", lambda: 1000.0)
    s.add_segment(seg("360p", 0))
    assert s.describe(1003.5)["edge_age"] == 3.5
    s.add_segment(seg("360p", 1))  # ends at 1002 on the program clock
    assert s.describe(1003.5)["edge_age"] == 1.5
    # Media ahead of the anchored clock (a publisher's burst) is not younger than new.
    assert s.describe(1001.0)["edge_age"] == 0.0
