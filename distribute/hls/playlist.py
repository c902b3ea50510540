"""HLS playlist writing (RFC 8216bis), as pure functions of the store's state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SegmentRef:
    msn: int
    duration: float
    uri: str
    discontinuity: bool = False
    gap: bool = False


@dataclass(frozen=True, slots=True)
class VariantRef:
    uri: str
    bandwidth: int
    average_bandwidth: int
    width: int
    height: int
    fps: float
    codecs: str


def target_duration(configured: float, segments: Sequence[SegmentRef]) -> int:
    """RFC 8216bis §4.4.3.1: every EXTINF, rounded to the nearest integer, is <= this."""
    longest = max((round(s.duration) for s in segments), default=0)
    return max(int(math.ceil(configured - 1e-9)), int(longest), 1)


def media_playlist(
    segments: Sequence[SegmentRef],
    *,
    configured_target: float,
    discontinuity_sequence: int,
    ended: bool,
) -> str:
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{target_duration(configured_target, segments)}",
        f"#EXT-X-MEDIA-SEQUENCE:{segments[0].msn if segments else 0}",
    ]
    if discontinuity_sequence:
        # §4.4.3.3: needed once segments carrying a discontinuity tag slide out.
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}")
    for s in segments:
        if s.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        if s.gap:
            lines.append("#EXT-X-GAP")
        lines.append(f"#EXTINF:{s.duration:.3f},")
        lines.append(s.uri)
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def master_playlist(variants: Sequence[VariantRef], audio_codec: str | None) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for v in sorted(variants, key=lambda v: -v.bandwidth):
        codecs = v.codecs + (f",{audio_codec}" if audio_codec else "")
        lines.append(
            f"#EXT-X-STREAM-INF:BANDWIDTH={v.bandwidth},AVERAGE-BANDWIDTH={v.average_bandwidth},"
            f'RESOLUTION={v.width}x{v.height},CODECS="{codecs}",FRAME-RATE={v.fps:.3f}'
        )
        lines.append(v.uri)
    return "\n".join(lines) + "\n"
