"""One stream's encoded packets, fanned out to every WebRTC viewer.

The worker's TAP packets arrive on the event loop; :meth:`TapFanout.publish`
appends each to every viewer's bounded :class:`ViewerFeed` (a deque append, no
copy, no await), so one slow viewer can never hold up the others or the node:

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

from media import MediaPacket

log = logging.getLogger(__name__)


class ViewerFeed:
    """One viewer's queue of packets of one kind (``video`` or ``audio``)."""

    def __init__(self, kind: str, limit: int) -> None:
        self.kind = kind
        self.limit = limit
        self.dropped = 0
        self.closed = False
        self.waiting_keyframe = kind == "video"
        self._queue: collections.deque[MediaPacket] = collections.deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, packet: MediaPacket) -> None:
        if self.closed:
            return
        if self.kind == "video":
            if len(self._queue) >= self.limit:
                # Too slow: start over at the next keyframe.
                self.dropped += len(self._queue)
                self._queue.clear()
                self.waiting_keyframe = True
            if self.waiting_keyframe:
                if not packet.keyframe:
                    self.dropped += 1
                    return
                self.waiting_keyframe = False
        elif len(self._queue) >= self.limit:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(packet)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> MediaPacket | None:
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
        self.packets = 0
        self.video_codec = ""
        self.audio_codec = ""
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

    def publish(self, packet: MediaPacket) -> None:
        if self.closed or packet.config:
            return  # TAP video carries SPS/PPS in-band on every IDR
        self.packets += 1
        if packet.kind == "video":
            self.video_codec = packet.codec
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
        else:
            self.audio_codec = packet.codec
        for feed in self.feeds:
            if feed.kind == packet.kind:
                feed.push(packet)

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

    @property
    def dropped(self) -> int:
        return sum(f.dropped for f in self.feeds)
