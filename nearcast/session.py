"""One publish of one stream on the node: the session that feeds its transcode worker,
and the sink that applies the worker's output to the HLS store, WHEP and the recording.

With WebRTC on, the sink also packages the worker's TAP packets (the WebRTC viewers'
H.264 and Opus) as the hidden ``webrtc`` CMAF rendition of an fMP4 stream: repackaged,
never decoded, so that another node can pull it over LL-HLS and serve WHEP viewers
from it (distribute.whep.cmaf_source).

The node (nearcast.node) opens and ends sessions; a session tells it when its worker has
flushed, and the node starts the grace period.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from containers.cmaf import TapPackager
from distribute.hls.stream import LiveStream
from distribute.hls.track import RenditionTrack, Segment
from distribute.record import StreamRecorder
from distribute.whep.cmaf_source import TAP_RENDITION
from ingest.rtmp.server import parse_query
from ingest.sink import PublishRequest
from ingest.stats import IngestStats
from media import MediaPacket
from media.segments import InitFrame, PartFrame, SegmentFrame
from nearcast.logs import bind_stream
from transcode.admission import Admission
from transcode.pool import Transcoder
from transcode.spec import Spec

if TYPE_CHECKING:
    from nearcast.node import Node

log = logging.getLogger(__name__)


class _StoreSink:
    """Reports of one stream's worker, applied to its HLS store entry."""

    def __init__(self, node: Node, stream: LiveStream, spec: Spec | None = None) -> None:
        self.node = node
        self.stream = stream
        self.key = str(stream.key)
        if node.recorder is not None:
            stream.on_complete = self._completed
        self._spec = spec
        # The tap rendition's packets as the hidden webrtc rendition (made at the first
        # tap IDR of every worker run, once the rung's size is known).
        self._tap: TapPackager | None = None
        self._tap_off = spec is None or not spec.tap or not stream.fmp4

    def on_renditions(self, info: dict[str, Any]) -> None:
        if info.get("timeline_origin_ms") is not None:
            self.stream.timeline_origin_ms = int(info["timeline_origin_ms"])
        self.stream.set_renditions(info)

    def on_segment(self, segment: SegmentFrame) -> None:
        self.stream.add_segment(segment)
        self.node.tmetrics.segments.inc()

    def _completed(self, track: RenditionTrack, segment: Segment) -> None:
        """Every complete segment the store lists (an LL-HLS lead segment included)."""
        if track.name in self.stream.hidden:
            return
        if self.stream.fmp4:  # MPEG-TS streams record the worker's CMAF copy instead
            self._record_segment(track.name, segment.data, segment.duration)

    def on_init(self, init: InitFrame) -> None:
        self.stream.add_init(init)
        self.on_record_init(init)

    def on_record_init(self, init: InitFrame) -> None:
        """An fMP4 init segment for the recording (also the viewers' one with CMAF)."""
        rec = self._recorder()
        if rec is not None and rec.wants(init.rendition, self._sizes()):
            rec.init(init.rendition, init.data)

    def on_record_segment(self, segment: SegmentFrame) -> None:
        """The CMAF copy of an MPEG-TS stream's segment, packaged for the recording."""
        self._record_segment(segment.rendition, segment.data, segment.duration, fmp4=True)

    # -- recording (record.tenants) -----------------------------------------------------

    def _recorder(self) -> StreamRecorder | None:
        if self.node.recorder is None or self.node.recorder.mode(self.stream.key.tenant) is None:
            return None
        rec = getattr(self, "_rec", None)
        if rec is None:
            key = self.stream.key
            rec = self._rec = StreamRecorder(self.node.recorder, key.tenant, key.stream)
        return rec

    def _sizes(self) -> dict[str, int]:
        return {t.name: t.width * t.height for t in self.stream.listed()}

    def _record_segment(
        self, rendition: str, data: bytes, duration: float, fmp4: bool | None = None
    ) -> None:
        rec = self._recorder()
        track = self.stream.renditions.get(rendition)
        if rendition in self.stream.hidden:
            return
        if rec is None or track is None or not rec.wants(rendition, self._sizes()):
            return
        variant = track.variant()
        if self.stream.audio and "mp4a" not in variant.codecs:
            variant = dataclasses.replace(variant, codecs=variant.codecs + ",mp4a.40.2")
        rec.segment(rendition, data, duration, self.stream.fmp4 if fmp4 is None else fmp4, variant)

    def record_begin(self) -> None:
        rec = self._recorder()
        if rec is not None:
            rec.begin()

    def on_part(self, part: PartFrame) -> None:
        self.stream.add_part(part)

    def on_restart(self) -> None:
        self.node.tmetrics.restarts.inc()
        self.stream.begin_generation()
        self.node.whep.restart(self.stream.key)
        # The new worker's tap starts at an IDR: a new packaging run, like its rungs'.
        self._tap = None
        self.record_begin()

    def on_tap(self, packet: MediaPacket, arrival: float) -> None:
        self.node.whep.feed(self.stream.key, packet)
        if self._tap_off:
            return
        if self._tap is None:
            if packet.kind != "video" or not packet.keyframe:
                return
            self._tap = self._tap_packager()
            if self._tap is None:
                return
        try:
            self._tap.packet(packet)
        except ValueError as exc:
            # A packet the packager cannot place: WHEP viewers still got it.
            log.warning("[node %s] webrtc rendition stopped: %s", self.key, exc)
            self._tap_off = True
            self._tap = None

    def _tap_packager(self) -> TapPackager | None:
        """The packager of this worker run's webrtc rendition; None when there is
        nothing it could serve (yet: the tap rung is not reported; or ever)."""
        spec = self._spec
        assert spec is not None
        rung = next((r for r in spec.ladder if r.name == spec.tap), None)
        if rung is None:
            self._tap_off = True
            return None
        track = self.stream.renditions.get(spec.tap)
        if track is None:
            # The worker's rung threads start before it reports its renditions, so a
            # first IDR may come before the size is known: try again at the next.
            return None
        try:
            hidden = self.stream.add_hidden_rendition(
                TAP_RENDITION,
                width=track.width,
                height=track.height,
                fps=track.fps,
                codecs=track.codecs,
            )
        except ValueError as exc:  # a ladder rung named like it
            log.warning("[node %s] no webrtc rendition: %s", self.key, exc)
            self._tap_off = True
            return None
        hls = self.stream.config
        log.info(
            "[node %s] packaging the WebRTC tap (%s) as the %s rendition",
            self.key,
            spec.tap,
            TAP_RENDITION,
        )
        return TapPackager(
            hidden.name,
            width=track.width,
            height=track.height,
            fps=track.fps or rung.fps or 30.0,
            channels=(2 if spec.audio.channels == 2 else 1) if self.stream.audio else None,
            segment_duration=hls.segment_duration,
            part_duration=hls.part_duration if hls.low_latency else 0.0,
            grid=rung.codec != "copy",
            lead=hls.lead_parts,
            on_init=self.stream.add_init,
            on_part=self.on_part,
            on_segment=self._tap_segment,
        )

    def _tap_segment(self, segment: SegmentFrame) -> None:
        self.stream.add_segment(segment)  # not a transcoded segment: not counted

    def finish(self) -> None:
        """The worker has flushed: so does the webrtc rendition."""
        if self._tap is not None:
            self._tap.flush()
            self._tap = None

    def on_stats(self, stats: dict[str, Any]) -> None:
        if "degradation" in stats:
            d = stats["degradation"]
            self.stream.degradation = int(d["level"])
            if d.get("up"):
                self.node.tmetrics.degradations.labels(d["step"]).inc()
            return
        prev = self.stream.stats
        self.stream.stats = stats
        dt = stats.get("wall_seconds", 0) - prev.get("wall_seconds", 0)
        if prev and dt > 0:
            for name, frames in stats.get("renditions", {}).items():
                before = prev.get("renditions", {}).get(name, 0)
                self.node.tmetrics.fps.labels(self.key, name).set((frames - before) / dt)
        # The worker's own figure: how long ago its slowest rung's latest encoded
        # frame arrived at the node. Wall minus media time is the fallback.
        lag = stats.get("lag")
        if lag is None:
            lag = stats.get("wall_seconds", 0) - stats.get("media_seconds", 0)
        self.node.tmetrics.lag.labels(self.key).set(max(0.0, float(lag)))


