"""LL-HLS playlists from the store, checked with the independent ``m3u8`` parser."""

from __future__ import annotations

import m3u8
import pytest
from hypothesis import given
from hypothesis import strategies as st
from servehelp import INFO

from distribute.config import HlsConfig
from distribute.hls.playlist import part_duration
from distribute.hls.store import Store, first_sequence
from distribute.hls.stream import LiveStream
from media import StreamKey
from media.segments import InitFrame, PartFrame, SegmentFrame

PARTS = 6  # 2 s segments of 1/3 s parts
PART_DUR = 2.0 / PARTS


def ll_stream(window: int = 6, **kw: object) -> LiveStream:
    """An LL-HLS stream whose runs start with a 3-part lead (hls.lead_parts), unless
    ``kw`` says otherwise."""
    kw.setdefault("lead_parts", 3)
    cfg = HlsConfig(
        window=window, segment_format="fmp4", low_latency=True, part_duration=0.334, **kw
    )
    s = LiveStream(StreamKey("live", "ll"), cfg, now=0.0)
    s.begin_generation()
    s.set_renditions(INFO)
    for name in ("360p", "180p"):
        s.add_init(InitFrame(name, "avc1.64001e,mp4a.40.2", b"ftypmoov-" + name.encode()))
    return s


def feed_part(s: LiveStream, name: str, index: int, part: int) -> None:
    data = f"{name}:{index}.{part};".encode() * 10
    s.add_part(
        PartFrame(name, index, part, index * 2.0 + part * PART_DUR, PART_DUR, part % 3 == 0, data)
    )


def feed_segment(s: LiveStream, name: str, index: int) -> None:
    for p in range(PARTS):
        feed_part(s, name, index, p)
    data = b"".join(f"{name}:{index}.{p};".encode() * 10 for p in range(PARTS))
    s.add_segment(SegmentFrame(name, index, index * 2.0, 2.0, "avc1.64001e,mp4a.40.2", data))


def parse(s: LiveStream, name: str = "360p", skip: bool = False) -> m3u8.M3U8:
    track = s.renditions[name]
    return m3u8.loads((track.playlist_skip if skip else track.playlist).decode())


def check_rules(pl: m3u8.M3U8) -> None:
    """The LL-HLS rules of RFC 8216bis §4.4.3.7-4.4.4.9 that a player relies on."""
    target = pl.part_inf.part_target
    sc = pl.server_control
    assert sc.can_block_reload == "YES"
    assert sc.part_hold_back >= 3 * target
    assert sc.can_skip_until >= 6 * pl.target_duration
    for seg in pl.segments:
        for p in seg.parts:
            assert p.duration <= target
        if seg.uri:  # m3u8 puts trailing parts in a segment without a URI
            assert round(seg.duration) <= pl.target_duration
    # The preload hint names the part after the last one listed.
    complete = [seg for seg in pl.segments if seg.uri]
    last = pl.segments[-1] if pl.segments else None
    if pl.preload_hint is not None:
        if last is not None and not last.uri:
            msn, part = map(int, last.parts[-1].uri[:-4].split("."))
            filled = sum(p.duration for p in last.parts) > 2.0 - 0.5 / 30
            assert pl.preload_hint.uri == (
                f"{msn + 1}.0.m4s" if filled else f"{msn}.{part + 1}.m4s"
            )
        else:
            nxt = int(complete[-1].uri[:-4]) + 1 if complete else pl.media_sequence
            assert pl.preload_hint.uri == f"{nxt}.0.m4s"


