"""In-memory, bounded store of live HLS streams.

The store is what the transcode pool reports into and what the HTTP layer
reads from. A media playlist is rendered at most once per change (lazily, on
the first request after the change) and kept as bytes, so a request for a
playlist costs a dictionary lookup, not a render. LL-HLS readers wait on a
per-rendition :class:`asyncio.Event` that is set on every new part or segment:
no polling anywhere.

Memory is bounded per rendition: ``2 * hls.window`` complete segments, the
parts of the last few segments (the ones the playlist lists parts for), and the
init segments those reference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distribute.config import HlsConfig
from distribute.hls.playlist import (
    LowLatency,
    PartRef,
    SegmentRef,
    VariantRef,
    can_skip_until,
    master_playlist,
    media_playlist,
    playlist_tail,
    target_duration,
)
from media import StreamKey
from media.segments import InitFrame, PartFrame, SegmentFrame

log = logging.getLogger(__name__)

AUDIO_CODEC = "mp4a.40.2"
# Parts in the short lead segment that starts every LL-HLS run (see LiveStream._split).
LEAD_PARTS = 3
# Complete segments whose parts a playlist lists. With the segment being built, two
# keep parts within about three target durations of the live edge, as RFC 8216bis
# §4.4.4.9 recommends.
PART_SEGMENTS = 2


@dataclass(slots=True)
class Part:
    msn: int
    index: int
    duration: float
    independent: bool
    data: bytes

    @property
    def uri(self) -> str:
        return f"{self.msn}.{self.index}.m4s"


@dataclass(slots=True)
class Segment:
    msn: int
    duration: float
    data: bytes
    discontinuity: bool
    start: float
    gap: bool = False
    init_id: int | None = None
    program_time: float = 0.0
    parts: list[Part] | None = None
    uri: str = ""


@dataclass
class RenditionTrack:
    name: str
    width: int
    height: int
    fps: float
    video_bitrate: int
    maxrate: int
    audio_bitrate: int
    codecs: str = "avc1.640028"
    segments: deque[Segment] = field(default_factory=deque)
    peak_bps: float = 0.0
    by_msn: dict[int, Segment] = field(default_factory=dict)
    bytes_stored: int = 0
    evicted_discontinuities: int = 0
    # fMP4: init segments by id (``init-{id}.mp4``) and the one new media needs.
    inits: dict[int, bytes] = field(default_factory=dict)
    init_id: int | None = None
    # LL-HLS: parts by (msn, index), those of the segment being built, the newest one.
    parts: dict[tuple[int, int], Part] = field(default_factory=dict)
    building: list[Part] = field(default_factory=list)
    building_msn: int = -1
    building_discontinuity: bool = False
    building_program_time: float = 0.0
    last_part: tuple[int, int] = (-1, -1)
    last_msn: int = -1
    # Rendered playlists (None = stale, rendered on the next request). On LL-HLS each
    # is a body, stale when this rendition changes, and a tail of rendition reports,
    # stale when any other does.
    _playlist: bytes | None = None
    _playlist_skip: bytes | None = None
    _body: bytes | None = None
    _body_skip: bytes | None = None
    _tail: bytes | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Callbacks of requests held by the HTTP fast path: called on every change,
    # each returns True once it has answered (and is then dropped).
    waiters: list[Callable[[], bool]] = field(default_factory=list)
    stream: LiveStream | None = field(default=None, repr=False)

    def variant(self) -> VariantRef:
        # BANDWIDTH must cover the peak segment bit rate (RFC 8216bis §4.4.6.2);
        # before there is a peak to measure, the VBV ceiling plus TS overhead is.
        nominal = (self.maxrate + self.audio_bitrate) * 1.1
        average = (self.video_bitrate + self.audio_bitrate) * 1.05
        return VariantRef(
            uri=f"{self.name}/index.m3u8",
            bandwidth=int(max(nominal, self.peak_bps)),
            average_bandwidth=int(average),
            width=self.width,
            height=self.height,
            fps=self.fps,
            codecs=self.codecs,
        )

    # -- read side (HTTP) ----------------------------------------------------------------

    @property
    def playlist(self) -> bytes:
        """The full media playlist; empty until there is something to list."""
        if self._playlist is None:
            if self._body is None:
                assert self.stream is not None
                self._body = self.stream.render(self, skip=False)
            self._playlist = self._body + self.tail() if self._body else b""
        return self._playlist

    @property
    def playlist_skip(self) -> bytes:
        """The delta update (``_HLS_skip=YES``, RFC 8216bis §6.2.5.1)."""
        if self._playlist_skip is None:
            if self._body_skip is None:
                assert self.stream is not None
                self._body_skip = self.stream.render(self, skip=True)
            self._playlist_skip = self._body_skip + self.tail() if self._body_skip else b""
        return self._playlist_skip

    def tail(self) -> bytes:
        if self._tail is None:
            assert self.stream is not None
            self._tail = self.stream.render_tail(self)
        return self._tail

    def reached(self, msn: int, part: int | None) -> bool:
        """Does the playlist hold segment ``msn`` (complete), or part ``part`` of it, or later?"""
        if self.last_msn >= msn:
            return True
        if part is None:
            return False
        return self.last_part >= (msn, part)

    def edge(self) -> tuple[int, int]:
        """(last msn, last part) listed: what EXT-X-RENDITION-REPORT states (§4.4.5.4)."""
        if self.building:
            return self.building_msn, self.building[-1].index
        seg = self.by_msn.get(self.last_msn)
        last_part = len(seg.parts) - 1 if seg is not None and seg.parts else -1
        return self.last_msn, last_part

    def invalidate(self) -> None:
        self._playlist = self._playlist_skip = self._body = self._body_skip = self._tail = None

    def invalidate_reports(self) -> None:
        """Another rendition changed: only the rendition reports are stale."""
        self._playlist = self._playlist_skip = self._tail = None

    def notify(self) -> None:
        """Wake every request blocked on this rendition (they re-check their condition)."""
        self.invalidate()
        event, self.changed = self.changed, asyncio.Event()
        event.set()
        if self.waiters:
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                try:
                    done = w()
                except Exception:
                    log.exception("held request callback failed")
                    done = True
                if not done:
                    self.waiters.append(w)


class LiveStream:
    def __init__(self, key: StreamKey, config: HlsConfig, now: float, first_msn: int = 0) -> None:
        self.key = key
        self.config = config
        self.renditions: dict[str, RenditionTrack] = {}
        self.audio = False
        self.source: dict[str, Any] = {}
        # Filled by the ingest side: codecs and the measured publisher bit rate.
        self.ingest: dict[str, Any] = {}
        self.created = now
        self.ended = False
        self.ended_at: float | None = None
        self.publisher_connected = False
        self.generation = 0
        self.discontinuity_sequence = 0
        # Media sequence numbers (and init ids) start at first_msn: Store.open picks
        # one no earlier stream of the same name used, so segment URLs stay unique.
        self._first_msn = first_msn
        self._base = first_msn
        self._next_msn = first_msn
        self._pending_discontinuity = False
        # Wall clock of media time 0 in this generation (EXT-X-PROGRAM-DATE-TIME).
        self._anchor: float | None = None
        self._init_seq = first_msn
        self.master: bytes = b""
        self.stats: dict[str, Any] = {}
        self.segments_total = 0
        self.degradation = 0
        self.dropped_segments = 0
        # LL-HLS start-up: the first worker segment of every run is listed as two
        # media segments, a short lead of LEAD_PARTS parts (about PART-HOLD-BACK)
        # and the rest, so that players (hls.js needs one EXTINF) start from parts
        # about one second after the publisher, not after a whole segment.
        self._split = False
        # The run's first segment had no more parts than the lead: nothing to split.
        self._lead_whole = False
        # Called with every complete (non-gap) segment as it is stored (recording).
        self.on_complete: Callable[[RenditionTrack, Segment], None] | None = None
        self.fmp4 = config.segment_format == "fmp4"
        self.low_latency = config.low_latency
        self.part_target = math.ceil(config.part_duration * 1000) / 1000

    # -- transcode side ------------------------------------------------------------------

    def begin_generation(self) -> None:
        """A new worker run starts: its segments follow a discontinuity (§4.4.4.3)."""
        if self._next_msn > self._first_msn:
            self._pending_discontinuity = True
            self.generation += 1
        self._base = self._next_msn
        # Only when a segment has more parts than the lead (segment >= ~4 parts).
        cfg = self.config
        self._split = (
            self.low_latency and cfg.segment_duration > (LEAD_PARTS + 0.5) * cfg.part_duration
        )
        self._lead_whole = False
        self._anchor = None
        self.ended = False
        self.ended_at = None
        for track in self.renditions.values():
            # Parts of a segment the old worker never finished are dropped.
            for p in track.building:
                track.parts.pop((p.msn, p.index), None)
            track.building = []
            track.building_msn = -1
            track.last_part = track.edge()
            track.notify()

    def set_renditions(self, info: dict[str, Any]) -> None:
        self.source = dict(info.get("source", {}))
        self.audio = bool(info.get("audio"))
        audio_bitrate = 0
        for r in info.get("renditions", []):
            audio_bitrate = int(r.get("audio_bitrate", 0))
            track = self.renditions.get(r["name"])
            if track is None:
                track = RenditionTrack(
                    name=r["name"],
                    width=int(r["width"]),
                    height=int(r["height"]),
                    fps=float(r["fps"]),
                    video_bitrate=int(r["video_bitrate"]),
                    maxrate=int(r["maxrate"]),
                    audio_bitrate=audio_bitrate,
                )
                track.stream = self
                self.renditions[r["name"]] = track
            else:
                track.width, track.height = int(r["width"]), int(r["height"])
                track.fps = float(r["fps"])
        self._render_master()

    def add_init(self, init: InitFrame) -> None:
        """A new fMP4 init segment: media from here on references it (EXT-X-MAP)."""
        track = self.renditions.get(init.rendition)
        if track is None:
            log.warning("[hls %s] init for unknown rendition %r; dropped", self.key, init.rendition)
            return
        if track.init_id is not None and track.inits.get(track.init_id) == init.data:
            return
        self._init_seq += 1
        track.inits[self._init_seq] = init.data
        track.init_id = self._init_seq
        if init.codecs and init.codecs != track.codecs:
            track.codecs = init.codecs
            self._render_master()

    def _program_time(self, start: float, duration: float) -> float:
        if self._anchor is None:
            # The media just finished arrived now: its end is "now" on the wall clock.
            self._anchor = time.time() - (start + duration)
        return self._anchor + start

    def _msn(self, index: int, part: int | None) -> tuple[int, int | None]:
        """The media sequence number (and part index) of a worker segment (part)."""
        if not self._split:
            return self._base + index, part
        if index > 0:
            return self._base + index + (0 if self._lead_whole else 1), part
        if part is None:  # the whole first segment: what follows its lead
            return self._base + 1, None
        if part < LEAD_PARTS:
            return self._base, part
        return self._base + 1, part - LEAD_PARTS

    def add_part(self, frame: PartFrame) -> Part | None:
        """An LL-HLS part is complete: list it and wake the requests waiting for it."""
        track = self.renditions.get(frame.rendition)
        if track is None:
            return None
        msn, index = self._msn(frame.index, frame.part)
        assert index is not None
        frame = dataclasses.replace(frame, part=index)
        if msn <= track.last_msn or (msn, frame.part) <= track.last_part:
            log.warning(
                "[hls %s] %s part %d.%d out of order; dropped",
                self.key,
                frame.rendition,
                msn,
                frame.part,
            )
            return None
        if track.building and msn != track.building_msn:
            # The previous segment never arrived whole: its parts stay servable, but
            # the playlist only lists parts of the segment being built.
            track.building = []
        if not track.building:
            track.building_msn = msn
            track.building_discontinuity = self._pending_discontinuity and msn == self._base
            track.building_program_time = self._program_time(frame.start, frame.duration)
        if len(frame.data) > self.config.max_segment_bytes:
            log.warning(
                "[hls %s] %s part %d.%d of %d bytes exceeds hls.max_segment_bytes; dropped",
                self.key,
                frame.rendition,
                msn,
                frame.part,
                len(frame.data),
            )
            return None
        part = Part(msn, frame.part, frame.duration, frame.independent, frame.data)
        track.building.append(part)
        track.parts[(msn, frame.part)] = part
        track.last_part = (msn, frame.part)
        if frame.part == 0:
            self._evict_parts(track)
        if frame.duration > self.part_target:
            # §4.4.4.9: every part duration must be <= PART-TARGET.
            self.part_target = math.ceil(frame.duration * 1000) / 1000
            for t in self.renditions.values():
                t.invalidate()
        if self._split and msn == self._base and frame.part == LEAD_PARTS - 1:
            lead = track.building
            self._complete(
                track,
                msn,
                sum(p.duration for p in lead),
                b"".join(p.data for p in lead),
                track.codecs,
                frame.start - sum(p.duration for p in lead[:-1]),
            )
            return part
        self._changed(track)
        return part

    def add_segment(self, seg: SegmentFrame) -> Segment | None:
        """A complete segment. Returns what was stored (None when dropped)."""
        track = self.renditions.get(seg.rendition)
        if track is None:
            return None
        if len(seg.data) > self.config.max_segment_bytes:
            self.dropped_segments += 1
            log.warning(
                "[hls %s] %s segment of %d bytes exceeds hls.max_segment_bytes; dropped",
                self.key,
                seg.rendition,
                len(seg.data),
            )
            return None
        msn, _ = self._msn(seg.index, None)
        data, duration, start = seg.data, seg.duration, seg.start
        if self._split and seg.index == 0:
            lead = track.by_msn.get(self._base)
            if lead is not None and not lead.gap:
                # The segment is the concatenation of its parts: drop the lead's bytes.
                data = data[len(lead.data) :]
                duration = max(0.0, duration - lead.duration)
                start += lead.duration
                if not data:
                    # A short first segment: the lead was all of it.
                    self._lead_whole = True
                    return lead
        return self._complete(track, msn, duration, data, seg.codecs, start)

    def _complete(
        self,
        track: RenditionTrack,
        msn: int,
        duration: float,
        data: bytes,
        codecs: str,
        start: float,
    ) -> Segment | None:
        if track.segments and msn <= track.segments[-1].msn:
            log.warning("[hls %s] %s segment %d out of order; dropped", self.key, track.name, msn)
            return None
        if track.segments and msn > track.segments[-1].msn + 1:
            # A rung suspended under overload skipped grid slots: list them as
            # EXT-X-GAP (RFC 8216bis §4.4.4.7) so every rendition keeps one numbering.
            for missing in range(track.segments[-1].msn + 1, msn):
                gap = Segment(missing, self._duration_of(missing), b"", False, 0.0, gap=True)
                gap.init_id = track.init_id
                gap.uri = self._segment_uri(missing)
                track.segments.append(gap)
        if track.building and track.building_msn == msn:
            parts: list[Part] | None = track.building
            disc = track.building_discontinuity
            program_time = track.building_program_time
        else:
            parts = None
            # The run's first segment carries the discontinuity (the remainder of a
            # first segment, when its lead never came, is that first segment).
            first = msn == self._base or (
                self._split and msn == self._base + 1 and self._base not in track.by_msn
            )
            disc = self._pending_discontinuity and first
            program_time = self._program_time(start, duration)
        track.building = []
        track.building_msn = -1
        s = Segment(msn, duration, data, disc, start)
        s.init_id = track.init_id if self.fmp4 else None
        s.program_time = program_time
        s.parts = parts
        s.uri = self._segment_uri(msn)
        track.segments.append(s)
        track.by_msn[msn] = s
        track.bytes_stored += len(data)
        track.last_msn = msn
        track.last_part = max(track.last_part, (msn, len(parts) - 1 if parts else -1))
        if duration > 0:
            track.peak_bps = max(track.peak_bps, len(data) * 8 / duration)
        changed_codecs = track.codecs != codecs
        track.codecs = codecs
        self._evict(track)
        if msn + 1 > self._next_msn:
            self._next_msn = msn + 1
            self.segments_total += 1
        if disc and all(
            not t.segments or t.segments[-1].msn >= msn for t in self.renditions.values()
        ):
            self._pending_discontinuity = False
        self._changed(track)
        if changed_codecs or not self.master or track.peak_bps > track.variant().bandwidth:
            self._render_master()
        if self.on_complete is not None:
            try:
                self.on_complete(track, s)
            except Exception:
                log.exception("[hls %s] segment listener failed", self.key)
        return s

    def _segment_uri(self, msn: int) -> str:
        return f"{msn}.m4s" if self.fmp4 else f"{msn}.ts"

    def _evict(self, track: RenditionTrack) -> None:
        # Keep twice the window in memory: RFC 8216bis §6.2.2 asks that a
        # segment stay available for a while after it leaves the playlist.
        keep = 2 * self.config.window
        while len(track.segments) > keep:
            old = track.segments.popleft()
            track.by_msn.pop(old.msn, None)
            track.bytes_stored -= len(old.data)
            track.evicted_discontinuities += old.discontinuity
        oldest_part_msn = self._evict_parts(track)
        for seg in track.segments:
            if seg.msn >= oldest_part_msn:
                break
            seg.parts = None
        used = {s.init_id for s in track.segments} | {track.init_id}
        for init_id in [i for i in track.inits if i not in used]:
            del track.inits[init_id]

    def _evict_parts(self, track: RenditionTrack) -> int:
        """Keep parts only for the segments whose parts are listed, plus one more,
        counted from the newest part: a segment dropped as too large must not leave
        its parts behind for ever. Returns the oldest segment number that keeps parts."""
        # Normally the last complete segment; while segments are being dropped, the
        # one before the segment whose parts are arriving.
        newest = max(track.last_msn, track.last_part[0] - 1)
        oldest_part_msn = newest - PART_SEGMENTS
        if track.parts and min(track.parts)[0] < oldest_part_msn:
            for k in [k for k in track.parts if k[0] < oldest_part_msn]:
                del track.parts[k]
        return oldest_part_msn

    def _changed(self, track: RenditionTrack) -> None:
        track.notify()
        if self.low_latency:
            # Rendition reports on every other playlist changed too.
            for t in self.renditions.values():
                if t is not track:
                    t.invalidate_reports()

    def _duration_of(self, msn: int) -> float:
        for t in self.renditions.values():
            s = t.by_msn.get(msn)
            if s is not None:
                return s.duration
        return self.config.segment_duration

    def end(self, now: float) -> None:
        """The publisher did not come back within the grace period: §4.4.3.4 ENDLIST."""
        if self.ended:
            return
        self.ended = True
        self.ended_at = now
        for track in self.renditions.values():
            track.notify()

    # -- rendering ---------------------------------------------------------------------

    def _window(self, track: RenditionTrack) -> list[Segment]:
        return list(track.segments)[-self.config.window :]

    def render(self, track: RenditionTrack, *, skip: bool) -> bytes:
        """The media playlist of ``track`` up to its tail (see :meth:`render_tail`)."""
        window = self._window(track)
        if not window and not track.building:
            return b""
        first = window[0].msn if window else track.building_msn
        # Count discontinuities that already slid out of the playlist.
        gone = sum(1 for s in track.segments if s.discontinuity and s.msn < first)
        ll: LowLatency | None = None
        skipped = 0
        if self.low_latency:
            target = target_duration(
                self.config.segment_duration,
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
            ll = self._low_latency(track, skipped)
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
                if self.low_latency and s.parts and s.msn > with_parts
                else (),
            )
            for s in window[skipped:]
        ]
        text = media_playlist(
            refs,
            configured_target=self.config.segment_duration,
            discontinuity_sequence=track.evicted_discontinuities + gone,
            ended=self.ended,
            low_latency=ll,
            first_msn=first,
            tail=False,
        )
        return text.encode()

    def render_tail(self, track: RenditionTrack) -> bytes:
        """What ends the playlist of ``track``: the LL-HLS rendition reports of the
        others (they change with every part of any rendition) and ENDLIST."""
        reports = []
        if self.low_latency:
            for other in self.renditions.values():
                if other is track or (other.last_msn < 0 and not other.building):
                    continue
                last_msn, last_part = other.edge()
                reports.append((f"../{other.name}/index.m3u8", last_msn, last_part))
        return playlist_tail(reports, self.ended).encode()

    def _low_latency(self, track: RenditionTrack, skipped: int) -> LowLatency:
        if track.building:
            hint_msn, hint_part = track.building_msn, track.building[-1].index + 1
        else:
            hint_msn, hint_part = track.last_msn + 1, 0
        return LowLatency(
            part_target=self.part_target,
            pending_parts=tuple(PartRef(p.duration, p.uri, p.independent) for p in track.building),
            pending_program_time=track.building_program_time if track.building else 0.0,
            pending_discontinuity=track.building_discontinuity if track.building else False,
            pending_map_uri=f"init-{track.init_id}.mp4" if track.init_id is not None else None,
            preload_hint=None if self.ended else f"{hint_msn}.{hint_part}.m4s",
            skipped=skipped,
        )

    def _render_master(self) -> None:
        variants = [t.variant() for t in self.renditions.values()]
        version = 7 if self.fmp4 else 3
        self.master = master_playlist(
            variants, AUDIO_CODEC if self.audio else None, version, independent=not self.low_latency
        ).encode()

    # -- read side ---------------------------------------------------------------------

    def ready(self) -> bool:
        return bool(self.renditions) and all(t.segments for t in self.renditions.values())

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "tenant": self.key.tenant,
            "stream": self.key.stream,
            "live": not self.ended,
            "publisher_connected": self.publisher_connected,
            "source": {
                "codec": self.ingest.get("video_codec"),
                "audio_codec": self.ingest.get("audio_codec"),
                "bitrate": self.ingest.get("bitrate", 0),
                **self.source,
            },
            "uptime": round(now - self.created, 3),
            "profile": self.ingest.get("profile", "default"),
            "generation": self.generation,
            "degradation": self.degradation,
            "segments": self.segments_total,
            "renditions": [
                {
                    "name": t.name,
                    "width": t.width,
                    "height": t.height,
                    "fps": t.fps,
                    "bandwidth": t.variant().bandwidth,
                    "codecs": t.codecs,
                    "url": f"/{self.key.tenant}/{self.key.stream}/{t.name}/index.m3u8",
                }
                for t in self.renditions.values()
            ],
            "url": f"/{self.key.tenant}/{self.key.stream}/index.m3u8",
        }


# 2024-01-01T00:00:00Z: media sequence numbers count half seconds from here.
SEQUENCE_EPOCH = 1_704_067_200


def first_sequence(now: float) -> int:
    """The first media sequence number of a stream opened at ``now``.

    Complete segments are served ``immutable``, so a URL must never name other
    bytes later. A stream name is reused (a class every day, a publisher back after
    the grace period, a restarted node) and would restart at ``0.ts``; instead a
    new stream starts at the half seconds since 2024-01-01. No segment is shorter
    than 0.5 s (``hls.segment_duration``; an LL-HLS lead segment needs segments of
    0.7 s or more), so no earlier stream of the name, on this node or before its
    restart, got that far; and the number fits 31 bits until 2058.
    """
    return max(0, int((now - SEQUENCE_EPOCH) * 2))


class Store:
    """Every live stream of this node, by tenant and name."""

    def __init__(self, config: HlsConfig) -> None:
        self.config = config
        self.streams: dict[tuple[str, str], LiveStream] = {}

    def open(self, key: StreamKey, now: float | None = None) -> LiveStream:
        now = time.time() if now is None else now
        old = self.streams.get((key.tenant, key.stream))
        s = old
        if s is None or (s.ended and s.publisher_connected is False and s.ended_at is not None):
            first = first_sequence(now)
            if old is not None:  # the clock never goes back on this node's own numbers
                first = max(first, old._next_msn, old._init_seq + 1)
            s = LiveStream(key, self.config.for_tenant(key.tenant), now, first_msn=first)
            self.streams[(key.tenant, key.stream)] = s
        return s

    def get(self, tenant: str, stream: str) -> LiveStream | None:
        return self.streams.get((tenant, stream))

    def remove(self, key: StreamKey) -> None:
        self.streams.pop((key.tenant, key.stream), None)

    def expire(self, now: float) -> list[StreamKey]:
        gone = [
            s.key
            for s in self.streams.values()
            if s.ended and s.ended_at is not None and now - s.ended_at >= self.config.retain_ended
        ]
        for k in gone:
            self.remove(k)
        return gone
