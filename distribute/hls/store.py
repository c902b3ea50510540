"""In-memory, bounded store of live HLS streams.

The store is what the transcode pool reports into and what the HTTP layer
reads from. Playlists are rendered once per new segment and kept as bytes, so a
request for a playlist costs a dictionary lookup, not a render.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from distribute.config import HlsConfig
from distribute.hls.playlist import SegmentRef, VariantRef, master_playlist, media_playlist
from media import StreamKey
from transcode.protocol import SegmentFrame

log = logging.getLogger(__name__)

AUDIO_CODEC = "mp4a.40.2"


@dataclass(slots=True)
class Segment:
    msn: int
    duration: float
    data: bytes
    discontinuity: bool
    start: float
    gap: bool = False


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
    playlist: bytes = b""
    by_msn: dict[int, Segment] = field(default_factory=dict)
    bytes_stored: int = 0
    evicted_discontinuities: int = 0

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


class LiveStream:
    def __init__(self, key: StreamKey, config: HlsConfig, now: float) -> None:
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
        self._base = 0
        self._next_msn = 0
        self._pending_discontinuity = False
        self.master: bytes = b""
        self.stats: dict[str, Any] = {}
        self.segments_total = 0
        self.degradation = 0
        self.dropped_segments = 0

    # -- transcode side ------------------------------------------------------------------

    def begin_generation(self) -> None:
        """A new worker run starts: its segments follow a discontinuity (§4.4.4.3)."""
        if self._next_msn > 0:
            self._pending_discontinuity = True
            self.generation += 1
        self._base = self._next_msn
        self.ended = False
        self.ended_at = None

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
                self.renditions[r["name"]] = track
            else:
                track.width, track.height = int(r["width"]), int(r["height"])
                track.fps = float(r["fps"])
        self._render_master()

    def add_segment(self, seg: SegmentFrame) -> None:
        track = self.renditions.get(seg.rendition)
        if track is None:
            return
        if len(seg.data) > self.config.max_segment_bytes:
            self.dropped_segments += 1
            log.warning(
                "[hls %s] %s segment of %d bytes exceeds hls.max_segment_bytes; dropped",
                self.key,
                seg.rendition,
                len(seg.data),
            )
            return
        msn = self._base + seg.index
        if track.segments and msn <= track.segments[-1].msn:
            log.warning("[hls %s] %s segment %d out of order; dropped", self.key, seg.rendition, msn)
            return
        if track.segments and msn > track.segments[-1].msn + 1:
            # A rung suspended under overload skipped grid slots: list them as
            # EXT-X-GAP (RFC 8216bis §4.4.4.7) so every rendition keeps one numbering.
            for missing in range(track.segments[-1].msn + 1, msn):
                track.segments.append(
                    Segment(missing, self._duration_of(missing), b"", False, 0.0, gap=True)
                )
        disc = self._pending_discontinuity and seg.index == 0
        s = Segment(msn, seg.duration, seg.data, disc, seg.start)
        track.segments.append(s)
        track.by_msn[msn] = s
        track.bytes_stored += len(seg.data)
        if seg.duration > 0:
            track.peak_bps = max(track.peak_bps, len(seg.data) * 8 / seg.duration)
        changed_codecs = track.codecs != seg.codecs
        track.codecs = seg.codecs
        # Keep twice the window in memory: RFC 8216bis §6.2.2 asks that a
        # segment stay available for a while after it leaves the playlist.
        keep = 2 * self.config.window
        while len(track.segments) > keep:
            old = track.segments.popleft()
            track.by_msn.pop(old.msn, None)
            track.bytes_stored -= len(old.data)
            track.evicted_discontinuities += old.discontinuity
        if msn + 1 > self._next_msn:
            self._next_msn = msn + 1
            self.segments_total += 1
        if disc and all(
            not t.segments or t.segments[-1].msn >= msn for t in self.renditions.values()
        ):
            self._pending_discontinuity = False
        self._render(track)
        if changed_codecs or not self.master or track.peak_bps > track.variant().bandwidth:
            self._render_master()

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
            self._render(track)

    # -- rendering ---------------------------------------------------------------------

    def _window(self, track: RenditionTrack) -> list[Segment]:
        return list(track.segments)[-self.config.window :]

    def _render(self, track: RenditionTrack) -> None:
        window = self._window(track)
        first = window[0].msn if window else 0
        # Count discontinuities that already slid out of the playlist.
        gone = sum(1 for s in track.segments if s.discontinuity and s.msn < first)
        text = media_playlist(
            [SegmentRef(s.msn, s.duration, f"{s.msn}.ts", s.discontinuity, s.gap) for s in window],
            configured_target=self.config.segment_duration,
            discontinuity_sequence=track.evicted_discontinuities + gone,
            ended=self.ended,
        )
        track.playlist = text.encode()

    def _render_master(self) -> None:
        variants = [t.variant() for t in self.renditions.values()]
        self.master = master_playlist(variants, AUDIO_CODEC if self.audio else None).encode()

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


class Store:
    """Every live stream of this node, by tenant and name."""

    def __init__(self, config: HlsConfig) -> None:
        self.config = config
        self.streams: dict[tuple[str, str], LiveStream] = {}

    def open(self, key: StreamKey, now: float | None = None) -> LiveStream:
        now = time.time() if now is None else now
        s = self.streams.get((key.tenant, key.stream))
        if s is None or (s.ended and s.publisher_connected is False and s.ended_at is not None):
            s = LiveStream(key, self.config, now)
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