def test_playlist_starts_from_parts_before_the_first_segment_is_complete() -> None:
    s = ll_stream()
    feed_part(s, "360p", 0, 0)
    feed_part(s, "360p", 0, 1)
    text = s.renditions["360p"].playlist.decode()
    pl = m3u8.loads(text)
    assert not [seg for seg in pl.segments if seg.uri]  # no complete segment yet
    assert '#EXT-X-MAP:URI="init-1.mp4"' in text
    # Ten frames at 30 fps, rounded up (part_duration).
    assert '#EXT-X-PART:DURATION=0.33334,URI="0.0.m4s",INDEPENDENT=YES' in text
    assert pl.preload_hint.uri == "0.2.m4s" and pl.preload_hint.hint_type == "PART"
    assert "#EXT-X-PROGRAM-DATE-TIME:" in text
    check_rules(pl)


def test_part_durations_are_rounded_up_so_players_sum_ahead_of_the_media() -> None:
    """Seven frames at 30 fps is 0.233333 s: written 0.23334, so Shaka Player's sum of
    part durations runs ahead of the tfdt and never reaches its 1 ms abort() threshold
    (shaka-player#10589); a duration with an exact decimal is written as it is."""
    assert part_duration(7 * 3000 / 90000) == "0.23334"
    assert part_duration(0.25) == "0.25000" and part_duration(0.24) == "0.24000"
    assert part_duration(6 / 25) == "0.24000" and part_duration(1.0) == "1.00000"


@given(
    st.floats(min_value=0.001, max_value=5.0, allow_nan=False),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)
def test_a_part_written_never_exceeds_its_target_written(target: float, share: float) -> None:
    """§4.4.4.9: every part's DURATION is at most the PART-TARGET, both as written."""
    duration = target * share
    written = float(part_duration(duration))
    assert written <= float(part_duration(target))
    assert duration - 1e-9 <= written < duration + 1e-5


def test_the_hint_names_the_next_segment_once_the_parts_fill_this_one() -> None:
    """A hint of a part that never comes is a 404 a player may take as fatal (Shaka
    does): once the parts of the segment being built fill its length, the hint names the
    next segment's first part, before the segment itself is complete."""
    s = ll_stream()
    feed_segment(s, "360p", 0)
    for p in range(PARTS - 1):
        feed_part(s, "360p", 1, p)
        pl = parse(s)
        assert pl.preload_hint.uri == f"2.{p + 1}.m4s"
        check_rules(pl)
    feed_part(s, "360p", 1, PARTS - 1)
    pl = parse(s)
    assert not pl.segments[-1].uri and pl.segments[-1].parts[-1].uri == f"2.{PARTS - 1}.m4s"
    assert pl.preload_hint.uri == "3.0.m4s"
    check_rules(pl)


def test_parts_segments_hint_and_rendition_reports() -> None:
    s = ll_stream()
    for i in range(3):
        feed_segment(s, "360p", i)
        feed_segment(s, "180p", i)
    feed_part(s, "360p", 3, 0)
    feed_part(s, "360p", 3, 1)
    pl = parse(s)
    check_rules(pl)
    # Worker segment 0 is listed as a 3-part lead (MSN 0) and the rest (MSN 1).
    assert [seg.uri for seg in pl.segments if seg.uri] == ["0.m4s", "1.m4s", "2.m4s", "3.m4s"]
    assert [seg.duration for seg in pl.segments if seg.uri] == pytest.approx([1.0, 1.0, 2.0, 2.0])
    assert pl.segment_map[0].uri == "init-1.mp4"
    # Parts listed for the last two complete segments and the one being built only.
    assert not pl.segments[0].parts and not pl.segments[1].parts
    assert [p.uri for p in pl.segments[2].parts] == [f"2.{p}.m4s" for p in range(PARTS)]
    assert pl.preload_hint.uri == "4.2.m4s"
    assert pl.version >= 9
    # The 180p rendition has finished MSN 3 (all 6 parts), 360p is in part 1 of MSN 4.
    reports = {r.uri: (r.last_msn, r.last_part) for r in pl.rendition_reports}
    assert reports == {"../180p/index.m3u8": (3, PARTS - 1)}
    reports = {r.uri: (r.last_msn, r.last_part) for r in parse(s, "180p").rendition_reports}
    assert reports == {"../360p/index.m3u8": (4, 1)}
    assert parse(s, "180p").preload_hint.uri == "4.0.m4s"


