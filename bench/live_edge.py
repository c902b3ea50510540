"""The live edge as a viewer sees it, measured the same way whatever produced it.

A publisher stamps the wall clock into every frame (``nearcast publish --clock``,
:mod:`media.clock`). For each rung of each stream this polls the media playlist,
notes the wall clock at which each segment is first listed (when a viewer can
have it), and, after the run, decodes segments and reads the stamp of their last
frame. Nothing here knows whether a ``nearcast node`` or an FFmpeg process wrote
the playlists: a side gives a :class:`LiveOutput` per stream (playlist text and
segment bytes, over HTTP or from files) and gets the same figures.

Figures per rung:

- *lag*: when the newest segment was listed, minus the capture time of its last
  frame. The capture time is the frame's stamp, moved back by however long the
  publisher had fallen behind its schedule (``held_back``): a receiver that stops
  reading holds it back through TCP back-pressure, and then the stamping itself
  is late, where a camera would have captured on time. The stamp minus the
  presentation time of a segment's frames is constant while the publisher keeps
  its schedule, so its growth since the stream's first segment is that delay.
- *segments*: the media sequence number after the newest listed segment at the
  end of the window minus the same at its start: exact, not estimated.
- *startup*: from the stream's start to its first listed segment.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import av

from media.clock import read_stamp
from nearcast.media_playlist import parse_media_playlist
from nearcast.stamp_decoder import luma


@dataclass(frozen=True)
class Stamps:
    """The clock stamps of one segment's video."""

    last_pts: float  # seconds, the last frame in presentation order
    last_ms: int  # stamp of the last frame (the last one with a readable stamp)
    offset_ms: float  # smallest stamp minus presentation time over the segment's frames


def segment_stamps(data: bytes) -> Stamps:
    """Decode a self-contained segment (MPEG-TS) to its end and read its stamps.

    Raises :class:`ValueError` when it has no video frame with a readable stamp.
    """
    last: tuple[float, int] | None = None
    offset: float | None = None
    try:
        container = av.open(io.BytesIO(data), "r", format="mpegts")
    except av.error.FFmpegError as exc:
        raise ValueError(f"undecodable segment ({len(data)} bytes): {exc}") from None
    with container:
        if not container.streams.video:
            raise ValueError(f"segment ({len(data)} bytes) has no video")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base
        # container.decode() flushes the decoder at the end: the B-frames held back for
        # reordering, the last frame among them, come out too.
        for frame in container.decode(stream):
            if frame.pts is None or tb is None:
                continue
            ms = read_stamp(luma(frame))
            if ms is None:
                continue
            pts = float(frame.pts * tb)
            if last is None or pts > last[0]:
                last = (pts, ms)
            here = ms - pts * 1000
            offset = here if offset is None else min(offset, here)
    if last is None or offset is None:
        raise ValueError(f"segment ({len(data)} bytes) has no frame with a readable clock stamp")
    return Stamps(last[0], last[1], offset)


@dataclass(frozen=True)
class Listed:
    """A segment and the wall clock (``time.time()``) of the first poll that listed it."""

    msn: int
    uri: str
    at: float


class RungWatch:
    """What the polls of one media playlist saw (sans-I/O: playlist text and time in)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.first: Listed | None = None
        self.newest: Listed | None = None
        self.next_msn: int | None = None

    def update(self, text: str, now: float) -> list[Listed]:
        """The segments this poll lists for the first time (raises ValueError on a bad playlist)."""
        pl = parse_media_playlist(text)
        known = self.newest.msn if self.newest is not None else -1
        new = [Listed(s.msn, s.uri, now) for s in pl.segments if s.msn > known]
        if new:
            self.newest = new[-1]
            if self.first is None:
                self.first = new[0]
        self.next_msn = pl.next_msn if self.next_msn is None else max(self.next_msn, pl.next_msn)
        return new


class LiveOutput(Protocol):
    """One stream's output on one side."""

    started: float  # wall clock at which the stream was started
    rungs: Sequence[str]

    def playlist(self, rung: str) -> str | None:
        """The rung's media playlist now, or None while there is none."""

    def segment(self, rung: str, uri: str) -> bytes | None:
        """A segment the playlist lists, or None when it is gone."""

    def delivered(self) -> set[str]:
        """The rungs the side delivers now (all, unless it dropped one on purpose)."""


