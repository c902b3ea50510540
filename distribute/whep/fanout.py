"""One stream's encoded packets, fanned out to every WebRTC viewer.

The worker's TAP packets arrive on the event loop; :meth:`TapFanout.publish`
wraps each once as the :class:`av.Packet` aiortc sends (its senders only read
it) and appends that one object to every viewer's bounded :class:`ViewerFeed`
(a deque append, no copy, no await), so one slow viewer can never hold up the
others or the node:

- video: a feed that is full is emptied and waits for the next keyframe, so the
  viewer skips ahead to a clean picture instead of decoding garbage;
- audio: a feed that is full drops its oldest packet.

A new viewer's video starts at the next keyframe. The worker forces an IDR on
the segment grid (every ``hls.segment_duration``), so that is at most one
segment away. Replaying a cached GOP instead would start the picture sooner but
as a burst of old timestamps, which makes a browser's jitter buffer grow and the
viewer sit further behind live for the rest of the session.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from fractions import Fraction
from typing import Any

import av

from media import MediaPacket

log = logging.getLogger(__name__)

MS = Fraction(1, 1000)


def to_av_packet(packet: MediaPacket) -> av.Packet[Any]:
    """``packet`` as aiortc's senders take it: encoded data with millisecond timestamps."""
    out = av.Packet(packet.data)
    out.pts = packet.pts
    out.dts = packet.dts
    out.time_base = MS
    out.is_keyframe = packet.keyframe
    return out


class ViewerFeed:
    """One viewer's queue of packets of one kind (``video`` or ``audio``)."""

    def __init__(self, kind: str, limit: int) -> None:
        self.kind = kind
        self.limit = limit
        self.dropped = 0
        self.closed = False
        self.waiting_keyframe = kind == "video"
        self._queue: collections.deque[av.Packet[Any]] = collections.deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, packet: MediaPacket, out: av.Packet[Any] | None = None) -> int:
        """Queue ``out``, the av.Packet of ``packet`` (made here when not given).
        Returns how many packets this dropped."""
        if self.closed:
            return 0
        dropped = 0
        if self.kind == "video":
            if len(self._queue) >= self.limit:
                # Too slow: start over at the next keyframe.
                dropped = len(self._queue)
                self._queue.clear()
                self.waiting_keyframe = True
            if self.waiting_keyframe:
                if not packet.keyframe:
                    self.dropped += dropped + 1
                    return dropped + 1
                self.waiting_keyframe = False
        elif len(self._queue) >= self.limit:
            self._queue.popleft()
            dropped = 1
        self.dropped += dropped
        self._queue.append(to_av_packet(packet) if out is None else out)
        self._ready.set()
        return dropped

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> av.Packet[Any] | None:
        """The next packet; None once the feed is closed (the stream ended)."""
        while not self._queue:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()


class TapFanout:
    """All viewers of one stream."""

    def __init__(self, name: str, queue_limit: int) -> None:
        self.name = name
        self.queue_limit = queue_limit
        self.feeds: set[ViewerFeed] = set()
        self.closed = False
        self._warned_reorder = False

    def attach(self, kind: str) -> ViewerFeed:
        feed = ViewerFeed(kind, self.queue_limit)
        if self.closed:
            feed.close()
        self.feeds.add(feed)
        return feed

    def detach(self, feed: ViewerFeed) -> None:
        feed.close()
        self.feeds.discard(feed)

    def publish(self, packet: MediaPacket) -> int:
        """Hand ``packet`` to every viewer of its kind; returns how many packets the
        slow ones dropped."""
        if self.closed or packet.config:
            return 0  # TAP video carries SPS/PPS in-band on every IDR
        if packet.kind == "video":
            if packet.pts != packet.dts and not self._warned_reorder:
                # RTP carries presentation timestamps in send order; browsers' WebRTC
                # H.264 path expects no reordering (it assumes B-frame-free streams).
                self._warned_reorder = True
                log.warning(
                    "[whep %s] tap rendition has B-frames (pts %d != dts %d): "
                    "WebRTC viewers may stutter; encode it with bframes=0",
                    self.name,
                    packet.pts,
                    packet.dts,
                )
        out = None
        dropped = 0
        for feed in self.feeds:
            if feed.kind == packet.kind:
                if out is None:
                    out = to_av_packet(packet)
                dropped += feed.push(packet, out)
        return dropped

    def restart(self) -> None:
        """The worker restarted: its next packets are a new sequence starting at an IDR."""
        for feed in self.feeds:
            if feed.kind == "video":
                feed.waiting_keyframe = True

    def close(self) -> None:
        self.closed = True
        for feed in self.feeds:
            feed.close()
        self.feeds.clear()
