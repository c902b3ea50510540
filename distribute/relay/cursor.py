"""Where a relay stands in one rendition of its upstream, and what it fetches next (pure).

Given each media playlist the upstream answers, :meth:`Cursor.plan` lists the steps
that bring this node's copy up to it, in order: an init segment when the map
changes, whole segments to start from (a short backfill, so a player has the
hold-back RFC 8216bis §4.4.3.8 asks for), then LL-HLS parts, each fetched once; a
segment whose parts were all fetched is assembled from them, never fetched again.
The adapter fetches what the steps name and reports each step done with
:meth:`Cursor.advance`; a step that fails is simply planned again from the next
playlist. :meth:`Cursor.next_request` is the blocking reload to ask for next
(``_HLS_msn``/``_HLS_part``, RFC 8216bis §6.2.5.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from distribute.relay.playlist import MediaPlaylist, PartRef, SegmentRef

# Complete segments a relay starts behind the live edge: HOLD-BACK is three target
# durations (RFC 8216bis §4.4.3.8), so a player can start at once.
BACKFILL_SEGMENTS = 3


@dataclass(frozen=True, slots=True)
class Init:
    uri: str


@dataclass(frozen=True, slots=True)
class Whole:
    """Fetch a complete segment (none of its parts were fetched)."""

    segment: SegmentRef


@dataclass(frozen=True, slots=True)
class Part:
    part: PartRef


@dataclass(frozen=True, slots=True)
class Assemble:
    """Every part of the segment is here: the segment is their concatenation."""

    segment: SegmentRef


@dataclass(frozen=True, slots=True)
class Discontinuity:
    """Segment ``msn`` follows an EXT-X-DISCONTINUITY upstream (a new worker run, or the
    upstream's own switch to another node): what follows starts a new generation."""

    msn: int


Step = Init | Whole | Part | Assemble | Discontinuity


class Cursor:
    """One rendition's progress: segments before ``next_msn`` are complete here, and
    ``parts`` holds the parts of segment ``next_msn`` fed so far."""

    def __init__(
        self, start: int | None = None, floor: int = 0, backfill: int = BACKFILL_SEGMENTS
    ) -> None:
        # Upstream number to start from (a generation's first segment), or None: the
        # live edge less ``backfill`` complete segments, but not before ``floor``.
        self.start = start
        self.floor = floor
        self.backfill = backfill
        self.next_msn: int | None = None
        self.parts: list[bytes] = []
        self.parts_duration = 0.0
        self.init_uri: str | None = None
        # Segments the upstream no longer listed when they were due (fell behind).
        self.skipped = 0
        # The upstream number this rendition's pull started at.
        self.first: int | None = None

    @property
    def started(self) -> bool:
        return self.next_msn is not None

    def plan(self, pl: MediaPlaylist) -> list[Step]:
        if self.next_msn is None:
            if self.start is None:
                first = max(self.floor, pl.next_msn - self.backfill)
            else:
                first = self.start
            self.next_msn = max(pl.sequence, min(first, pl.next_msn))
        if self.next_msn < pl.sequence:
            # Fell out of the upstream's window: go on from its oldest segment.
            self.skipped += pl.sequence - self.next_msn
            self.next_msn = pl.sequence
            self.parts, self.parts_duration = [], 0.0
        steps: list[Step] = []
        init = self.init_uri
        msn = self.next_msn
        # Where this rendition's pull began: a discontinuity there is no news to it.
        first = self.first if self.first is not None else msn
        self.first = first
        fed = len(self.parts)
        for seg in pl.segments:
            if seg.msn < msn:
                continue
            if seg.discontinuity and not fed and seg.msn > first:
                steps.append(Discontinuity(seg.msn))
            if seg.map_uri is not None and seg.map_uri != init and not seg.gap:
                steps.append(Init(seg.map_uri))
                init = seg.map_uri
            if fed and seg.msn == msn and len(seg.parts) >= fed:
                steps.extend(Part(p) for p in seg.parts[fed:])
                steps.append(Assemble(seg))
            else:
                steps.append(Whole(seg))
            fed = 0
            msn = seg.msn + 1
        if pl.trailing and pl.next_msn == msn:
            if pl.trailing_discontinuity and not fed and msn > first:
                steps.append(Discontinuity(msn))
            if pl.trailing_map is not None and pl.trailing_map != init:
                steps.append(Init(pl.trailing_map))
            steps.extend(Part(p) for p in pl.trailing[fed:])
        return steps

    def advance(self, step: Step, data: bytes = b"") -> bytes:
        """``step`` is done (``data``: what it fetched). Returns the assembled segment's
        bytes for :class:`Assemble`, else ``data``."""
        if isinstance(step, Init):
            self.init_uri = step.uri
            return data
        if isinstance(step, Discontinuity):
            return data
        if isinstance(step, Part):
            p = step.part
            if p.msn != self.next_msn or p.index != len(self.parts):
                raise ValueError(
                    f"part {p.msn}.{p.index} fed out of order (expected {self.next_msn}."
                    f"{len(self.parts)})"
                )
            self.parts.append(data)
            self.parts_duration += p.duration
            return data
        seg = step.segment
        if seg.msn < (self.next_msn or 0):
            raise ValueError(f"segment {seg.msn} fed twice")
        if isinstance(step, Assemble):
            data = b"".join(self.parts)
        self.next_msn = seg.msn + 1
        self.parts, self.parts_duration = [], 0.0
        return data

    def next_request(self, pl: MediaPlaylist) -> tuple[int, int] | None:
        """The blocking reload to send next (LL-HLS), or None: poll (no parts)."""
        if not pl.low_latency or pl.ended or self.next_msn is None:
            return None
        return self.next_msn, len(self.parts)