def test_first_segment_lead_lets_players_start_after_three_parts() -> None:
    """hls.js needs one EXTINF: the run's first segment is listed once 3 parts exist."""
    s = ll_stream()
    for p in range(3):
        feed_part(s, "360p", 0, p)
    pl = parse(s)
    assert [seg.uri for seg in pl.segments if seg.uri] == ["0.m4s"]
    assert pl.segments[0].duration == pytest.approx(1.0) and pl.segments[0].parts[0].independent
    assert pl.preload_hint.uri == "1.0.m4s"
    feed_segment(
        s, "360p", 0
    )  # the worker's whole first segment: the lead's bytes are not repeated
    t = s.renditions["360p"]
    assert t.by_msn[0].data + t.by_msn[1].data == b"".join(
        f"360p:0.{p};".encode() * 10 for p in range(PARTS)
    )
    assert [p.uri for p in t.by_msn[1].parts] == ["1.0.m4s", "1.1.m4s", "1.2.m4s"]
    assert "#EXT-X-INDEPENDENT-SEGMENTS" not in s.master.decode()
    check_rules(parse(s))


def test_by_default_a_run_starts_with_a_whole_segment_so_shaka_keeps_its_live_edge() -> None:
    """hls.lead_parts is 0 by default: no segment shorter than the ones after it, whose
    growth would move Shaka Player's live edge back behind the parts it has fetched."""
    assert HlsConfig().lead_parts == 0
    s = ll_stream(lead_parts=0)
    for p in range(3):
        feed_part(s, "360p", 0, p)
    pl = parse(s)
    assert not [seg for seg in pl.segments if seg.uri]  # three parts are not a segment
    assert [p.uri for p in pl.segments[-1].parts] == ["0.0.m4s", "0.1.m4s", "0.2.m4s"]
    assert pl.preload_hint.uri == "0.3.m4s"
    for i in range(3):
        feed_segment(s, "360p", i)
    pl = parse(s)
    check_rules(pl)
    assert [seg.uri for seg in pl.segments if seg.uri] == ["0.m4s", "1.m4s", "2.m4s"]
    assert [seg.duration for seg in pl.segments if seg.uri] == pytest.approx([2.0, 2.0, 2.0])


def test_delta_update_skips_old_segments() -> None:
    s = ll_stream(window=12)
    for i in range(12):
        feed_segment(s, "360p", i)
    full = parse(s)
    delta = parse(s, skip=True)
    assert full.server_control.can_skip_until == 12.0
    # Segments older than 12 s from the end are replaced by EXT-X-SKIP.
    assert delta.skip.skipped_segments == 6
    assert delta.media_sequence == full.media_sequence
    assert [x.uri for x in delta.segments if x.uri] == [x.uri for x in full.segments if x.uri][6:]


def test_memory_is_bounded_per_rendition() -> None:
    s = ll_stream(window=3)
    for i in range(40):
        feed_segment(s, "360p", i)
    t = s.renditions["360p"]
    assert len(t.segments) == 6 and len(t.by_msn) == 6
    assert {k[0] for k in t.parts} <= {38, 39, 40}
    assert sum(1 for seg in t.segments if seg.parts) <= 3
    assert list(t.inits) == [1]


