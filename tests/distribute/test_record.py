"""Recording to disk: atomic writes, recovery after a crash, discontinuities, quota."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import av
import m3u8
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from bench.cmaf import cmaf
from containers.mp4box import decode_span, parse_init
from distribute.config import RecordConfig
from distribute.hls.playlist import VariantRef
from distribute.record import (
    Recorder,
    RecordError,
    Recording,
    RecordMetrics,
    RecordQuotaExceeded,
    _Entry,
    _parse_playlist,
    _Rendition,
    selected,
)

CMAF = cmaf()
VARIANT = VariantRef("360p/index.m3u8", 900_000, 800_000, 640, 360, 30.0, "avc1.64001e,mp4a.40.2")


def recorder(tmp_path: Path, quota: int = 1 << 30) -> Recorder:
    rec = Recorder(
        RecordConfig(dir=str(tmp_path / "rec"), tenants={"live": "all"}, quota_bytes=quota),
        RecordMetrics(CollectorRegistry()),
    )
    rec.recover()
    return rec


def record_segments(rec: Recorder, n: int, start: int = 0) -> None:
    r = rec.get("live", "class")
    r.write_init("360p", CMAF.init)
    for i in range(start, start + n):
        frags = CMAF.segments[i % len(CMAF.segments)]
        r.write_segment("360p", b"".join(f.data for f in frags), 2.0, True, VARIANT)


def video_samples(path: Path) -> int:
    """Frames FFmpeg decodes from this one segment, on its own after the init segment."""
    with av.open(io.BytesIO(CMAF.init + path.read_bytes())) as c:
        return sum(1 for _ in c.decode(video=0))


def follows_on(before: Path, after: Path) -> bool:
    """``after`` starts where ``before`` ends (its earliest track, within a tick), and no
    track of it starts before that track's end in ``before`` (A/V offsets are kept)."""
    scale = {t.track_id: t.timescale for t in parse_init(CMAF.init)}
    ends = decode_span(before.read_bytes())
    firsts = decode_span(after.read_bytes())
    end_s = max(end / scale[t] for t, (_, end) in ends.items())
    start_s = min(first / scale[t] for t, (first, _) in firsts.items())
    no_overlap = all(first >= ends[t][1] for t, (first, _) in firsts.items())
    return abs(start_s - end_s) < 1e-4 and no_overlap


