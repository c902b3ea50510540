"""bench.live_edge: the one measure both sides of bench.capacity get."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np
import pytest

from bench.live_edge import EdgeWatch, RungWatch, segment_stamps
from media.clock import stamp_yuv420p

BASE_MS = 1_800_000_000_000


def ts_segment(frames: int, stamp_of: list[int] | None = None, pts0: int = 0) -> bytes:
    """An MPEG-TS segment of 320x180 frames at 30 fps, frame i stamped ``stamp_of[i]``
    (default: BASE_MS + its presentation time in ms), with B-frames as x264 makes them."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 320, 180, "yuv420p"
        s.options = {"preset": "veryfast", "x264-params": "keyint=60:scenecut=0:bframes=3"}
        for i in range(frames):
            planes = np.full((270, 320), 100, np.uint8)
            pts = pts0 + i
            ms = stamp_of[i] if stamp_of else BASE_MS + round(pts * 1000 / 30)
            stamp_yuv420p(planes, ms)
            f = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            f.pts, f.time_base = pts, Fraction(1, 30)
            out.mux(s.encode(f))
        out.mux(s.encode())
    return buf.getvalue()


def test_segment_stamps_reads_the_last_frame_held_in_the_decoder() -> None:
    """The last frame in presentation order comes out of the decoder only when it is
    flushed (B-frames): its stamp is the one read, not an earlier frame's."""
    stamps = [BASE_MS + 7 * i for i in range(20)]
    got = segment_stamps(ts_segment(20, stamps))
    assert got.last_ms == stamps[-1]
    # Stamps 7 ms apart on frames 33 ms apart: stamp minus pts is smallest on the last frame.
    assert got.offset_ms == pytest.approx(stamps[-1] - got.last_pts * 1000)


def test_segment_stamps_refuses_a_segment_without_stamps() -> None:
    with pytest.raises(ValueError, match="undecodable|no video|readable clock stamp"):
        segment_stamps(b"\x47" + b"\x00" * 187)


def playlist(sequence: int, count: int) -> str:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", f"#EXT-X-MEDIA-SEQUENCE:{sequence}"]
    for msn in range(sequence, sequence + count):
        lines += ["#EXTINF:2.000,", f"seg{msn}.ts"]
    return "\n".join(lines) + "\n"


def test_rung_watch_counts_from_media_sequence_numbers_and_dates_first_listing() -> None:
    w = RungWatch("360p")
    assert w.update(playlist(0, 1), 10.0) == [w.first] and w.next_msn == 1
    # Polled again before anything new: nothing new, times unchanged.
    assert w.update(playlist(0, 1), 10.2) == []
    # The window slid past segments listed between polls: counted all the same.
    new = w.update(playlist(4, 6), 30.0)
    assert [s.msn for s in new] == list(range(4, 10)) and {s.at for s in new} == {30.0}
    assert w.first is not None and (w.first.msn, w.first.at) == (0, 10.0)
    assert w.newest is not None
    assert (w.newest.msn, w.newest.uri, w.newest.at) == (9, "seg9.ts", 30.0)
    assert w.next_msn == 10
    with pytest.raises(ValueError):
        w.update("not a playlist", 31.0)


class FakeOutput:
    """A rung whose playlist lists one more of ``segments`` at each poll."""

    def __init__(self, segments: list[bytes]) -> None:
        self.started = time.time()
        self.rungs: Sequence[str] = ["360p"]
        self.segments = segments
        self.polls = 0

    def playlist(self, rung: str) -> str | None:
        self.polls += 1
        return playlist(0, min(len(self.segments), self.polls))

    def segment(self, rung: str, uri: str) -> bytes | None:
        return self.segments[int(uri[3:-3])]

    def delivered(self) -> set[str]:
        return set(self.rungs)


def test_edge_watch_lag_counts_and_startup_with_a_publisher_held_back() -> None:
    """Segment 0 is on schedule; the last one's frames were stamped 300 ms late (the
    publisher held back): the lag is measured against when they should have been captured."""
    # One stream's segments: timestamps carry on (none near zero, where a muxer would shift them).
    first = ts_segment(10, pts0=300)
    late = ts_segment(10, [BASE_MS + 300 + round((330 + i) * 1000 / 30) for i in range(10)], 330)
    out = FakeOutput([first, first, first, late])
    watch = EdgeWatch([out], poll=0.01)
    watch.run(seconds=0.3, startup_timeout=5)
    [rungs] = watch.results(segment_duration=2.0)
    r = rungs["360p"]
    rung = watch.streams[0].rungs["360p"]
    assert rung.first is not None and rung.newest is not None
    assert rung.newest.msn == 3 and rung.first.msn == 0
    assert r.segments == 3  # the first one was listed before the window
    assert r.expected == pytest.approx(watch.window / 2.0)
    assert r.held_back == pytest.approx(0.3, abs=0.002)
    last_ms = BASE_MS + 300 + round(339 * 1000 / 30)
    assert r.lag == pytest.approx(rung.newest.at - last_ms / 1000 + 0.3, abs=0.002)
    assert r.startup == pytest.approx(rung.first.at - out.started)
    assert r.startup is not None and r.startup > 0 and not r.error