def test_parts_stay_bounded_when_every_segment_is_too_large() -> None:
    """Segments over hls.max_segment_bytes are dropped; their parts must not pile up."""
    s = ll_stream(window=3, max_segment_bytes=65536)
    big = b"x" * 20_000  # six parts make a 120 kB segment
    for i in range(60):
        for p in range(PARTS):
            s.add_part(PartFrame("360p", i, p, i * 2.0 + p * PART_DUR, PART_DUR, p == 0, big))
        stored = s.add_segment(SegmentFrame("360p", i, i * 2.0, 2.0, "avc1", big * PARTS))
        assert stored is None
    t = s.renditions["360p"]
    assert s.dropped_segments == 60 and len(t.segments) <= 1  # at most the 3-part lead
    assert len({k[0] for k in t.parts}) <= 4, sorted({k[0] for k in t.parts})
    assert sum(len(p.data) for p in t.parts.values()) <= 4 * PARTS * len(big)
    # A part larger than a whole segment may be is refused outright.
    assert s.add_part(PartFrame("360p", 60, 0, 120.0, PART_DUR, True, b"y" * 70_000)) is None


def test_a_reused_stream_name_never_reuses_a_segment_url() -> None:
    """Segments are served immutable: a stream opened again (publisher back after the
    grace period, or a node restarted) numbers its segments and inits past every URL
    an earlier stream of the same name served."""
    cfg = HlsConfig(segment_format="fmp4", low_latency=True, part_duration=0.334, lead_parts=3)
    t0 = 1_790_000_000.0
    first = Store(cfg).open(StreamKey("live", "class"), now=t0)
    assert 0 < first_sequence(t0) == first._next_msn < 2**31  # half seconds since 2024
    store = Store(cfg)
    uris: list[set[str]] = []
    for n, now in enumerate((t0, t0 + 3600.0)):
        s = store.open(StreamKey("live", "class"), now=now)
        s.begin_generation()
        s.set_renditions(INFO)
        s.add_init(InitFrame("360p", "avc1.64001e,mp4a.40.2", b"ftypmoov"))
        segments = 1800 if n == 0 else 3  # an hour of 2 s segments, then a new class
        for i in range(segments):
            for p in range(PARTS):
                s.add_part(PartFrame("360p", i, p, i * 2.0 + p * PART_DUR, PART_DUR, p == 0, b"p"))
            s.add_segment(SegmentFrame("360p", i, i * 2.0, 2.0, "avc1", b"p" * PARTS))
        t = s.renditions["360p"]
        text = t.playlist.decode()
        uris.append({x.uri for x in t.segments} | {f"init-{i}.mp4" for i in t.inits})
        assert all(f'URI="init-{i}.mp4"' in text or i not in t.inits for i in t.inits)
        s.publisher_connected = False
        s.ended, s.ended_at = True, now + 1
        # After a restart the node's store is empty: the clock alone keeps numbers apart.
        restarted = Store(cfg).open(StreamKey("live", "class"), now=now + 3601.0)
        assert restarted._next_msn > max(x.msn for x in t.segments)
    assert not uris[0] & uris[1]


def test_restart_discontinuity_and_new_init() -> None:
    s = ll_stream()
    feed_segment(s, "360p", 0)  # MSN 0 (lead) and 1
    feed_part(s, "360p", 1, 0)  # a part of a segment the dying worker never finished
    s.begin_generation()
    s.add_init(InitFrame("360p", "avc1.64001e,mp4a.40.2", b"ftypmoov-restarted"))
    feed_segment(s, "360p", 0)  # the new run: MSN 3 (lead) and 4
    text = s.renditions["360p"].playlist.decode()
    pl = m3u8.loads(text)
    # MSN 2, whose part 2.0 was served, is never reused for the new run's media: it ends
    # where the old run did, as the segment of that one part, and the new run follows it.
    assert [x.uri for x in pl.segments if x.uri] == ["0.m4s", "1.m4s", "2.m4s", "3.m4s", "4.m4s"]
    assert [x.discontinuity for x in pl.segments if x.uri] == [False, False, False, True, False]
    assert not any(x.gap_tag for x in pl.segments)
    assert pl.segments[2].duration == pytest.approx(PART_DUR, abs=1e-5)
    track = s.renditions["360p"]
    served = track.part_data(2, 0)
    assert served is not None and track.by_msn[2].data == served[0] == b"360p:1.0;" * 10
    assert text.count("#EXT-X-MAP") == 2
    new_init = text.rsplit("#EXT-X-MAP:", 1)[1]
    assert "3.0.m4s" in text and text.index("#EXT-X-DISCONTINUITY") < text.index(new_init)
    # Segment 2 (old init) is listed before the new init: the part a player has is valid.
    assert text.index("2.m4s") < text.index(new_init)
    check_rules(pl)


