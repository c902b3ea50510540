"""WHEP viewers fed from a pulled CMAF rendition: the relay side of the WebRTC tap.

A node that holds a stream packages its WebRTC tap (H.264 without B-frames, Opus)
as the hidden LL-HLS rendition :data:`TAP_RENDITION` (``/{tenant}/{stream}/webrtc/``,
never in the master playlist; see nearcast.session): on fMP4 streams (the default
``hls.segment_format``) of nodes with ``webrtc.enabled``. Its segments start at the
tap's IDRs and carry the tap rung's segment numbers; its parts are the other
renditions' parts. A node that pulls the stream
from it hands what it fetches to a :class:`CmafWhepSource`, which publishes the
same packets the origin's tap publishes into its own :class:`WhepServer` fan-out:
re-packetized (length-prefixed NAL units back to Annex B with the ``avcC``'s
SPS/PPS before every IDR, Opus as is), never decoded or encoded.

Use, on the event loop::

    source = CmafWhepSource(whep_server, StreamKey("live", "cam"))  # opens the fan-out
    source.init(init_bytes)          # the EXT-X-MAP (init-N.mp4)
    source.fragment(part_bytes)      # each part (N.P.m4s) or segment (N.m4s), in order
    source.discontinuity()           # an EXT-X-DISCONTINUITY with the same EXT-X-MAP
    source.init(other_init_bytes)    # a new EXT-X-MAP: a discontinuity too
    source.close()                   # the stream ended here: its WHEP sessions close

A pull starts at the newest part marked ``INDEPENDENT=YES`` (or at a segment), then
takes every following part in order, each through a blocking reload
(``?_HLS_msn=M&_HLS_part=P`` of the ``EXT-X-PRELOAD-HINT``); tests/e2e/
test_whep_cmaf_e2e.py does exactly that. Without LL-HLS upstream, pull whole segments
and give ``max_backlog`` at least a segment's duration.

- :meth:`CmafWhepSource.init` with bytes equal to the current init is a no-op, so a
  puller may pass the EXT-X-MAP of every segment. New init bytes (a new worker run
  upstream, new parameter sets) restart the fan-out: viewers wait for the next IDR
  (:meth:`TapFanout.restart`), as they do on the origin when its worker restarts.
- :meth:`CmafWhepSource.fragment` takes one or more ``moof``+``mdat`` pairs. Bad
  bytes raise :class:`ValueError` naming the stream and what is wrong; nothing of
  that fragment is published and the source stays usable.
- Timestamps: milliseconds of the fMP4 timeline minus the origin packager's
  :data:`~containers.cmaf.TIMELINE_OFFSET`, so they equal the origin tap's. Video
  DTS are the decode times shifted by the first sample's composition offset (the
  packager starts decode times a few frames early), so a B-frame-free stream gets
  DTS == PTS, as the tap contract has it.
- Pacing: parts arrive whole, a part's worth of frames at once. aiortc sends a packet
  the moment its track is asked for one, so the source releases each packet at its
  media time on a wall clock anchored at the first packet (one timer, re-armed):
  viewers see frames spaced as they were encoded, about one part behind the pull.
  Late packets go at once; a timeline jump re-anchors the clock; more than
  ``max_backlog`` seconds queued (whole segments pulled, a start behind the live
  edge) go at once (see :class:`Pacer`). ``pace=False`` publishes at once (tests, or
  a caller that paces itself).

The core is sans-I/O: :class:`CmafDemuxer` (bytes in, :class:`~media.MediaPacket` out)
and :class:`Pacer` (packets and ``now`` in, due packets out); :class:`CmafWhepSource`
only adds the event loop's timer.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from containers.cmaf import TIMELINE_OFFSET
from containers.mp4box import ParsedTrack, parse_fragments, parse_init
from media import MediaPacket, StreamKey

log = logging.getLogger(__name__)

# The hidden rendition an origin packages its WebRTC tap as (/{tenant}/{stream}/webrtc/).
TAP_RENDITION = "webrtc"
# A timeline that jumps this far ahead of, or back from, the last packet released
# re-anchors the pacing clock instead of stalling or bursting.
MAX_EARLY = 2.0
MAX_BACK = 0.5
# Seconds of media the pacer holds at most before it releases the excess at once.
MAX_BACKLOG = 3.0
# Packets held for pacing, at most (about 50 s of 30 fps video and Opus): a caller
# that pushes faster than real time loses the oldest rather than growing memory.
MAX_QUEUED = 4096

_START = b"\x00\x00\x00\x01"
_NON_SYNC = 0x00010000  # sample_is_non_sync_sample (ISO/IEC 14496-12 §8.8.3.1)


class WhepSink(Protocol):
    """What the source feeds: :class:`distribute.whep.server.WhepServer` is one."""

    def open(self, key: StreamKey) -> object: ...

    def feed(self, key: StreamKey, packet: MediaPacket) -> None: ...

    def restart(self, key: StreamKey) -> None: ...

    def end(self, key: StreamKey) -> None: ...


@dataclass(frozen=True, slots=True)
class _Video:
    track_id: int
    timescale: int
    length_size: int
    params: bytes  # SPS and PPS, Annex B
    edit: int = 0  # the edit list's media time: taken off every presentation time


@dataclass(frozen=True, slots=True)
class _Audio:
    track_id: int
    timescale: int


def _avcc(record: bytes) -> tuple[int, bytes]:
    """(NAL length size, SPS+PPS as Annex B) of an AVCDecoderConfigurationRecord."""
    if len(record) < 7 or record[0] != 1:
        raise ValueError("avcC is truncated or not version 1")
    length_size = (record[4] & 0x03) + 1
    out = bytearray()
    pos = 5
    for count_mask in (0x1F, 0xFF):
        if pos >= len(record):
            raise ValueError("avcC parameter set count is truncated")
        count = record[pos] & count_mask
        pos += 1
        for _ in range(count):
            if pos + 2 > len(record):
                raise ValueError("avcC parameter set length is truncated")
            (n,) = struct.unpack_from(">H", record, pos)
            pos += 2
            if n == 0 or pos + n > len(record):
                raise ValueError("avcC parameter set overruns the record")
            out += _START + record[pos : pos + n]
            pos += n
    return length_size, bytes(out)


def _annexb(sample: bytes, length_size: int) -> tuple[bytes, bool]:
    """A length-prefixed access unit as Annex B; and whether it carries an SPS."""
    out = bytearray()
    pos = 0
    has_sps = False
    while pos < len(sample):
        if pos + length_size > len(sample):
            raise ValueError(f"NAL unit length at byte {pos} is truncated")
        n = int.from_bytes(sample[pos : pos + length_size], "big")
        pos += length_size
        if n == 0 or pos + n > len(sample):
            raise ValueError(f"NAL unit of {n} bytes at byte {pos} overruns its sample")
        has_sps = has_sps or sample[pos] & 0x1F == 7
        out += _START + sample[pos : pos + n]
        pos += n
    return bytes(out), has_sps


def _ms(ticks: int, timescale: int) -> int:
    """``ticks`` in milliseconds, rounded to the nearest."""
    return (ticks * 1000 + timescale // 2) // timescale


class CmafDemuxer:
    """Init segment and fragments of a tap rendition in, tap packets out (pure)."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.init_data: bytes | None = None
        self.video: _Video | None = None
        self.audio: _Audio | None = None
        # Composition offset of the first video sample since the init (or a
        # discontinuity): decode times + this are the DTS (see the module docstring).
        self._shift: int | None = None

    def init(self, data: bytes) -> bool:
        """An init segment. True when it is new (a discontinuity); False when it equals
        the current one. Raises ValueError (keeping the current one) when it is bad."""
        if data == self.init_data:
            return False
        try:
            tracks = parse_init(data)
        except (ValueError, struct.error) as exc:
            raise ValueError(f"{self.name}: bad init segment: {exc}") from None
        video, audio = self._tracks(tracks)
        self.init_data = bytes(data)
        self.video, self.audio = video, audio
        self._shift = None
        return True

    def _tracks(self, tracks: list[ParsedTrack]) -> tuple[_Video, _Audio | None]:
        video: _Video | None = None
        audio: _Audio | None = None
        for t in tracks:
            if t.timescale <= 0:
                raise ValueError(f"{self.name}: track {t.track_id} has timescale 0")
            if t.handler == "vide":
                if t.codec != "avc1":
                    raise ValueError(f"{self.name}: video is {t.codec!r}; WHEP sends H.264 only")
                if video is None:
                    try:
                        length_size, params = _avcc(t.config)
                    except ValueError as exc:
                        raise ValueError(f"{self.name}: bad init segment: {exc}") from None
                    video = _Video(t.track_id, t.timescale, length_size, params, t.edit_offset)
            elif t.handler == "soun":
                if t.codec != "Opus":
                    raise ValueError(
                        f"{self.name}: audio is {t.codec!r}; WHEP sends Opus only "
                        f"(pull the {TAP_RENDITION} rendition)"
                    )
                audio = audio or _Audio(t.track_id, t.timescale)
        if video is None:
            raise ValueError(f"{self.name}: init segment has no video track")
        return video, audio

    def discontinuity(self) -> None:
        """What follows starts a new timeline (EXT-X-DISCONTINUITY)."""
        self._shift = None

    def fragment(self, data: bytes) -> list[MediaPacket]:
        """The packets of one or more moof+mdat pairs, in time order."""
        if self.video is None:
            raise ValueError(f"{self.name}: fragment before any init segment")
        try:
            fragments = parse_fragments(data)
        except (ValueError, struct.error) as exc:
            raise ValueError(f"{self.name}: bad fragment: {exc}") from None
        offset = TIMELINE_OFFSET * 1000
        video, audio = self.video, self.audio
        shift = self._shift
        vout: list[MediaPacket] = []
        aout: list[MediaPacket] = []
        for frag in fragments:
            for run in frag.runs:
                decode = run.base_decode_time
                if run.track_id == video.track_id:
                    for s in run.samples:
                        if shift is None:
                            shift = s.cts
                        key = not s.flags & _NON_SYNC
                        try:
                            payload, has_sps = _annexb(s.data, video.length_size)
                        except ValueError as exc:
                            raise ValueError(
                                f"{self.name}: bad video sample at {decode}: {exc}"
                            ) from None
                        if key and not has_sps:
                            # In-band parameter sets on every IDR, as the tap has them:
                            # a viewer that joins there can decode.
                            payload = video.params + payload
                        pts = _ms(decode + s.cts - video.edit, video.timescale) - offset
                        dts = min(pts, _ms(decode + shift - video.edit, video.timescale) - offset)
                        vout.append(MediaPacket("video", "h264", pts, dts, payload, key))
                        decode += s.duration
                elif audio is not None and run.track_id == audio.track_id:
                    for s in run.samples:
                        pts = _ms(decode, audio.timescale) - offset
                        aout.append(MediaPacket("audio", "opus", pts, pts, s.data, True))
                        decode += s.duration
        self._shift = shift
        # Interleaved by time; each kind stays in its decode order whatever its DTS.
        return list(heapq.merge(vout, aout, key=lambda p: p.dts))


