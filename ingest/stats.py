"""Live measurements of one publish, whatever the protocol (``GET /v1/streams``).

Packets are counted into quarter-second buckets, so the bit rate and frame rate
over any recent window cost a short sum, never a scan of every packet.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from media import MediaPacket

_BUCKET = 0.25
_KEEP = 30.0  # seconds of buckets kept: the longest bitrate_window
# A DTS this far (ms) behind the highest of its kind is a late packet, dropped; further
# back it is the publisher restarting its clock, which the transcode stage handles.
LATE_WINDOW_MS = 2000


class IngestStats:
    def __init__(self, protocol: str, remote: str, now: float) -> None:
        self.protocol = protocol
        self.remote = remote
        self.started = now
        self.bytes = 0
        self.frames = {"video": 0, "audio": 0}
        self.codecs: dict[str, str] = {}
        # Packets whose DTS is behind the highest one of their kind (dropped: an HLS
        # muxer refuses non-monotonic DTS, and would fail the whole stream).
        self.late = 0
        # DTS jumps back by more than LATE_WINDOW_MS: the publisher restarted its clock.
        self.timestamp_resets = 0
        # Packets the node discarded (after the publish was closed, or unusable).
        self.dropped = 0
        self.keyframe_interval = 0.0
        self._last_key: int | None = None
        self._max_dts: dict[str, int] = {}
        # (bucket index, bytes, video frames)
        self._buckets: deque[list[int]] = deque()

    def add(self, packet: MediaPacket, now: float) -> bool:
        """Count one received packet; False when it is late and must be dropped."""
        size = len(packet.data)
        self.bytes += size
        if packet.config:
            self.codecs[packet.kind] = packet.codec
            return True
        top = self._max_dts.get(packet.kind)
        if top is not None and packet.dts < top:
            if top - packet.dts <= LATE_WINDOW_MS:
                self.late += 1
                return False
            self.timestamp_resets += 1
        self._max_dts[packet.kind] = packet.dts
        self.frames[packet.kind] += 1
        video = packet.kind == "video"
        if video and packet.keyframe:
            if self._last_key is not None and packet.dts > self._last_key:
                self.keyframe_interval = (packet.dts - self._last_key) / 1000.0
            self._last_key = packet.dts
        index = int(now / _BUCKET)
        buckets = self._buckets
        if not buckets or buckets[-1][0] != index:
            buckets.append([index, 0, 0])
            oldest = index - int(_KEEP / _BUCKET)
            while buckets[0][0] < oldest:
                buckets.popleft()
        b = buckets[-1]
        b[1] += size
        b[2] += video
        return True

    def _span(self, now: float, window: float) -> tuple[float, int]:
        span = min(window, max(now - self.started, _BUCKET))
        return span, int((now - span) / _BUCKET)

    def bitrate(self, now: float, window: float = 5.0) -> float:
        """Bits per second over the last ``window`` seconds (or since the start)."""
        span, first = self._span(now, window)
        total = sum(b[1] for b in self._buckets if b[0] >= first)
        return total * 8 / span

    def fps(self, now: float, window: float = 5.0) -> float:
        span, first = self._span(now, window)
        return sum(b[2] for b in self._buckets if b[0] >= first) / span

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "client": self.remote,
            "video_codec": self.codecs.get("video"),
            "audio_codec": self.codecs.get("audio"),
            "bitrate": round(self.bitrate(now)),
            "fps": round(self.fps(now), 2),
            "keyframe_interval": round(self.keyframe_interval, 3),
            "uptime": round(now - self.started, 3),
            "bytes": self.bytes,
            "video_frames": self.frames["video"],
            "audio_frames": self.frames["audio"],
            "late_packets": self.late,
            "timestamp_resets": self.timestamp_resets,
            "dropped_packets": self.dropped,
        }
