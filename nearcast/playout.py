"""What the probe measures, and the player clock that decides when a frame is shown.

:class:`ProbeResult` holds one run's figures. :class:`Playout` "shows" frames
as a player would: a frame is shown at the later of its arrival and the previous
frame's time plus the PTS difference, and each wait over 100 ms beyond its due
time is a stall (a player rebuffering). WebRTC frames are shown on arrival, and
a gap over 250 ms between them is a stall.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STALL_GRACE = 0.1  # seconds late before a frame counts as a stall
WHEP_STALL_GAP = 0.25  # seconds between WebRTC frames that count as a stall


class ProbeError(Exception):
    """The stream cannot be probed; the message names the URL and the reason."""


@dataclass
class ProbeResult:
    url: str
    protocol: str
    frames: int = 0
    stamped: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    stalls: int = 0
    stall_seconds: float = 0.0
    startup_seconds: float | None = None
    seconds: float = 0.0
    rendition: str = ""
    # WHEP: the picture size received, and the audio frames decoded beside it.
    resolution: str = ""
    audio_frames: int = 0
    audio_rate: int = 0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "url": self.url,
            "protocol": self.protocol,
            "rendition": self.rendition,
            "seconds": round(self.seconds, 2),
            "frames": self.frames,
            "stamped": self.stamped,
            "latency_p50_ms": round(percentile(lat, 0.5), 1) if lat else None,
            "latency_p95_ms": round(percentile(lat, 0.95), 1) if lat else None,
            "latency_min_ms": round(lat[0], 1) if lat else None,
            "latency_max_ms": round(lat[-1], 1) if lat else None,
            "stalls": self.stalls,
            "stall_seconds": round(self.stall_seconds, 3),
            "startup_seconds": round(self.startup_seconds, 3)
            if self.startup_seconds is not None
            else None,
            **(
                {
                    "resolution": self.resolution,
                    "audio_frames": self.audio_frames,
                    "audio_rate": self.audio_rate,
                }
                if self.protocol == "whep"
                else {}
            ),
        }


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    k = max(0, min(len(sorted_values) - 1, int(round(p * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


class Playout:
    """A player's clock: frames are shown at their PTS pace, never before they arrive.

    ``skip`` seconds of media at the start are decoded but not shown: a player
    loads from the independent part (or segment start) before its start position
    and seeks forward to the position its hold-back asks for, as hls.js does.
    """

    def __init__(self, result: ProbeResult, started: float, realtime_gaps: bool = False) -> None:
        self.result = result
        self.started = started
        self.realtime_gaps = realtime_gaps
        self.skip = 0.0
        self._skip_until: float | None = None
        self._shown: float | None = None
        self._pts: float | None = None

    def frame(self, arrival: float, pts: float | None, stamp_ms: int | None) -> float | None:
        """When the frame is shown (wall clock), or None if it is skipped."""
        if pts is not None and self.skip > 0:
            if self._skip_until is None:
                self._skip_until = pts + self.skip - 1e-6
            if pts < self._skip_until:
                return None
        r = self.result
        r.frames += 1
        if self._shown is None:
            shown = arrival
            r.startup_seconds = arrival - self.started
        elif self.realtime_gaps or pts is None or self._pts is None:
            # WebRTC: rendered on arrival; a long gap between frames is a stall.
            shown = arrival
            gap = arrival - self._shown
            if gap > WHEP_STALL_GAP:
                r.stalls += 1
                r.stall_seconds += gap
        else:
            step = min(max(pts - self._pts, 0.0), 1.0)  # a discontinuity is not a pause
            due = self._shown + step
            if arrival > due + STALL_GRACE:
                r.stalls += 1
                r.stall_seconds += arrival - due
            shown = max(arrival, due)
        self._shown, self._pts = shown, pts
        if stamp_ms is not None:
            r.stamped += 1
            r.latencies_ms.append(shown * 1000.0 - stamp_ms)
        return shown