class Pacer:
    """Releases packets at their media time on a wall clock (pure: ``now`` is given).

    The clock is anchored at the first packet. Packets that are late (the pull was
    slow) go at once, so the viewers catch up rather than stay behind; a timeline
    that jumps (by more than :data:`MAX_EARLY` ahead or :data:`MAX_BACK` back)
    re-anchors the clock; a queue spanning more than ``max_backlog`` seconds (fed
    faster than real time, e.g. a pull that started behind the live edge) releases
    the excess at once, so pacing never adds more than that much delay.
    """

    def __init__(self, max_backlog: float = MAX_BACKLOG, max_queued: int = MAX_QUEUED) -> None:
        self._queue: collections.deque[MediaPacket] = collections.deque()
        self._anchor: float | None = None  # wall time of media time 0, in seconds
        self._last: int | None = None  # DTS of the last packet released, ms
        self.max_backlog_ms = round(max_backlog * 1000)
        self.max_queued = max_queued
        self.dropped = 0
        self.reanchored = 0

    def __len__(self) -> int:
        return len(self._queue)

    def reset(self) -> None:
        """A discontinuity: forget the queued packets and the clock."""
        self._queue.clear()
        self._anchor = None
        self._last = None

    def push(self, packets: list[MediaPacket]) -> None:
        self._queue.extend(packets)
        while len(self._queue) > self.max_queued:
            self._queue.popleft()
            self.dropped += 1

    def _jumped(self, dts: int) -> bool:
        last = self._last
        return last is not None and not last - MAX_BACK * 1000 <= dts <= last + MAX_EARLY * 1000

    def pop_due(self, now: float) -> list[MediaPacket]:
        """The packets due at ``now``, in order."""
        out: list[MediaPacket] = []
        q = self._queue
        behind = False
        while q:
            head = q[0]
            if self._anchor is None or self._jumped(head.dts):
                if self._anchor is not None:
                    self.reanchored += 1
                self._anchor = now - head.dts / 1000
            if q[-1].dts - head.dts > self.max_backlog_ms:
                behind = True
            else:
                if behind:  # caught up: pace the rest from here
                    behind = False
                    self._anchor = now - head.dts / 1000
                if self._anchor + head.dts / 1000 > now:
                    break
            out.append(q.popleft())
            self._last = head.dts
        return out

    def next_at(self) -> float | None:
        """When the next queued packet is due (None: nothing queued)."""
        if not self._queue:
            return None
        if self._anchor is None:
            return float("-inf")
        return self._anchor + self._queue[0].dts / 1000