def test_restart_lists_a_gap_as_long_as_the_unfinished_segment_where_a_rung_has_none() -> None:
    """180p had no part of the segment the old run left unfinished in 360p: it lists a
    gap of the same length, so both renditions keep one timeline across the switch."""
    s = ll_stream()
    for name in ("360p", "180p"):
        feed_segment(s, name, 0)
    feed_part(s, "360p", 1, 0)
    feed_part(s, "360p", 1, 1)
    s.begin_generation()
    for name in ("360p", "180p"):
        s.add_init(InitFrame(name, "avc1.64001e,mp4a.40.2", b"ftypmoov-again-" + name.encode()))
        feed_segment(s, name, 0)
    full, low = parse(s, "360p"), parse(s, "180p")
    assert [x.uri for x in full.segments] == [x.uri for x in low.segments]
    assert [bool(x.gap_tag) for x in low.segments] == [False, False, True, False, False]
    two_parts = pytest.approx(2 * PART_DUR, abs=1e-5)
    assert low.segments[2].duration == full.segments[2].duration == two_parts
    for pl in (full, low):
        check_rules(pl)


def test_part_longer_than_target_raises_part_target() -> None:
    s = ll_stream()
    s.add_part(PartFrame("360p", 0, 0, 0.0, 0.4, True, b"x"))
    pl = parse(s)
    assert pl.part_inf.part_target >= 0.4
    check_rules(pl)


def test_ended_stream_has_endlist_and_no_hint() -> None:
    s = ll_stream()
    feed_segment(s, "360p", 0)
    s.end(now=5.0)
    pl = parse(s)
    assert pl.is_endlist and pl.preload_hint is None


def test_reached_follows_parts_and_segments() -> None:
    s = ll_stream()
    t = s.renditions["360p"]
    assert not t.reached(0, 0) and not t.reached(0, None)
    feed_part(s, "360p", 0, 0)
    assert t.reached(0, 0) and not t.reached(0, 1) and not t.reached(0, None)
    feed_segment(s, "360p", 0)
    assert t.reached(0, None) and t.reached(0, 99) and t.reached(1, None) and not t.reached(2, 0)


@pytest.mark.parametrize("fmt", ["ts", "fmp4"])
def test_non_ll_variants(fmt: str) -> None:
    hls = HlsConfig(segment_format=fmt, low_latency=False)
    s = LiveStream(StreamKey("live", "v"), hls, now=0.0)
    s.begin_generation()
    s.set_renditions(INFO)
    if fmt == "fmp4":
        s.add_init(InitFrame("360p", "avc1.64001e,mp4a.40.2", b"init"))
    s.add_segment(SegmentFrame("360p", 0, 0.0, 2.0, "avc1.64001e", b"x" * 100))
    text = s.renditions["360p"].playlist.decode()
    pl = m3u8.loads(text)
    assert "EXT-X-SERVER-CONTROL" not in text and "EXT-X-PART" not in text
    if fmt == "fmp4":
        assert pl.version == 7 and pl.segment_map[0].uri == "init-1.mp4"
        assert pl.segments[0].uri == "0.m4s"
    else:
        assert pl.version == 3 and pl.segments[0].uri == "0.ts"


