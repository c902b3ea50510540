"""HLS playlist writing (RFC 8216bis), as pure functions of the store's state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class PartRef:
    """One EXT-X-PART (RFC 8216bis §4.4.4.9)."""

    duration: float
    uri: str
    independent: bool = False


@dataclass(frozen=True, slots=True)
class SegmentRef:
    msn: int
    duration: float
    uri: str
    discontinuity: bool = False
    gap: bool = False
    # fMP4: the EXT-X-MAP URI of the init segment this segment needs (§4.4.4.5).
    map_uri: str | None = None
    # Wall-clock time of the first sample, for EXT-X-PROGRAM-DATE-TIME (§4.4.4.6); 0 = unknown.
    program_time: float = 0.0
    # LL-HLS parts of this segment, listed before its EXTINF (§4.4.4.9).
    parts: tuple[PartRef, ...] = ()


@dataclass(frozen=True, slots=True)
class LowLatency:
    """What an LL-HLS media playlist adds: server control, parts and their hint."""

    part_target: float
    # Parts of the segment being built (no EXTINF yet), then the hinted next part.
    pending_parts: tuple[PartRef, ...] = ()
    pending_program_time: float = 0.0
    pending_discontinuity: bool = False
    pending_map_uri: str | None = None
    preload_hint: str | None = None
    # (uri, last msn, last part) of every other rendition (§4.4.5.4).
    rendition_reports: tuple[tuple[str, int, int], ...] = field(default=())
    # Delta update (§6.2.5.1): segments replaced by EXT-X-SKIP.
    skipped: int = 0

    @property
    def part_hold_back(self) -> float:
        # §4.4.3.8: at least twice the part target; three times is recommended.
        # Rounded up to the millisecond so that float error never puts it below 3x.
        return math.ceil(3 * self.part_target * 1000 + 1e-6) / 1000


def target_duration(configured: float, segments: Sequence[SegmentRef]) -> int:
    """RFC 8216bis §4.4.3.1: every EXTINF, rounded to the nearest integer, is <= this."""
    longest = max((round(s.duration) for s in segments), default=0)
    return max(int(math.ceil(configured - 1e-9)), int(longest), 1)


def can_skip_until(target: int) -> float:
    """§4.4.3.8: CAN-SKIP-UNTIL is at least six target durations."""
    return 6.0 * target


def program_date_time(t: float) -> str:
    stamp = datetime.fromtimestamp(t, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def part_duration(seconds: float) -> str:
    """A part's DURATION (or the PART-TARGET), five decimals rounded up: a part written
    this way is never longer than the part target written this way.

    Rounded up rather than to the nearest so that, where the duration has no exact
    decimal (seven frames at 30 fps: 0.233333 s), a player that adds the durations up
    runs ahead of the media's own timestamps by a few microseconds a part, never
    behind. Shaka Player 5.2 calls abort() before an append whose offset (playlist
    time minus ``tfdt``) differs from the one it set by 1 ms or more, and it sets a
    negative offset (any viewer who joins once the stream's first segment has left the
    playlist) 1 ms high (a workaround for old Edge): the difference is then 1 ms plus
    the drift, so a drift behind aborts on every part, and Chromium drops each part up
    to the next keyframe (shaka-player#10589, fixed upstream, not in 5.2.12).
    """
    return f"{math.ceil(seconds * 1e5 - 1e-6) / 1e5:.5f}"


def _part_line(p: PartRef) -> str:
    indep = ",INDEPENDENT=YES" if p.independent else ""
    return f'#EXT-X-PART:DURATION={part_duration(p.duration)},URI="{p.uri}"{indep}'


def media_playlist(
    segments: Sequence[SegmentRef],
    *,
    configured_target: float,
    discontinuity_sequence: int,
    ended: bool,
    low_latency: LowLatency | None = None,
    first_msn: int | None = None,
    vod: bool = False,
    tail: bool = True,
) -> str:
    """One media playlist. ``first_msn`` is the media sequence number when the list is empty.

    ``tail=False`` leaves out what :func:`playlist_tail` writes (rendition reports and
    ENDLIST), for a caller that keeps the two apart: the reports change with every
    other rendition's part, the rest only with this rendition's."""
    target = target_duration(configured_target, segments)
    fmp4 = any(s.map_uri for s in segments) or bool(low_latency and low_latency.pending_map_uri)
    # §7: EXT-X-MAP in a media playlist needs version 6, EXT-X-SKIP version 9.
    version = 9 if low_latency else 7 if fmp4 else 3
    msn0 = segments[0].msn if segments else (first_msn or 0)
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{version}", f"#EXT-X-TARGETDURATION:{target}"]
    if vod:
        lines.append("#EXT-X-PLAYLIST-TYPE:" + ("VOD" if ended else "EVENT"))
    ll = low_latency
    if ll is not None:
        lines.append(
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
            f"CAN-SKIP-UNTIL={can_skip_until(target):.1f},PART-HOLD-BACK={ll.part_hold_back:.3f}"
        )
        lines.append(f"#EXT-X-PART-INF:PART-TARGET={part_duration(ll.part_target)}")
    lines.append(f"#EXT-X-MEDIA-SEQUENCE:{msn0 - (ll.skipped if ll else 0)}")
    if discontinuity_sequence:
        # §4.4.3.3: needed once segments carrying a discontinuity tag slide out.
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}")
    if ll is not None and ll.skipped:
        lines.append(f"#EXT-X-SKIP:SKIPPED-SEGMENTS={ll.skipped}")
    current_map: str | None = None
    date_next = True
    for s in segments:
        if s.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
            date_next = True
        if s.map_uri and s.map_uri != current_map:
            lines.append(f'#EXT-X-MAP:URI="{s.map_uri}"')
            current_map = s.map_uri
        if s.program_time and date_next:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{program_date_time(s.program_time)}")
            date_next = False
        if s.gap:
            lines.append("#EXT-X-GAP")
            date_next = True
        lines.extend(_part_line(p) for p in s.parts)
        lines.append(f"#EXTINF:{s.duration:.5f},")
        lines.append(s.uri)
    if ll is not None and not ended:
        if ll.pending_parts or ll.preload_hint:
            if ll.pending_discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
                date_next = True
            if ll.pending_map_uri and ll.pending_map_uri != current_map:
                lines.append(f'#EXT-X-MAP:URI="{ll.pending_map_uri}"')
            if ll.pending_program_time and (date_next or not segments):
                lines.append(
                    f"#EXT-X-PROGRAM-DATE-TIME:{program_date_time(ll.pending_program_time)}"
                )
        lines.extend(_part_line(p) for p in ll.pending_parts)
        if ll.preload_hint:
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{ll.preload_hint}"')
    text = "\n".join(lines) + "\n"
    if tail:
        text += playlist_tail(ll.rendition_reports if ll is not None else (), ended)
    return text


def playlist_tail(reports: Sequence[tuple[str, int, int]], ended: bool) -> str:
    """The end of a media playlist: EXT-X-RENDITION-REPORT of every other rendition
    (§4.4.5.4, as (uri, last msn, last part)) and, once the stream ended, ENDLIST."""
    lines = [
        f'#EXT-X-RENDITION-REPORT:URI="{uri}",LAST-MSN={last_msn},LAST-PART={last_part}\n'
        for uri, last_msn, last_part in reports
    ]
    if ended:
        lines.append("#EXT-X-ENDLIST\n")
    return "".join(lines)


def master_playlist(
    variants: Sequence[VariantRef],
    audio_codec: str | None,
    version: int = 3,
    independent: bool = True,
    notes: Sequence[str] = (),
) -> str:
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{version}"]
    # Plain comments (§4.1: a line starting with # but not #EXT), for the people who
    # read playlists: e.g. which rungs admission left out, and why.
    lines += [f"# {note}" for note in notes]
    if independent:
        # §4.4.2.1: every segment starts with a keyframe. Not so for LL-HLS streams,
        # whose first segment is split into a lead and the rest.
        lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    for v in sorted(variants, key=lambda v: -v.bandwidth):
        codecs = v.codecs + (
            f",{audio_codec}" if audio_codec and audio_codec not in v.codecs else ""
        )
        lines.append(
            f"#EXT-X-STREAM-INF:BANDWIDTH={v.bandwidth},AVERAGE-BANDWIDTH={v.average_bandwidth},"
            f'RESOLUTION={v.width}x{v.height},CODECS="{codecs}",FRAME-RATE={v.fps:.3f},'
            # No 608/708 captions in the video: players need not probe segments for them
            # (Shaka Player otherwise fetches the segment still being built, and fails).
            "CLOSED-CAPTIONS=NONE"
        )
        lines.append(v.uri)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class VariantRef:
    uri: str
    bandwidth: int
    average_bandwidth: int
    width: int
    height: int
    fps: float
    codecs: str
