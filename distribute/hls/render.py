"""A live stream's playlists, rendered from its rendition tracks.

The media playlist of a rendition (with, on LL-HLS, its parts, preload hint and
delta updates), the tail that ends it (rendition reports of the others and
ENDLIST), and the master playlist. What is listed is decided here; the text is
written by :mod:`distribute.hls.playlist`.
"""

from __future__ import annotations

from collections.abc import Iterable

from distribute.config import HlsConfig
from distribute.hls.playlist import (
    LowLatency,
    PartRef,
    SegmentRef,
    can_skip_until,
    master_playlist,
    media_playlist,
    playlist_tail,
    target_duration,
)
from distribute.hls.track import RenditionTrack

AUDIO_CODEC = "mp4a.40.2"
# Complete segments whose parts a playlist lists. With the segment being built, two
# keep parts within about three target durations of the live edge, as RFC 8216bis
# §4.4.4.9 recommends.
PART_SEGMENTS = 2


def render_media(
    track: RenditionTrack,
    config: HlsConfig,
    *,
    low_latency: bool,
    part_target: float,
    ended: bool,
    skip: bool,
) -> bytes:
    """The media playlist of ``track`` up to its tail (see :func:`render_tail`)."""
    window = list(track.segments)[-config.window :]
    if not window and not track.building:
        return b""
    first = window[0].msn if window else track.building_msn
    # Count discontinuities that already slid out of the playlist.
    gone = sum(1 for s in track.segments if s.discontinuity and s.msn < first)
    ll: LowLatency | None = None
    skipped = 0
    if low_latency:
        target = target_duration(
            config.segment_duration,
            [SegmentRef(s.msn, s.duration, "") for s in window],
        )
        if skip:
            # §6.2.5.1: skip the segments older than CAN-SKIP-UNTIL from the end.
            horizon = can_skip_until(target)
            total = 0.0
            keep = 0
            for s in reversed(window):
                total += s.duration
                if total > horizon:
                    break
                keep += 1
            skipped = len(window) - keep
        ll = _low_latency(track, part_target, ended, skipped)
    with_parts = track.last_msn - PART_SEGMENTS
    refs = [
        SegmentRef(
            s.msn,
            s.duration,
            s.uri,
            s.discontinuity,
            s.gap,
            map_uri=f"init-{s.init_id}.mp4" if s.init_id is not None else None,
            program_time=s.program_time,
            parts=tuple(PartRef(p.duration, p.uri, p.independent) for p in s.parts)
            if low_latency and s.parts and s.msn > with_parts
            else (),
        )
        for s in window[skipped:]
    ]
    text = media_playlist(
        refs,
        configured_target=config.segment_duration,
        discontinuity_sequence=track.evicted_discontinuities + gone,
        ended=ended,
        low_latency=ll,
        first_msn=first,
        tail=False,
    )
    return text.encode()


def render_tail(
    track: RenditionTrack,
    renditions: Iterable[RenditionTrack],
    *,
    low_latency: bool,
    ended: bool,
) -> bytes:
    """What ends the playlist of ``track``: the LL-HLS rendition reports of the
    others (they change with every part of any rendition) and ENDLIST."""
    reports = []
    if low_latency:
        for other in renditions:
            if other is track or (other.last_msn < 0 and not other.building):
                continue
            last_msn, last_part = other.edge()
            reports.append((f"../{other.name}/index.m3u8", last_msn, last_part))
    return playlist_tail(reports, ended).encode()


def _filled(track: RenditionTrack) -> bool:
    """Whether the parts of the segment being built already make up its expected length,
    to within half a frame (a last part is at least one frame long)."""
    expected = track.building_expected
    slack = 0.5 / track.fps if track.fps > 0 else 0.001
    return expected > 0 and sum(p.duration for p in track.building) > expected - slack


def _low_latency(
    track: RenditionTrack, part_target: float, ended: bool, skipped: int
) -> LowLatency:
    if track.building and not _filled(track):
        hint_msn, hint_part = track.building_msn, track.building[-1].index + 1
    elif track.building:
        # Its parts fill the segment: the next part starts the next segment.
        hint_msn, hint_part = track.building_msn + 1, 0
    else:
        hint_msn, hint_part = track.last_msn + 1, 0
    return LowLatency(
        part_target=part_target,
        pending_parts=tuple(PartRef(p.duration, p.uri, p.independent) for p in track.building),
        pending_program_time=track.building_program_time if track.building else 0.0,
        pending_discontinuity=track.building_discontinuity if track.building else False,
        pending_map_uri=f"init-{track.init_id}.mp4" if track.init_id is not None else None,
        preload_hint=None if ended else f"{hint_msn}.{hint_part}.m4s",
        skipped=skipped,
    )


def render_master(
    renditions: Iterable[RenditionTrack],
    *,
    audio: bool,
    fmp4: bool,
    low_latency: bool,
    left_out: dict[str, str] | None = None,
) -> bytes:
    """The master playlist: one variant per rendition, and a comment per rung left out."""
    variants = [t.variant() for t in renditions]
    version = 7 if fmp4 else 3
    notes = [f"rendition {name} left out: {why}" for name, why in (left_out or {}).items()]
    return master_playlist(
        variants, AUDIO_CODEC if audio else None, version, independent=not low_latency, notes=notes
    ).encode()
