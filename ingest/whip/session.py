"""One WHIP publish: an aiortc peer connection feeding one node publication."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from ingest.metrics import IngestMetrics
from ingest.sink import Publication, PublishRefused
from ingest.source import SourceGuard
from ingest.whip.config import WhipConfig
from ingest.whip.mapper import Timeline, TrackMapper
from ingest.whip.tap import request_keyframe, tap_receiver
from media import VIDEO, MediaPacket, StreamKey
from media.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

# Frames queued towards the publication before video is dropped to the next keyframe.
QUEUE_FRAMES = 512
# Seconds between keyframe requests while the decoder waits for one.
PLI_RETRY = 0.5


class _Track:
    def __init__(self, receiver: RTCRtpReceiver, mapper: TrackMapper | None) -> None:
        self.receiver = receiver
        self.mapper = mapper  # None: a second track of the same kind, ignored
        self.last_pli = 0.0
        self.last_keyframe = 0.0


class WhipSession:
    """One publisher's peer connection, mapped to :class:`MediaPacket` for its publication.

    The session knows nothing of the server that made it: it gets the WHIP settings
    and metrics it reports into, and ``on_closed``, called once as it ends.
    """

    def __init__(
        self,
        config: WhipConfig,
        metrics: IngestMetrics,
        on_closed: Callable[[WhipSession], None],
        session_id: str,
        key: StreamKey,
        remote: str,
        pc: RTCPeerConnection,
        publication: Publication,
        keyframe_interval: float,
        guard: SourceGuard | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._on_closed = on_closed
        self.id = session_id
        self.key = key
        self.remote = remote
        self.pc = pc
        self.publication = publication
        self.keyframe_interval = keyframe_interval
        # The source's size and frame rate, checked on each SPS and VP8 key frame.
        self.guard = guard
        self.created = time.monotonic()
        self.last_media = 0.0
        self.closed = False
        self.timeline = Timeline()
        self.tracks: list[_Track] = []
        self.codecs: dict[str, str] = {}
        self._announced = False
        self._queue: asyncio.Queue[MediaPacket | None] = asyncio.Queue()  # bounded in on_frame
        self._pump: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[object]] = set()
        # Frame-level warnings: a peer can trigger them for every frame it sends.
        self._warn = RateLimitedLog(log)

    @property
    def path(self) -> str:
        return f"/{self.key.tenant}/{self.key.stream}/whip/{self.id}"

    # -- set-up ------------------------------------------------------------------

    def attach(self) -> None:
        """Tap every receiver; call after setRemoteDescription, before the answer."""
        seen: set[str] = set()
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            kind = transceiver.kind
            mapper = None
            if kind not in seen and transceiver._codecs:
                seen.add(kind)
                codec = transceiver._codecs[0]
                mapper = TrackMapper.for_codec(
                    kind, codec.name, codec.clockRate, self.timeline, codec.channels
                )
                self.codecs[kind] = mapper.codec
            track = _Track(receiver, mapper)
            self.tracks.append(track)
            tap_receiver(receiver, self._frame_callback(track))

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            state = self.pc.connectionState
            log.info("[whip %s] %s: connection %s", self.key, self.id, state)
            if state in ("failed", "closed"):
                self.close_soon(f"connection {state}")

        self._pump = asyncio.create_task(self._run_pump(), name=f"whip-pump-{self.id}")
        self._watchdog = asyncio.create_task(self._run_watchdog(), name=f"whip-watch-{self.id}")

    # -- media ---------------------------------------------------------------------

    def _frame_callback(
        self, track: _Track
    ) -> Callable[[RTCRtpCodecParameters, JitterFrame], None]:
        def on_frame(codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
            # Runs inside aiortc's RTP handling: an exception here would break its transport.
            try:
                deliver(codec, frame)
            except Exception:
                log.exception("[whip %s] frame handling failed", self.key)

        def deliver(codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
            if self.closed or track.mapper is None:
                return
            now = time.monotonic()
            self.last_media = now
            mapper = track.mapper
            if codec.name.lower() != mapper.codec:
                # Payload type switched to another negotiated codec mid-stream.
                try:
                    mapper = TrackMapper.for_codec(
                        mapper.kind, codec.name, codec.clockRate, self.timeline, codec.channels
                    )
                except ValueError as exc:
                    self._warn.warning("codec", "[whip %s] frame dropped: %s", self.key, exc)
                    return
                track.mapper = mapper
                self.codecs[mapper.kind] = mapper.codec
            if not self._announced:
                self._announced = True
                for t in self.tracks:
                    config = t.mapper.announce() if t.mapper else None
                    if config is not None:
                        self._queue.put_nowait(config)
            metrics = self.metrics
            metrics.bytes.labels("whip").inc(len(frame.data))
            try:
                packets = mapper.map(frame.data, frame.timestamp, now)
            except ValueError as exc:
                self._warn.warning(
                    "bad", "[whip %s] bad %s frame dropped: %s", self.key, mapper.codec, exc
                )
                mapper.waiting_keyframe = mapper.kind == VIDEO
                self._want_keyframe(track, now)
                return
            if mapper.kind == VIDEO:
                if mapper.waiting_keyframe:
                    self._want_keyframe(track, now)
                elif packets and packets[-1].keyframe:
                    track.last_keyframe = now
                elif (
                    self.keyframe_interval
                    and now - track.last_keyframe >= self.keyframe_interval
                    and now - track.last_pli >= self.keyframe_interval
                ):
                    self._send_pli(track, now)
            for pkt in packets:
                if self.guard is not None:
                    try:
                        self.guard.packet(pkt)
                    except PublishRefused as exc:
                        log.warning("[whip %s] publish refused: %s", self.key, exc.description)
                        metrics.rejected.labels(exc.reason).inc()
                        self.closed = True  # nothing more reaches the publication
                        self.close_soon(exc.reason)
                        return
                if not pkt.config:
                    metrics.frames.labels("whip", pkt.kind).inc()
                if self._queue.qsize() >= QUEUE_FRAMES and not pkt.config:
                    # The transcoder is far behind: drop, and restart video on a keyframe.
                    self._warn.warning(
                        "full", "[whip %s] %s frame dropped: ingest queue full", self.key, pkt.kind
                    )
                    if mapper.kind == VIDEO:
                        mapper.waiting_keyframe = True
                    return
                self._queue.put_nowait(pkt)

        return on_frame

    def _want_keyframe(self, track: _Track, now: float) -> None:
        if now - track.last_pli >= PLI_RETRY:
            self._send_pli(track, now)

    def _send_pli(self, track: _Track, now: float) -> None:
        track.last_pli = now
        self._spawn(request_keyframe(track.receiver))

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_pump(self) -> None:
        while True:
            pkt = await self._queue.get()
            if pkt is None:
                return
            try:
                await self.publication.media(pkt)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("[whip %s] media delivery failed; closing", self.key)
                self.close_soon("media delivery failed")
                return

    async def _run_watchdog(self) -> None:
        cfg = self.config
        while not self.closed:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if not self.last_media:
                if now - self.created > cfg.connect_timeout:
                    self.metrics.rejected.labels("timeout").inc()
                    self.close_soon(f"no media within {cfg.connect_timeout:g} s")
                    return
            elif now - self.last_media > cfg.idle_timeout:
                self.metrics.rejected.labels("timeout").inc()
                self.close_soon(f"no media for {cfg.idle_timeout:g} s")
                return

    # -- teardown --------------------------------------------------------------------

    def abort(self) -> None:
        """Forget a session that never answered: its owner closes the connection."""
        self.closed = True
        for task in (self._pump, self._watchdog):
            if task is not None:
                task.cancel()

    def close_soon(self, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(reason))

    async def close(self, reason: str) -> None:
        """End the publish: stop the peer connection, flush queued media, close the publication."""
        self.close_soon(reason)
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def _close(self, reason: str) -> None:
        self.closed = True
        log.info("[whip %s] session %s from %s ended: %s", self.key, self.id, self.remote, reason)
        self._on_closed(self)
        current = asyncio.current_task()
        if self._watchdog is not None and self._watchdog is not current:
            self._watchdog.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 5)
        if self._pump is not None:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._pump), 10)
            except TimeoutError:
                self._pump.cancel()
        for task in list(self._tasks):
            task.cancel()
        try:
            await self.publication.close()
        except Exception:
            log.exception("[whip %s] closing the publication failed", self.key)
