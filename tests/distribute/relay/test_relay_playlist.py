"""The relay's playlist reader against what the store writes (Hypothesis) and bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from servehelp import INFO

from distribute.config import HlsConfig
from distribute.hls.render import render_master
from distribute.hls.stream import LiveStream
from distribute.relay.playlist import parse_master, parse_media
from media import StreamKey
from media.segments import InitFrame, PartFrame, SegmentFrame


def _stream(low_latency: bool, fmp4: bool) -> LiveStream:
    cfg = HlsConfig(
        segment_format="fmp4" if fmp4 else "ts",
        low_latency=low_latency,
        part_duration=0.25,
        segment_duration=1.0,
        window=4,
    )
    s = LiveStream(StreamKey("live", "x"), cfg, now=0.0, first_msn=100)
    s.begin_generation()
    s.set_renditions(INFO)
    return s


@settings(max_examples=60, deadline=None)
@given(
    runs=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=6), min_size=1, max_size=3),
    trailing=st.integers(0, 4),
    low_latency=st.booleans(),
    ended=st.booleans(),
)
def test_reads_back_every_segment_and_part_the_store_lists(
    runs: list[list[int]], trailing: int, low_latency: bool, ended: bool
) -> None:
    """Worker runs (each a list of segments, each some parts), restarts between them."""
    s = _stream(low_latency, True)
    t = 0.0
    for n, run in enumerate(runs):
        if n:
            s.begin_generation()
        s.add_init(InitFrame("360p", "avc1.64001e", b"init%d" % n))
        for index, parts in enumerate(run):
            for p in range(parts if low_latency else 0):
                data = b"p%d.%d.%d" % (n, index, p)
                s.add_part(PartFrame("360p", index, p, t + p * 0.2, 0.2, p == 0, data))
            seg = b"".join(b"p%d.%d.%d" % (n, index, p) for p in range(parts))
            s.add_segment(SegmentFrame("360p", index, t, parts * 0.2, "avc1.64001e", seg))
            t += parts * 0.2
        if low_latency and n == len(runs) - 1:
            for p in range(trailing):
                s.add_part(PartFrame("360p", len(run), p, t, 0.2, p == 0, b"t%d" % p))
    if ended:
        s.end(1.0)
    track = s.renditions["360p"]
    pl = parse_media(track.playlist.decode())
    window = list(track.segments)[-s.config.window :]
    assert [seg.msn for seg in pl.segments] == [seg.msn for seg in window]
    assert [seg.uri for seg in pl.segments] == [seg.uri for seg in window]
    assert [round(x.duration, 4) for x in pl.segments] == [round(x.duration, 4) for x in window]
    assert [x.discontinuity for x in pl.segments] == [x.discontinuity for x in window]
    assert [x.map_uri for x in pl.segments] == [f"init-{x.init_id}.mp4" for x in window]
    assert pl.ended == ended
    assert pl.low_latency == low_latency
    for got, seg in zip(pl.segments, window, strict=True):
        listed = [p.uri for p in got.parts]
        assert not listed or listed == [p.uri for p in seg.parts or ()]
    if low_latency and not ended:
        # An ended playlist lists no parts past its last segment.
        assert [p.uri for p in pl.trailing] == [p.uri for p in track.building]
        assert pl.preload_hint is not None
        hinted = f"{pl.preload_hint[0]}.{pl.preload_hint[1]}.m4s"
        assert f'PRELOAD-HINT:TYPE=PART,URI="{hinted}"' in track.playlist.decode()


def test_reads_the_master_playlist_the_store_writes() -> None:
    s = _stream(True, True)
    s.add_init(InitFrame("360p", "avc1.64001e", b"i"))
    master = parse_master(s.master.decode())
    assert [v.name for v in master.variants] == ["360p", "180p"]
    v = master.variants[0]
    assert (v.width, v.height, v.fps) == (640, 360, 30.0)
    assert v.codecs == "avc1.64001e,mp4a.40.2" and master.audio and master.fmp4
    assert not master.independent  # LL-HLS
    ts = parse_master(
        render_master(s.renditions.values(), audio=False, fmp4=False, low_latency=False).decode()
    )
    assert not ts.fmp4 and ts.independent


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "does not start with #EXTM3U"),
        ("#EXTM3U\n#EXTINF:x,\n1.ts\n", "line 2: 'x' is not a number"),
        ("#EXTM3U\n2.ts\n", "line 2: segment URI '2.ts' without #EXTINF"),
        ("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:1,\n6.ts\n", "is not 5.m4s or .ts"),
        ('#EXTM3U\n#EXT-X-PART:DURATION=0.2,URI="3.1.m4s"\n', "is not 0.0.m4s"),
        ("#EXTM3U\n#EXT-X-SKIP:SKIPPED-SEGMENTS=2\n", "delta playlists"),
        ("#EXTM3U\n#EXT-X-MAP:BYTERANGE=3\n", "EXT-X-MAP without URI"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:-1\n", "out of range"),
    ],
)
def test_bad_media_playlists_are_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_media(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("#EXTM3U\nfoo/index.m3u8\n", "without #EXT-X-STREAM-INF"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n../x.m3u8\n", "is not NAME/index.m3u8"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=big\na/index.m3u8\n", "'big' is not an integer"),
    ],
)
def test_bad_master_playlists_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        parse_master(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    for parse in (parse_media, parse_master):
        try:
            parse("#EXTM3U\n" + text)
        except ValueError:
            pass
