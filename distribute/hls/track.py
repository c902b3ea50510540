"""One rendition of a live stream: its segments, parts and init segments, its
rendered playlists, and the requests waiting for it to change.

A media playlist is rendered at most once per change (lazily, on the first
request after the change) and kept as bytes, so a request for a playlist costs a
dictionary lookup, not a render. LL-HLS readers wait on a per-rendition
:class:`asyncio.Event` that is set on every new part or segment: no polling
anywhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from distribute.hls.playlist import VariantRef

log = logging.getLogger(__name__)


class PlaylistRenderer(Protocol):
    """What renders a track's playlist: its stream, which knows the other renditions."""

    def render(self, track: RenditionTrack, *, skip: bool) -> bytes: ...

    def render_tail(self, track: RenditionTrack) -> bytes: ...


@dataclass(slots=True)
class Part:
    msn: int
    index: int
    duration: float
    independent: bool
    data: bytes
    # time.monotonic() when the part entered the store: hls_part_delivery_seconds counts
    # from here to its response.
    stored: float = 0.0

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
    # LL-HLS: where each of its parts starts in ``data`` (a segment is the concatenation of
    # its parts), so a part stays servable while its segment is stored, after the part
    # itself is evicted (a player that fell behind asks for parts listed long ago).
    part_offsets: tuple[int, ...] = ()

    def part(self, index: int) -> bytes | None:
        """Part ``index`` of this segment, cut from its data; None when it has no such part."""
        offsets = self.part_offsets
        if not 0 <= index < len(offsets) - 1:
            return None
        return self.data[offsets[index] : offsets[index + 1]]


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
    # Seconds the segment being built is expected to last (0: unknown): once its parts
    # fill it, the preload hint names the next segment's first part, not a part that
    # will never come.
    building_expected: float = 0.0
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
    stream: PlaylistRenderer | None = field(default=None, repr=False)

    def part_data(self, msn: int, index: int) -> tuple[bytes, float] | None:
        """The bytes of part ``index`` of segment ``msn`` and when the part was stored
        (monotonic): the part while it is kept, then its slice of the segment (stored 0:
        long ago); None when neither is stored."""
        part = self.parts.get((msn, index))
        if part is not None:
            return part.data, part.stored
        seg = self.by_msn.get(msn)
        data = None if seg is None else seg.part(index)
        return None if data is None else (data, 0.0)

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
