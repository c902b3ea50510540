"""What the node asks of a transcode worker: the START frame's payload.

The node builds a :class:`Spec` per stream and sends it as JSON; the worker
parses it back with :meth:`Spec.from_json` before the first packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transcode.config import AudioProfile, Rendition


@dataclass
class Spec:
    """What the node asks of a worker (sent as the START frame)."""

    stream: str
    ladder: list[Rendition]
    audio: AudioProfile = field(default_factory=AudioProfile)
    segment_duration: float = 2.0
    x264_threads: int = 0
    fps_hint: float = 0.0
    live: bool = True
    degrade_lag: float = 1.5
    recover_after: float = 10.0
    # "ts" (MPEG-TS segments) or "fmp4" (CMAF: INIT frame, then fMP4 segments).
    segment_format: str = "ts"
    # LL-HLS part target in seconds; 0 sends no PART frames. Only with "fmp4".
    part_duration: float = 0.0
    # LL-HLS: parts in the lead of each run's first segment (hls.lead_parts); 0: no lead.
    lead_parts: int = 0
    # Rendition whose encoded H.264 packets, plus the stream's audio as Opus,
    # are sent as TAP frames for WebRTC viewers; empty sends none.
    tap: str = ""
    # With "ts": also package CMAF (RECORD_INIT / RECORD_SEGMENT frames) for the
    # recorder, so recordings are fMP4 whatever the viewers' format.
    record_fmp4: bool = False
    # After a restart: media time (ms) up to which the previous worker already delivered.
    # The node replays the source from its last keyframe; pictures before this are
    # decoded (they are references) but not encoded again, so viewers see no repeat.
    resume_ms: int = 0
    # Media time (ms) where the stream's fMP4 timeline starts, from the RENDITIONS frame of
    # its first run: later runs (a restart, a publisher back within the grace period)
    # continue that timeline. None: this run's first picture starts it.
    timeline_origin_ms: int | None = None

    def __post_init__(self) -> None:
        if self.segment_format not in ("ts", "fmp4"):
            raise ValueError(f"segment_format must be ts or fmp4, not {self.segment_format!r}")
        if self.part_duration < 0 or (self.part_duration and self.segment_format != "fmp4"):
            raise ValueError("part_duration needs segment_format fmp4 and must not be negative")

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Spec:
        return cls(
            stream=str(obj["stream"]),
            ladder=[Rendition(**r) for r in obj["ladder"]],
            audio=AudioProfile(**obj.get("audio", {})),
            segment_duration=float(obj.get("segment_duration", 2.0)),
            x264_threads=int(obj.get("x264_threads", 0)),
            fps_hint=float(obj.get("fps_hint", 0.0)),
            live=bool(obj.get("live", True)),
            degrade_lag=float(obj.get("degrade_lag", 1.5)),
            recover_after=float(obj.get("recover_after", 10.0)),
            segment_format=str(obj.get("segment_format", "ts")),
            part_duration=float(obj.get("part_duration", 0.0)),
            lead_parts=int(obj.get("lead_parts", 0)),
            resume_ms=int(obj.get("resume_ms", 0)),
            timeline_origin_ms=(
                None if obj.get("timeline_origin_ms") is None else int(obj["timeline_origin_ms"])
            ),
            tap=str(obj.get("tap", "")),
            record_fmp4=bool(obj.get("record_fmp4", False)),
        )
