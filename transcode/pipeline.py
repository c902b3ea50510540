"""The decode loop of one stream: each packet decoded once, fanned out to the rungs.

:class:`Pipeline` maps packets onto the worker's monotonic timeline, decodes
video on the calling thread and opens the ladder on the first picture (rungs
planned for the source, audio encoder, the RENDITIONS frame). Every decoded
picture goes to every encoded rung's queue, every source packet to the
``copy`` rung's, and every AAC packet to all of them. After each packet it
lets the overload controller act and, every 2 s, sends a STATS frame.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from fractions import Fraction
from typing import Any

import av

from containers.cmaf import AudioFormat
from media import MediaPacket
from media.h264 import AvcConfig
from media.ratelog import RateLimitedLog
from transcode.audio import AudioEncoder
from transcode.cfr import Timeline
from transcode.ladder import plan
from transcode.output import Output
from transcode.overload import OverloadController
from transcode.protocol import FrameType, encode_json
from transcode.rungs import STOP, RungEncoder, SourceRung
from transcode.spec import Spec

# One logger name for the whole worker process, whichever module logs.
log = logging.getLogger("transcode.worker")

MS = Fraction(1, 1000)
# How the source is decoded: see Pipeline._open_video (bench.decode measures it).
DECODE_THREADS = "SLICE"


class Pipeline:
    def __init__(self, spec: Spec, out: Output) -> None:
        self.spec = spec
        self.out = out
        # Warnings a publisher can trigger for every packet (bad data, clock jumps).
        self._warn = RateLimitedLog(log)
        self._vdec: Any = None  # av.VideoCodecContext once the first video packet arrives
        self._adec: Any = None  # av.AudioCodecContext
        self._audio: AudioEncoder | None = None
        self._rungs: list[RungEncoder | SourceRung] = []
        # The rungs that encode (not the source passthrough), fixed once the rungs start:
        # the overload controller reads it for every packet and frame.
        self._encoders: list[RungEncoder] = []
        self._avc: AvcConfig | None = None
        self._t0: int | None = None
        self._timeline = Timeline()
        self._video_dts: list[int] = []
        self._audio_seen = False
        self.frames_in = 0
        self.overload = OverloadController(spec, out)
        self._src_backlog: list[tuple[MediaPacket, float]] = []
        self._arrivals: dict[int, float] = {}
        self._last_stats = time.monotonic()
        self._started = time.monotonic()
        self._media_ms = 0

    # -- decoders ------------------------------------------------------------

    def _open_video(self, pkt: MediaPacket) -> None:
        if pkt.codec not in ("h264", "hevc", "av1", "vp8", "vp9"):
            raise ValueError(f"video codec {pkt.codec!r} cannot be transcoded")
        dec = av.CodecContext.create(pkt.codec, "r")
        if pkt.config:
            dec.extradata = pkt.data
            if pkt.codec == "h264":
                try:
                    self._avc = AvcConfig.parse(pkt.data)
                except ValueError as exc:
                    log.warning(
                        "[%s] %s; the source cannot be passed through", self.spec.stream, exc
                    )
        # One decoding thread (slice threads where the source has several slices),
        # never frame threads: the rungs' encoders keep every core busy, so frame
        # threads add no speed, only CPU (`python -m bench.decode`: 20% more on a
        # one-slice 720p source, none on the sample lecture) and (threads - 1)
        # pictures of latency. One core decodes 720p30 at 8-18x real time.
        dec.thread_type = DECODE_THREADS
        self._vdec = dec

    def _open_audio(self, pkt: MediaPacket) -> None:
        if pkt.codec not in ("aac", "opus", "mp3"):
            raise ValueError(f"audio codec {pkt.codec!r} cannot be transcoded")
        dec = av.CodecContext.create(pkt.codec, "r")
        if pkt.config:
            dec.extradata = pkt.data
        self._adec = dec
        self._audio_seen = True

    def _start_rungs(self, frame: av.VideoFrame) -> None:
        fps = self.spec.fps_hint or self._estimate_fps()
        rungs = plan(self.spec.ladder, frame.width, frame.height, fps)
        audio_rate = self.spec.audio.sample_rate if self._audio_seen else None
        audio: AudioFormat | None = None
        if audio_rate:
            self._audio = AudioEncoder(self.spec, self.out, self._to_rungs)
            audio = self._audio.format
        if any(r.codec == "copy" for r in rungs) and self._avc is None:
            raise ValueError("only H.264 with a sequence header can be passed through as 'copy'")
        first = int(frame.pts or 0)
        origin = self._timeline_origin(first)
        # The rungs' packagers read it from the spec.
        self.spec = dataclasses.replace(self.spec, timeline_origin_ms=origin)
        self._rungs = [
            SourceRung(r, self.spec, audio, self.out, self._avc)  # type: ignore[arg-type]
            if r.codec == "copy"
            else RungEncoder(r, self.spec, audio, self.out, first, self._timeline.max_gap_ms)
            for r in rungs
        ]
        self._encoders = [r for r in self._rungs if isinstance(r, RungEncoder)]
        if self.spec.tap and not any(r.tap for r in self._rungs):
            log.warning(
                "[%s] tap rendition %r is not in this stream's ladder; WebRTC gets no video",
                self.spec.stream,
                self.spec.tap,
            )
        for r in self._rungs:
            r.thread.start()
            if isinstance(r, SourceRung):
                for pkt, arrival in self._src_backlog:
                    r.queue.put(("src", pkt, None, arrival))
        self._src_backlog.clear()
        self.out.write(
            encode_json(
                FrameType.RENDITIONS,
                {
                    "source": {"width": frame.width, "height": frame.height, "fps": fps},
                    "audio": bool(audio_rate),
                    "timeline_origin_ms": origin,
                    "renditions": [
                        {
                            "name": r.name,
                            "width": r.width,
                            "height": r.height,
                            "fps": r.fps,
                            "video_bitrate": r.video_bitrate,
                            "maxrate": r.maxrate,
                            "audio_bitrate": self.spec.audio.bitrate if audio_rate else 0,
                            "encoder": enc.codec,
                        }
                        for r, enc in zip(rungs, self._rungs, strict=True)
                    ],
                },
            )
        )
        log.info(
            "[%s] source %dx%d@%.2f -> %s",
            self.spec.stream,
            frame.width,
            frame.height,
            fps,
            ", ".join(f"{r.name} {r.width}x{r.height}" for r in rungs),
        )

    def _timeline_origin(self, first_ms: int) -> int:
        """Where the stream's fMP4 timeline starts: at the stream's first picture, so its
        first part has a ``tfdt`` of 0, like its playlist's timeline (see
        :mod:`containers.cmaf`), and where the stream's earlier run put it, so a restarted
        worker continues that timeline. A publisher back with a clock that starts before it
        starts a new one (after the discontinuity its run begins with)."""
        origin = self.spec.timeline_origin_ms
        if origin is None:
            return first_ms
        if first_ms < origin:
            log.info(
                "[%s] first picture at %d ms, before the timeline's origin at %d ms; "
                "starting the fMP4 timeline again",
                self.spec.stream,
                first_ms,
                origin,
            )
            return first_ms
        return origin

    def _estimate_fps(self) -> float:
        d = sorted(
            b - a for a, b in zip(self._video_dts, self._video_dts[1:], strict=False) if b > a
        )
        if not d:
            return 30.0
        median = d[len(d) // 2]
        fps = 1000.0 / median
        # Snap to the common broadcast rates; ms timestamps jitter by one tick.
        for std in (60.0, 59.94, 50.0, 30.0, 29.97, 25.0, 24.0, 23.976, 15.0):
            if abs(fps - std) / std < 0.04:
                return std
        return round(fps, 3)

    # -- packets ---------------------------------------------------------------

    def feed(self, pkt: MediaPacket, arrival: float = 0.0) -> None:
        if pkt.kind == "video":
            if pkt.config or self._vdec is None:
                self._open_video(pkt)
                if pkt.config:
                    return
            self._decode_video(self._map(pkt, 33), arrival)
        else:
            if pkt.config or self._adec is None:
                self._open_audio(pkt)
                if pkt.config:
                    return
            self._decode_audio(self._map(pkt, 21))
        self.overload.poll(time.monotonic(), self._encoders)
        self._maybe_stats()

    def _map(self, pkt: MediaPacket, step_ms: int) -> MediaPacket:
        """The packet on the worker's monotonic timeline (see :class:`transcode.cfr.Timeline`)."""
        jumps = self._timeline.jumps
        dts = self._timeline.map(pkt.kind, pkt.dts, step_ms)
        if self._timeline.jumps != jumps:
            self._warn.warning(
                ("jump", pkt.kind),
                "[%s] %s clock jumped at %d ms; continuing the timeline at %d ms",
                self.spec.stream,
                pkt.kind,
                pkt.dts,
                dts,
            )
        off = dts - pkt.dts
        if not off:
            return pkt
        return dataclasses.replace(pkt, pts=pkt.pts + off, dts=dts)

    def _decode_video(self, pkt: MediaPacket, arrival: float) -> None:
        assert self._vdec is not None
        if len(self._video_dts) < 30:
            self._video_dts.append(pkt.dts)
        if not self._rungs:
            # The ladder opens on the first decoded picture, frames after the first
            # packet: hold what a passthrough rung will need, its first IDR included.
            self._src_backlog.append((pkt, arrival))
            del self._src_backlog[:-256]
        for r in self._rungs:
            if isinstance(r, SourceRung):
                r.queue.put(("src", pkt, None, arrival))
        if self._rungs and not self._encoders:
            return  # passthrough only: no picture is ever needed again
        if arrival:
            self._arrivals[pkt.pts] = arrival
            if len(self._arrivals) > 256:
                self._arrivals.pop(next(iter(self._arrivals)))
        frames = self._decode(self._vdec, pkt)
        for frame in frames:
            self._on_frame(frame)

    def _on_frame(self, frame: av.VideoFrame) -> None:
        if frame.pts is None:
            return
        if not self._rungs and frame.pts < self.spec.resume_ms:
            return  # replayed after a restart: already delivered by the previous worker
        self.frames_in += 1
        if not self._rungs:
            self._start_rungs(frame)
        t = int(frame.pts)
        arrival = self._arrivals.pop(t, 0.0)
        if self._t0 is None:
            self._t0 = t
        self._media_ms = max(self._media_ms, t)
        # Far behind: only the segment boundaries' IDRs are encoded until caught up.
        catch_up = self.overload.catching_up(self._encoders)
        for r in self._encoders:
            r.catch_up = catch_up
            r.queue.put(("v", frame, t, arrival))

    @property
    def frames_dropped(self) -> int:
        return sum(r.dropped for r in self._encoders)

    def _decode(self, dec: Any, pkt: MediaPacket) -> list[Any]:
        """Decode one ms-timestamped packet; a corrupt one is dropped, not fatal."""
        p = av.Packet(pkt.data)
        p.pts, p.dts, p.time_base = pkt.pts, pkt.dts, MS
        try:
            return list(dec.decode(p))
        except av.error.InvalidDataError:
            self._warn.warning(
                ("undecodable", pkt.kind),
                "[%s] undecodable %s packet at %d ms dropped",
                self.spec.stream,
                pkt.kind,
                pkt.dts,
            )
            return []

    def _decode_audio(self, pkt: MediaPacket) -> None:
        if self._adec is None:
            return
        frames = self._decode(self._adec, pkt)
        if self._audio is None:
            return  # audio before the first video frame: the ladder isn't open yet
        self._audio.encode(frames, pkt.pts)

    def _to_rungs(self, ap: av.Packet[Any]) -> None:
        """An encoded audio packet, for every rung's packaging."""
        for r in self._rungs:
            r.queue.put(("a", ap, None, 0.0))

    def _maybe_stats(self) -> None:
        now = time.monotonic()
        if now - self._last_stats < 2.0:
            return
        self._last_stats = now
        self.out.write(
            encode_json(
                FrameType.STATS,
                {
                    "frames_in": self.frames_in,
                    "media_seconds": (self._media_ms - (self._t0 or 0)) / 1000.0,
                    "wall_seconds": now - self._started,
                    "renditions": {r.rung.name: r.frames_out for r in self._rungs},
                    "lag": self.overload.lag(self._encoders),
                    "level": self.overload.level,
                    "frames_dropped": self.frames_dropped,
                },
            )
        )

    def finish(self) -> None:
        if self._vdec is not None:
            try:
                for frame in self._vdec.decode(None):
                    self._on_frame(frame)
            except av.error.FFmpegError:
                pass
        if self._audio is not None:
            self._audio.flush()
        for r in self._rungs:
            r.queue.put(STOP)
        for r in self._rungs:
            r.thread.join()