def tap_rendition(wanted: str, ladder: list[Any]) -> str:
    """The rung WebRTC viewers get: ``webrtc.rendition`` if the ladder has it, else its lowest."""
    names: list[str] = [r.name for r in ladder]
    if wanted in names or not ladder:
        return wanted if ladder else ""
    lowest = min(range(len(ladder)), key=lambda i: (ladder[i].height or 1 << 30, i))
    return names[lowest]


class StreamSession:
    """One publish of one stream: its packets go to one transcode worker."""

    def __init__(
        self,
        node: Node,
        request: PublishRequest,
        stream: LiveStream,
        profile: str,
        admission: Admission,
    ) -> None:
        self.node = node
        self.profile = profile
        # The rungs the node admitted (Node._admit), not the profile's whole ladder.
        self.admission = admission
        stream.ingest["profile"] = profile
        stream.left_out = dict(self.admission.left_out)
        self.request = request
        self.key = request.key
        self.stream = stream
        self.transcoder: Transcoder | None = None
        self._meta: dict[str, Any] = dict(request.metadata)
        self.started = time.time()
        self.closed = False
        self._closing: asyncio.Task[None] | None = None
        self.ingest = IngestStats(request.protocol, request.remote, time.monotonic())
        self._next_limit_check = 0.0
        self._sink: _StoreSink | None = None
        # What the publisher's task logs from now on names the stream (node.log_format).
        bind_stream(self.key.tenant, self.key.stream, parse_query(request.query).get("session"))

    @property
    def units(self) -> float:
        """Transcode capacity this stream holds, in ladder units."""
        return self.admission.units

    def metadata(self, values: dict[str, Any]) -> None:
        self._meta.update(values)

    def _spec(self) -> Spec:
        cfg = self.node.config
        fps = self._meta.get("framerate") or self._meta.get("fps") or 0.0
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            fps = 0.0
        hls = self.stream.config  # the tenant's delivery (hls.tenants), else the node's
        profile = cfg.transcode.profile(self.profile)
        ladder = list(self.admission.ladder)
        if hls.low_latency:
            # LL-HLS trades bits for delay: x264's lookahead and B-frames alone hold back
            # ~0.6 s, a third of the budget. Rungs that name their own tune keep it.
            ladder = [
                dataclasses.replace(r, tune="zerolatency")
                if r.codec != "copy" and not r.tune
                else r
                for r in ladder
            ]
        return Spec(
            stream=str(self.key),
            ladder=ladder,
            audio=profile.audio,
            segment_duration=hls.segment_duration,
            x264_threads=cfg.transcode.x264_threads,
            fps_hint=fps if 1 <= fps <= 240 else 0.0,
            degrade_lag=cfg.transcode.degrade_lag,
            segment_format=hls.segment_format,
            part_duration=hls.part_duration if hls.low_latency else 0.0,
            lead_parts=hls.lead_parts,
            tap=(tap_rendition(cfg.webrtc.rendition, ladder) if cfg.webrtc.enabled else ""),
            record_fmp4=(
                hls.segment_format == "ts"
                and self.node.recorder is not None
                and self.node.recorder.mode(self.key.tenant) is not None
            ),
            # A publisher back within the grace period continues the stream's timeline.
            timeline_origin_ms=self.stream.timeline_origin_ms,
        )

    def disconnect(self, reason: str) -> None:
        """Close the publisher's connection (kick, takeover, limit); the stream flushes."""
        if self.request.disconnect is not None:
            self.request.disconnect(reason)
        self.closed = True
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())

    def _check_bitrate(self, now: float) -> None:
        ic = self.node.config.ingest
        if not ic.max_bitrate or now < self._next_limit_check:
            return
        self._next_limit_check = now + 0.5
        if now - self.ingest.started < ic.bitrate_window:
            return  # a full window first: the opening keyframe alone is a burst
        rate = self.ingest.bitrate(now, ic.bitrate_window)
        if rate > ic.max_bitrate:
            log.warning(
                "[node %s] publisher over the bit rate limit: %.0f kbit/s over %g s > %.0f kbit/s;"
                " disconnecting",
                self.key,
                rate / 1000,
                ic.bitrate_window,
                ic.max_bitrate / 1000,
            )
            self.node.imetrics.rejected.labels("bitrate").inc()
            self.disconnect("bitrate")

    async def media(self, packet: MediaPacket) -> None:
        if self.closed:
            self.ingest.dropped += 1
            return
        now = time.monotonic()
        if not self.ingest.add(packet, now):
            self.ingest.dropped += 1  # late: behind its kind's DTS, no muxer would take it
            return
        self._check_bitrate(now)
        if self.closed:
            return
        ingest = self.stream.ingest
        if packet.config:
            ingest[f"{packet.kind}_codec"] = packet.codec
        else:
            ingest.setdefault(f"{packet.kind}_codec", packet.codec)  # VP8 has no config
        if self.transcoder is None:
            # Start lazily: by the first media packet @setDataFrame has told us
            # the frame rate, so the encoders open with the right one.
            self.stream.begin_generation()
            spec = self._spec()
            sink = self._sink = _StoreSink(self.node, self.stream, spec)
            sink.record_begin()
            self.transcoder = Transcoder(
                self.key,
                spec,
                sink,
                queue_packets=self.node.config.transcode.input_queue_packets,
                restart_backoff=self.node.config.transcode.restart_backoff,
                memory_mb=self.node.config.transcode.worker_memory_mb,
            )
            self.transcoder.start()
        await self.transcoder.send(packet)

    async def close(self) -> None:
        """Flush the worker and start the grace period. Every caller waits for the same flush."""
        self.closed = True
        if self._closing is None:
            self._closing = asyncio.create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        # The stream's last measured bit rate stays in its description after it ends.
        self.stream.ingest["bitrate"] = round(self.ingest.bitrate(time.monotonic()))
        if self.transcoder is not None:
            await self.transcoder.finish()
        if self._sink is not None:
            self._sink.finish()
        self.node._unpublished(self)
