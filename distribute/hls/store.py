"""Every live HLS stream of this node, and the numbering that keeps their URLs apart.

The store is what the transcode pool reports into and what the HTTP layer
reads from: one :class:`~distribute.hls.stream.LiveStream` per tenant and name,
kept for ``hls.retain_ended`` after it ends.
"""

from __future__ import annotations

import time

from distribute.config import HlsConfig
from distribute.hls.stream import LiveStream
from media import StreamKey

# 2024-01-01T00:00:00Z: media sequence numbers count half seconds from here.
SEQUENCE_EPOCH = 1_704_067_200


def first_sequence(now: float) -> int:
    """The first media sequence number of a stream opened at ``now``.

    Complete segments are served ``immutable``, so a URL must never name other
    bytes later. A stream name is reused (a class every day, a publisher back after
    the grace period, a restarted node) and would restart at ``0.ts``; instead a
    new stream starts at the half seconds since 2024-01-01. No segment is shorter
    than 0.5 s (``hls.segment_duration``; an LL-HLS lead segment needs segments of
    0.7 s or more), so no earlier stream of the name, on this node or before its
    restart, got that far; and the number fits 31 bits until 2058.
    """
    return max(0, int((now - SEQUENCE_EPOCH) * 2))


class Store:
    """Every live stream of this node, by tenant and name."""

    def __init__(self, config: HlsConfig) -> None:
        self.config = config
        self.streams: dict[tuple[str, str], LiveStream] = {}

    def open(self, key: StreamKey, now: float | None = None) -> LiveStream:
        now = time.time() if now is None else now
        old = self.streams.get((key.tenant, key.stream))
        s = old
        if s is None or (s.ended and s.publisher_connected is False and s.ended_at is not None):
            first = first_sequence(now)
            if old is not None:  # the clock never goes back on this node's own numbers
                first = max(first, old._next_msn, old._init_seq + 1)
            s = LiveStream(key, self.config.for_tenant(key.tenant), now, first_msn=first)
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