def test_vod_playlists_and_ffmpeg_reads_them(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    record_segments(rec, 3)
    rec.get("live", "class").finish()
    base = tmp_path / "rec" / "live" / "class"
    pl = m3u8.load(str(base / "360p" / "index.m3u8"))
    assert pl.is_endlist and pl.playlist_type == "vod" and len(pl.segments) == 3
    assert pl.segment_map[0].uri == "init-1.mp4"
    master = m3u8.load(str(base / "index.m3u8"))
    assert [p.uri for p in master.playlists] == ["360p/index.m3u8"]
    with av.open(str(base / "index.m3u8")) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert frames >= 170
    assert not list(base.rglob(".*.tmp"))


def test_recovery_lists_orphan_segments_and_closes_the_playlist(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    record_segments(rec, 2)
    d = tmp_path / "rec" / "live" / "class" / "360p"
    # A crash after the third segment was renamed into place, before the playlist
    # was rewritten; and one mid-write (its temporary file).
    frags = CMAF.segments[2]
    (d / "000002-2000.m4s").write_bytes(b"".join(f.data for f in frags))
    (d / ".000003-2000.m4s.tmp").write_bytes(b"partial")
    assert len(m3u8.load(str(d / "index.m3u8")).segments) == 2
    again = recorder(tmp_path)  # the node restarts
    pl = m3u8.load(str(d / "index.m3u8"))
    assert pl.is_endlist and [s.uri for s in pl.segments][-1] == "000002-2000.m4s"
    assert not (d / ".000003-2000.m4s.tmp").exists()
    # The publisher comes back: the same recording continues after a discontinuity.
    again.get("live", "class").begin()
    record_segments(again, 1, start=0)
    pl = m3u8.load(str(d / "index.m3u8"))
    assert not pl.is_endlist and pl.playlist_type == "event"
    assert [s.discontinuity for s in pl.segments] == [False, False, False, True]
    assert pl.segments[-1].uri == "000003-2000.m4s"
    # The publisher's timestamps started over; the recording's timeline did not.
    assert follows_on(d / "000002-2000.m4s", d / "000003-2000.m4s")
    again.get("live", "class").finish()
    with av.open(str(d / "index.m3u8")) as c:
        pts = [f.pts for f in c.decode(video=0)]
    files = [s.uri for s in m3u8.load(str(d / "index.m3u8")).segments]
    assert len(pts) == sum(video_samples(d / f) for f in files)  # every frame
    assert pts == sorted(pts)  # in order


def test_each_publish_follows_on_within_one_run_of_the_node(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    for _publish in range(3):
        rec.get("live", "class").begin()
        record_segments(rec, 2)
    rec.get("live", "class").finish()
    d = tmp_path / "rec" / "live" / "class" / "360p"
    files = [s.uri for s in m3u8.load(str(d / "index.m3u8")).segments]
    for i in (2, 4):  # where the second and third publishes start
        assert follows_on(d / files[i - 1], d / files[i]), files[i]
    with av.open(str(d / "index.m3u8")) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert len(pts) == sum(video_samples(d / f) for f in files) and pts == sorted(pts)


def test_a_segment_that_is_not_fmp4_is_refused_and_the_recording_goes_on(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    record_segments(rec, 1)
    r = rec.get("live", "class")
    with pytest.raises(RecordError, match="bad fMP4 segment"):
        r.write_segment("360p", b"\x00\x00\x00\x08junk", 2.0, True, VARIANT)
    record_segments(rec, 1, start=1)
    d = tmp_path / "rec" / "live" / "class" / "360p"
    assert [s.uri for s in m3u8.load(str(d / "index.m3u8")).segments] == [
        "000000-2000.m4s",
        "000001-2000.m4s",
    ]


def test_quota_raises_and_counts_never_overwrites(tmp_path: Path) -> None:
    rec = recorder(tmp_path, quota=1024 * 1024)
    big = b"x" * (600 * 1024)
    r = rec.get("live", "class")
    r.write_segment("360p", big, 2.0, False, VARIANT)
    with pytest.raises(RecordQuotaExceeded, match=r"record\.quota_bytes"):
        r.write_segment("360p", big, 2.0, False, VARIANT)
    assert rec.metrics.quota_exceeded.labels("live")._value.get() == 1
    d = tmp_path / "rec" / "live" / "class" / "360p"
    assert [p.name for p in sorted(d.glob("*.ts"))] == ["000000-2000.ts"]
    assert (d / "000000-2000.ts").read_bytes() == big
    # Through the writer thread: logged and counted, the caller is not disturbed.
    rec.segment("live", "class", "360p", big, 2.0, False, VARIANT)
    rec.flush()
    assert rec.metrics.quota_exceeded.labels("live")._value.get() == 2


def test_read_serves_files_and_refuses_traversal(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    record_segments(rec, 1)

    async def go() -> None:
        pl = await rec.read("live", "class", None, "index.m3u8")
        assert pl is not None and pl[1] == b"application/vnd.apple.mpegurl"
        init = await rec.read("live", "class", "360p", "init-1.mp4")
        assert init is not None and init[0] == CMAF.init
        assert await rec.read("..", "class", "360p", "init-1.mp4") is None
        assert await rec.read("live", "..", None, "index.m3u8") is None
        assert await rec.read("live", "class", "360p", "nope.m4s") is None

    asyncio.run(go())


def test_source_mode_selects_one_rendition() -> None:
    sizes = {"720p": 1280 * 720, "360p": 640 * 360}
    assert selected("source", "720p", sizes) and not selected("source", "360p", sizes)
    assert selected("source", "source", {**sizes, "source": 1})
    assert selected("all", "360p", sizes) and not selected(None, "360p", sizes)


@given(
    st.lists(
        st.tuples(
            st.integers(1, 30000),  # duration in ms
            st.booleans(),  # discontinuity
            st.sampled_from([None, "init-1.mp4", "init-2.mp4"]),
        ),
        max_size=30,
    ),
    st.booleans(),
)
def test_vod_playlist_round_trips(rows: list[tuple[int, bool, str | None]], ended: bool) -> None:
    """What recovery reads back from a VOD playlist is what was written."""
    r = _Rendition(Path("."))
    r.entries = [
        _Entry(f"{i:06d}-{ms}.m4s", ms / 1000, disc, uri) for i, (ms, disc, uri) in enumerate(rows)
    ]
    rec = Recording.__new__(Recording)
    text = rec._playlist(r, ended=ended).decode()
    back = _parse_playlist(text)
    assert [(e.file, e.discontinuity) for e in back] == [
        (e.file, e.discontinuity) for e in r.entries
    ]
    assert [e.duration for e in back] == pytest.approx([e.duration for e in r.entries], abs=1e-5)
    # EXT-X-MAP is written only when it changes; the map in effect is carried over.
    current = None
    for written, read in zip(r.entries, back, strict=True):
        current = written.map_uri or current
        assert read.map_uri == current
    assert m3u8.loads(text).is_endlist == ended