def test_short_first_segment_is_not_split_twice() -> None:
    """A first segment of only 3 parts (a publisher starting mid-GOP) is the lead itself."""
    s = ll_stream()
    for p in range(3):
        feed_part(s, "360p", 0, p)
    data = b"".join(f"360p:0.{p};".encode() * 10 for p in range(3))
    s.add_segment(SegmentFrame("360p", 0, 0.0, 1.0, "avc1.64001e,mp4a.40.2", data))
    feed_segment(s, "360p", 1)
    pl = parse(s)
    assert [x.uri for x in pl.segments if x.uri] == ["0.m4s", "1.m4s"]
    assert [x.duration for x in pl.segments if x.uri] == pytest.approx([1.0, 2.0])
    check_rules(pl)


def test_no_split_when_segments_are_only_a_few_parts() -> None:
    cfg = HlsConfig(
        segment_format="fmp4",
        low_latency=True,
        segment_duration=1.0,
        part_duration=0.334,
        lead_parts=3,
    )
    s = LiveStream(StreamKey("live", "short"), cfg, now=0.0)
    s.begin_generation()
    s.set_renditions(INFO)
    s.add_init(InitFrame("360p", "avc1.64001e,mp4a.40.2", b"init"))
    for p in range(3):
        s.add_part(PartFrame("360p", 0, p, p / 3, 1 / 3, p == 0, b"x"))
    s.add_segment(SegmentFrame("360p", 0, 0.0, 1.0, "avc1.64001e", b"xxx"))
    assert [x.uri for x in parse(s).segments if x.uri] == ["0.m4s"]
    assert s.renditions["360p"].by_msn[0].data == b"xxx"


def test_every_listed_part_stays_servable_with_one_segment_to_spare() -> None:
    s = ll_stream()
    for i in range(12):
        for p in range(PARTS):
            feed_part(s, "360p", i, p)
            t = s.renditions["360p"]
            pl = parse(s)
            listed = {(x.uri) for seg in pl.segments for x in seg.parts}
            have = {f"{m}.{k}.m4s" for m, k in t.parts}
            assert listed <= have, (i, p, sorted(listed - have))
            if t.last_msn >= 4:  # and the parts of one segment older than those listed
                assert {m for m, _ in t.parts} >= set(range(t.last_msn - 2, t.last_msn + 1))
        data = b"".join(f"360p:{i}.{p};".encode() * 10 for p in range(PARTS))
        s.add_segment(SegmentFrame("360p", i, i * 2.0, 2.0, "avc1.64001e,mp4a.40.2", data))


def test_another_renditions_part_refreshes_only_the_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = ll_stream()
    for name in ("360p", "180p"):
        feed_segment(s, name, 0)
        feed_part(s, name, 1, 0)
    renders: list[str] = []
    real = LiveStream.render

    def counted(self: LiveStream, track, *, skip: bool) -> bytes:  # type: ignore[no-untyped-def]
        renders.append(track.name)
        return real(self, track, skip=skip)

    monkeypatch.setattr(LiveStream, "render", counted)
    before = s.renditions["360p"].playlist
    assert renders == ["360p"]
    feed_part(s, "180p", 1, 1)  # only the 180p playlist changed; 360p's report of it did
    after = parse(s)
    assert renders == ["360p"]  # the 360p body was not rendered again
    reports = {r.uri: (r.last_msn, r.last_part) for r in after.rendition_reports}
    assert reports["../180p/index.m3u8"][1] == 1
    assert after.dumps().count("EXT-X-PART:") == m3u8.loads(before.decode()).dumps().count(
        "EXT-X-PART:"
    )
    check_rules(after)
    # The 360p body follows its own parts, and the stream's end adds ENDLIST after the reports.
    feed_part(s, "360p", 1, 1)
    assert parse(s).preload_hint.uri.endswith(".2.m4s") and renders == ["360p", "360p"]
    s.end(10.0)
    text = s.renditions["360p"].playlist.decode()
    assert text.endswith("#EXT-X-ENDLIST\n") and "RENDITION-REPORT" in text
