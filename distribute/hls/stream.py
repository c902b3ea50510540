"""One live stream: the transcode side feeds its renditions, the HTTP side reads them.

Worker segments and parts are numbered here (an LL-HLS run starts with a short
lead segment), stored in their rendition's track and evicted from it. Memory is
bounded per rendition: ``2 * hls.window`` complete segments, the parts of the
last few segments (the ones the playlist lists parts for), and the init segments
those reference.

A rendition added with :meth:`LiveStream.add_hidden_rendition` (the WebRTC tap's
``webrtc`` rendition, which nearcast.session packages for relays) is stored and
served like the others but never offered to players: the master playlist, the
other renditions' reports, the stream's description and :meth:`ready` leave it out.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from distribute.config import HlsConfig
from distribute.hls.render import PART_SEGMENTS, render_master, render_media, render_tail
from distribute.hls.track import Part, RenditionTrack, Segment
from media import StreamKey
from media.ratelog import RateLimitedLog
from media.segments import InitFrame, PartFrame, SegmentFrame, lead_parts

log = logging.getLogger(__name__)
# What can repeat for every part of a stream is logged once, then summed up now and then.
_LIMITED = RateLimitedLog(log)


class LiveStream:
    def __init__(self, key: StreamKey, config: HlsConfig, now: float, first_msn: int = 0) -> None:
        self.key = key
        self.config = config
        self.renditions: dict[str, RenditionTrack] = {}
        # Names of renditions served but not listed (see add_hidden_rendition).
        self.hidden: set[str] = set()
        self.audio = False
        self.source: dict[str, Any] = {}
        # Filled by the ingest side: codecs and the measured publisher bit rate.
        self.ingest: dict[str, Any] = {}
        # Rungs of the stream's ladder that admission left out, with the reason for each.
        self.left_out: dict[str, str] = {}
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
        # media segments, a short lead of hls.lead_parts parts (about PART-HOLD-BACK)
        # and the rest, so that players (hls.js needs one EXTINF) start from parts
        # about one second after the publisher, not after a whole segment.
        self._lead = 0  # parts in this run's lead; 0: the run has no lead
        # The run's first segment had no more parts than the lead: nothing to split.
        self._lead_whole = False
        # Called with every complete (non-gap) segment as it is stored (recording).
        self.on_complete: Callable[[RenditionTrack, Segment], None] | None = None
        self.fmp4 = config.segment_format == "fmp4"
        # The worker media time (ms) where this stream's fMP4 timeline starts, set by its
        # first run: a later run (the publisher back) continues the timeline from it.
        self.timeline_origin_ms: int | None = None
        self.low_latency = config.low_latency
        self.part_target = math.ceil(config.part_duration * 1000) / 1000

    # -- transcode side ------------------------------------------------------------------

    def begin_generation(self, *, lead: bool = True) -> None:
        """A new worker run starts: its segments follow a discontinuity (§4.4.4.3).

        ``lead=False``: the run's segments come already cut (a relay copying a new
        upstream), so its first one is not split into a lead of its own."""
        # A segment the old run left unfinished had its parts served (to players, to
        # relays): its number is not reused for other media. It ends where the old run
        # did, as the segment of the parts it has (a segment is the concatenation of its
        # parts), so that a player's buffer runs on into the new run without a hole. A
        # rendition that has no part of it lists it as a gap of the same length once the
        # new run's first segment is in (see _complete).
        for track in self.renditions.values():
            if track.building:
                self._finish_unfinished(track)
        if self._next_msn > self._first_msn:
            self._pending_discontinuity = True
            self.generation += 1
        self._base = self._next_msn
        # Only when a segment has more parts than the lead (segment >= ~4 parts).
        cfg = self.config
        self._lead = (
            lead_parts(cfg.segment_duration, cfg.part_duration, cfg.lead_parts)
            if lead and self.low_latency
            else 0
        )
        self._lead_whole = False
        self._anchor = None
        self.ended = False
        self.ended_at = None
        for track in self.renditions.values():
            track.building = []
            track.building_msn = -1
            track.last_part = track.edge()
            track.notify()

    def _finish_unfinished(self, track: RenditionTrack) -> None:
        """List the segment ``track`` was building when its run stopped, made of the
        parts it has: what players and relays already have of it stays valid."""
        parts = track.building
        last = track.segments[-1] if track.segments else None
        start = last.start + last.duration if last is not None and not last.gap else 0.0
        self._complete(
            track,
            track.building_msn,
            sum(p.duration for p in parts),
            b"".join(p.data for p in parts),
            track.codecs,
            start,
        )

    def set_renditions(self, info: dict[str, Any]) -> None:
        self.source = dict(info.get("source", {}))
        self.audio = bool(info.get("audio"))
        audio_bitrate = 0
        for r in info.get("renditions", []):
            audio_bitrate = int(r.get("audio_bitrate", 0))
            if r["name"] in self.hidden:
                log.warning(
                    "[hls %s] rung %r has the name of a hidden rendition; not listed",
                    self.key,
                    r["name"],
                )
                continue
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

    def add_hidden_rendition(
        self, name: str, *, width: int, height: int, fps: float, codecs: str
    ) -> RenditionTrack:
        """A rendition served at ``{name}/...`` that no master playlist lists: for other
        nodes to pull, not for players to pick. Fed like the others (add_init, ...)."""
        track = self.renditions.get(name)
        if track is not None and name not in self.hidden:
            raise ValueError(f"stream {self.key} already has a listed rendition {name!r}")
        if track is None:
            track = RenditionTrack(name, width, height, fps, 0, 0, 0, codecs=codecs)
            track.stream = self
            self.renditions[name] = track
            self.hidden.add(name)
        else:
            track.width, track.height, track.fps = width, height, fps
        return track

    def listed(self) -> list[RenditionTrack]:
        """The renditions players are offered: all but the hidden ones."""
        return [t for t in self.renditions.values() if t.name not in self.hidden]

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
        if not self._lead:
            return self._base + index, part
        if index > 0:
            return self._base + index + (0 if self._lead_whole else 1), part
        if part is None:  # the whole first segment: what follows its lead
            return self._base + 1, None
        if part < self._lead:
            return self._base, part
        return self._base + 1, part - self._lead

    def add_part(self, frame: PartFrame) -> Part | None:
        """An LL-HLS part is complete: list it and wake the requests waiting for it."""
        track = self.renditions.get(frame.rendition)
        if track is None:
            return None
        msn, index = self._msn(frame.index, frame.part)
        assert index is not None
        frame = dataclasses.replace(frame, part=index)
        if msn <= track.last_msn or (msn, frame.part) <= track.last_part:
            _LIMITED.log(
                logging.WARNING,
                (self.key, "part_order"),
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
            track.building_expected = self._expected_duration(track, msn)
        if len(frame.data) > self.config.max_segment_bytes:
            _LIMITED.log(
                logging.WARNING,
                (self.key, "part_size"),
                "[hls %s] %s part %d.%d of %d bytes exceeds hls.max_segment_bytes; dropped",
                self.key,
                frame.rendition,
                msn,
                frame.part,
                len(frame.data),
            )
            return None
        part = Part(
            msn, frame.part, frame.duration, frame.independent, frame.data, time.monotonic()
        )
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
        if self._lead and msn == self._base and frame.part == self._lead - 1:
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
            _LIMITED.log(
                logging.WARNING,
                (self.key, "segment_size"),
                "[hls %s] %s segment of %d bytes exceeds hls.max_segment_bytes; dropped",
                self.key,
                seg.rendition,
                len(seg.data),
            )
            return None
        msn, _ = self._msn(seg.index, None)
        data, duration, start = seg.data, seg.duration, seg.start
        if self._lead and seg.index == 0:
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
            _LIMITED.log(
                logging.WARNING,
                (self.key, "segment_order"),
                "[hls %s] %s segment %d out of order; dropped",
                self.key,
                track.name,
                msn,
            )
            return None
        if track.segments and msn > track.segments[-1].msn + 1:
            # A rung suspended under overload skipped grid slots: list them as
            # EXT-X-GAP (RFC 8216bis §4.4.4.7) so every rendition keeps one numbering.
            for missing in range(track.segments[-1].msn + 1, msn):
                gap = Segment(missing, self._duration_of(missing), b"", False, 0.0, gap=True)
                # The run before the gap's: a new run's init comes with its first segment.
                gap.init_id = track.segments[-1].init_id
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
                self._lead > 0 and msn == self._base + 1 and self._base not in track.by_msn
            )
            disc = self._pending_discontinuity and first
            program_time = self._program_time(start, duration)
        track.building = []
        track.building_msn = -1
        s = Segment(msn, duration, data, disc, start)
        s.init_id = track.init_id if self.fmp4 else None
        s.program_time = program_time
        s.parts = parts
        if parts and sum(len(p.data) for p in parts) == len(data):
            offsets = [0]
            for p in parts:
                offsets.append(offsets[-1] + len(p.data))
            s.part_offsets = tuple(offsets)
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
        if self.low_latency and track.name not in self.hidden:
            # Rendition reports on every other playlist changed too.
            for t in self.renditions.values():
                if t is not track:
                    t.invalidate_reports()

    def _expected_duration(self, track: RenditionTrack, msn: int) -> float:
        """How long segment ``msn`` will be: a segment of the grid, less the lead for the
        rest of a run's first segment; 0 for the lead, which the store itself completes.
        A passed-through source cuts where its keyframes fall, possibly later: its parts
        then go on past the expected end, listed as they come, under a hint of the next
        segment (a request held for it a little longer, never a 404)."""
        duration = self.config.segment_duration
        if self._lead and msn == self._base:
            return 0.0  # the lead: completed by the store after hls.lead_parts parts
        if self._lead and msn == self._base + 1:
            lead = track.by_msn.get(self._base)
            return duration - lead.duration if lead is not None and not self._lead_whole else 0.0
        return duration

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

    def render(self, track: RenditionTrack, *, skip: bool) -> bytes:
        """The media playlist of ``track`` up to its tail (see :meth:`render_tail`)."""
        return render_media(
            track,
            self.config,
            low_latency=self.low_latency,
            part_target=self.part_target,
            ended=self.ended,
            skip=skip,
        )

    def render_tail(self, track: RenditionTrack) -> bytes:
        """What ends the playlist of ``track``: the LL-HLS rendition reports of the
        others (they change with every part of any rendition) and ENDLIST."""
        return render_tail(track, self.listed(), low_latency=self.low_latency, ended=self.ended)

    def _render_master(self) -> None:
        self.master = render_master(
            self.listed(),
            audio=self.audio,
            fmp4=self.fmp4,
            low_latency=self.low_latency,
            left_out=self.left_out,
        )

    # -- read side ---------------------------------------------------------------------

    def ready(self) -> bool:
        listed = self.listed()
        return bool(listed) and all(t.segments for t in listed)

    def live_edge(self) -> float | None:
        """When the newest listed part or segment ends, on its EXT-X-PROGRAM-DATE-TIME
        clock (wall clock, anchored when the run's first media arrived); None before
        any media is listed."""
        ends = []
        for t in self.listed():
            if t.building:
                ends.append(t.building_program_time + sum(p.duration for p in t.building))
            elif t.segments and t.segments[-1].program_time:
                ends.append(t.segments[-1].program_time + t.segments[-1].duration)
        return max(ends, default=None)

    def describe(self, now: float) -> dict[str, Any]:
        edge = self.live_edge()
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
            "left_out": [{"rendition": n, "reason": why} for n, why in self.left_out.items()],
            "generation": self.generation,
            "degradation": self.degradation,
            "segments": self.segments_total,
            # Media that ran ahead of the anchored clock (a publisher's burst) is 0 old.
            "edge_age": None if edge is None else round(max(0.0, now - edge), 3),
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
                for t in self.listed()
            ],
            "url": f"/{self.key.tenant}/{self.key.stream}/index.m3u8",
        }