@dataclass
class RungResult:
    segments: int  # listed during the window (exact, from media sequence numbers)
    expected: float  # what a stream keeping real time lists in that window
    lag: float | None  # seconds; None when not measured
    held_back: float  # seconds the publisher was held back by this receiver
    startup: float | None  # seconds from the stream's start to this rung's first segment
    error: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "segments": self.segments,
            "expected": round(self.expected, 2),
            "lag": None if self.lag is None else round(self.lag, 3),
            "held_back": round(self.held_back, 3),
            "startup": None if self.startup is None else round(self.startup, 3),
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class _Watched:
    output: LiveOutput
    rungs: dict[str, RungWatch]
    first_data: dict[str, bytes] = field(default_factory=dict)
    end_data: dict[str, bytes] = field(default_factory=dict)
    start_msn: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class EdgeWatch:
    """Polls every rung of every stream of one side: a warm-up, then the window."""

    def __init__(self, outputs: Sequence[LiveOutput], poll: float) -> None:
        self.poll = poll
        self.streams = [_Watched(o, {r: RungWatch(r) for r in o.rungs}) for o in outputs]
        self.window = 0.0

    def _round(self) -> None:
        for w in self.streams:
            for name, rung in w.rungs.items():
                text = w.output.playlist(name)
                if text is None:
                    continue
                try:
                    new = rung.update(text, time.time())
                except ValueError as exc:
                    w.errors[name] = f"bad playlist: {exc}"
                    continue
                if new and name not in w.first_data:
                    data = w.output.segment(name, new[0].uri)
                    if data is not None:
                        w.first_data[name] = data

    def _ready(self) -> bool:
        return all(
            w.rungs[name].first is not None for w in self.streams for name in w.output.delivered()
        )

    def run(
        self, seconds: float, startup_timeout: float, each_round: Callable[[], None] = lambda: None
    ) -> None:
        """Poll until every stream lists a segment on every rung it delivers (at most
        ``startup_timeout`` seconds), then for ``seconds``; keep the newest segments."""
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            each_round()
            self._round()
            if self._ready():
                break
            time.sleep(self.poll)
        for w in self.streams:
            w.start_msn = {n: r.next_msn for n, r in w.rungs.items() if r.next_msn is not None}
        start = time.monotonic()
        next_round = start
        while True:
            # A round that overran (a busy machine) is not made up with a burst of polls.
            next_round = max(next_round + self.poll, time.monotonic())
            time.sleep(max(0.0, next_round - time.monotonic()))
            each_round()
            self._round()
            if time.monotonic() - start >= seconds:
                break
        self.window = time.monotonic() - start
        for w in self.streams:
            for name, rung in w.rungs.items():
                if rung.newest is not None:
                    data = w.output.segment(name, rung.newest.uri)
                    if data is not None:
                        w.end_data[name] = data

    def results(self, segment_duration: float) -> list[dict[str, RungResult]]:
        """Per stream, per rung: the figures (decodes the kept segments; call it after
        the side has stopped, so decoding competes with nothing)."""
        expected = self.window / segment_duration
        out = []
        for w in self.streams:
            rungs = {}
            for name, rung in w.rungs.items():
                start = w.start_msn.get(name)
                segments = (
                    (rung.next_msn or 0) - start if start is not None else (rung.next_msn or 0)
                )
                startup = None if rung.first is None else rung.first.at - w.output.started
                res = RungResult(segments, expected, None, 0.0, startup, w.errors.get(name, ""))
                if rung.newest is not None and name in w.first_data and name in w.end_data:
                    try:
                        first = segment_stamps(w.first_data[name])
                        end = segment_stamps(w.end_data[name])
                    except ValueError as exc:
                        res.error = str(exc)
                    else:
                        res.held_back = max(0.0, (end.offset_ms - first.offset_ms) / 1000)
                        res.lag = rung.newest.at - end.last_ms / 1000 + res.held_back
                elif not res.error:
                    res.error = "no segment listed"
                rungs[name] = res
            out.append(rungs)
        return out