class CmafWhepSource:
    """One pulled stream's tap rendition, published into a WHEP server's fan-out."""

    def __init__(
        self,
        whep: WhepSink,
        key: StreamKey,
        *,
        pace: bool = True,
        max_backlog: float = MAX_BACKLOG,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.whep = whep
        self.key = key
        self.demuxer = CmafDemuxer(f"[whep-cmaf {key}]")
        self.pacer = Pacer(max_backlog)
        self.pace = pace
        self.closed = False
        self.published = 0
        self.restarts = 0
        self._loop = asyncio.get_running_loop() if pace else None
        self._clock = clock or (self._loop.time if self._loop is not None else None)
        self._timer: asyncio.TimerHandle | None = None
        whep.open(key)
        log.info("[whep-cmaf %s] source open", key)

    def init(self, data: bytes) -> None:
        """An init segment (EXT-X-MAP). A new one restarts the viewers at the next IDR."""
        self._check_open()
        first = self.demuxer.init_data is None
        if self.demuxer.init(data) and not first:
            self._restart("new init segment")

    def discontinuity(self) -> None:
        """EXT-X-DISCONTINUITY: the next fragment starts a new timeline at an IDR."""
        self._check_open()
        self.demuxer.discontinuity()
        self._restart("discontinuity")

    def fragment(self, data: bytes) -> int:
        """A part or segment (moof+mdat pairs), in playlist order. Returns the packets
        it held."""
        self._check_open()
        packets = self.demuxer.fragment(data)
        if not self.pace:
            for p in packets:
                self.whep.feed(self.key, p)
            self.published += len(packets)
            return len(packets)
        self.pacer.push(packets)
        self._pump()
        return len(packets)

    def close(self) -> None:
        """The stream ended: queued packets are dropped and its WHEP sessions close."""
        if self.closed:
            return
        self.closed = True
        self._cancel()
        self.pacer.reset()
        self.whep.end(self.key)
        log.info(
            "[whep-cmaf %s] source closed (%d packets, %d restarts)",
            self.key,
            self.published,
            self.restarts,
        )

    # -- internals ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"[whep-cmaf {self.key}] source is closed")

    def _restart(self, why: str) -> None:
        log.info("[whep-cmaf %s] %s: viewers restart at the next IDR", self.key, why)
        self.restarts += 1
        self._cancel()
        self.pacer.reset()
        self.whep.restart(self.key)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pump(self) -> None:
        self._timer = None
        if self.closed:
            return
        assert self._clock is not None and self._loop is not None
        now = self._clock()
        for p in self.pacer.pop_due(now):
            self.whep.feed(self.key, p)
            self.published += 1
        at = self.pacer.next_at()
        if at is not None:
            self._cancel()
            self._timer = self._loop.call_later(max(0.0, at - now), self._pump)
