"""Assembly of an edge node: ingest -> transcode -> distribute.

This module only wires the stages together and owns the per-stream lifecycle
(publish, grace period, reconnect, end). The stages know nothing of each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import contextlib
import logging
import json
import socket
import sys
import time
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from distribute.api import create_api
from distribute.hls.store import LiveStream, RenditionTrack, Segment, Store
from distribute.fastpath import media_protocol
from distribute.http import MediaApp, MediaMetrics
from distribute.record import Recorder, RecordMetrics, StreamRecorder
from ingest.metrics import IngestMetrics
from ingest.rtmp.server import RtmpServer, parse_query
from ingest.sink import PublishRefused, PublishRequest
from media import MediaPacket, StreamKey
from nearcast.config import Config, parse_hostport
from transcode.capacity import Capacity, ladder_units
from transcode.metrics import TranscodeMetrics
from transcode.pool import Transcoder, WorkerState
from transcode.protocol import InitFrame, PartFrame, SegmentFrame
from transcode.worker import Spec

log = logging.getLogger(__name__)


class _StoreSink:
    """Reports of one stream's worker, applied to its HLS store entry."""

    def __init__(self, node: Node, stream: LiveStream) -> None:
        self.node = node
        self.stream = stream
        self.key = str(stream.key)
        if node.recorder is not None:
            stream.on_complete = self._completed

    def on_renditions(self, info: dict[str, Any]) -> None:
        self.stream.set_renditions(info)

    def on_segment(self, segment: SegmentFrame) -> None:
        self.stream.add_segment(segment)
        self.node.tmetrics.segments.inc()

    def _completed(self, track: RenditionTrack, segment: Segment) -> None:
        """Every complete segment the store lists (an LL-HLS lead segment included)."""
        self._record_segment(track.name, segment.data, segment.duration)

    def on_init(self, init: InitFrame) -> None:
        self.stream.add_init(init)
        rec = self._recorder()
        if rec is not None and rec.wants(init.rendition, self._sizes()):
            rec.init(init.rendition, init.data)

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
        return {n: t.width * t.height for n, t in self.stream.renditions.items()}

    def _record_segment(self, rendition: str, data: bytes, duration: float) -> None:
        rec = self._recorder()
        track = self.stream.renditions.get(rendition)
        if rec is None or track is None or not rec.wants(rendition, self._sizes()):
            return
        variant = track.variant()
        if self.stream.audio and "mp4a" not in variant.codecs:
            variant = dataclasses.replace(variant, codecs=variant.codecs + ",mp4a.40.2")
        rec.segment(rendition, data, duration, self.stream.fmp4, variant)

    def record_begin(self) -> None:
        rec = self._recorder()
        if rec is not None:
            rec.begin()

    def on_part(self, part: PartFrame) -> None:
        self.stream.add_part(part)

    def on_restart(self) -> None:
        self.node.tmetrics.restarts.inc()
        self.stream.begin_generation()
        self.record_begin()

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
        self.node.tmetrics.lag.labels(self.key).set(
            max(0.0, stats.get("wall_seconds", 0) - stats.get("media_seconds", 0))
        )


class _RateMeter:
    """Bits per second over the last few seconds, updated once a second."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._buckets: list[tuple[float, int]] = []
        self._bucket_start = 0.0
        self._bucket_bytes = 0
        self.value = 0

    def add(self, now: float, nbytes: int) -> int:
        if now - self._bucket_start >= 1.0:
            if self._bucket_start:
                self._buckets.append((self._bucket_start, self._bucket_bytes))
            self._buckets = [b for b in self._buckets if now - b[0] <= self.window]
            if self._buckets:
                span = now - self._buckets[0][0]
                self.value = int(sum(b for _, b in self._buckets) * 8 / span) if span else 0
            self._bucket_start, self._bucket_bytes = now, 0
        self._bucket_bytes += nbytes
        return self.value


class StreamSession:
    """One publish of one stream: its packets go to one transcode worker."""

    def __init__(
        self,
        node: Node,
        request: PublishRequest,
        stream: LiveStream,
        profile: str = "default",
        units: float = 0.0,
    ) -> None:
        self.node = node
        self.profile = profile
        self.units = units
        stream.ingest["profile"] = profile
        self.request = request
        self.key = request.key
        self.stream = stream
        self.transcoder: Transcoder | None = None
        self._meta: dict[str, Any] = dict(request.metadata)
        self.started = time.time()
        self.closed = False
        self._closing: asyncio.Task[None] | None = None
        self._rate = _RateMeter()

    def metadata(self, values: dict[str, Any]) -> None:
        self._meta.update(values)

    def _spec(self) -> Spec:
        cfg = self.node.config
        fps = self._meta.get("framerate") or self._meta.get("fps") or 0.0
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            fps = 0.0
        profile = cfg.transcode.profile(self.profile)
        return Spec(
            stream=str(self.key),
            ladder=list(profile.ladder),
            audio=profile.audio,
            segment_duration=cfg.hls.segment_duration,
            x264_threads=cfg.transcode.x264_threads,
            fps_hint=fps if 1 <= fps <= 240 else 0.0,
            degrade_lag=cfg.transcode.degrade_lag,
            segment_format=cfg.hls.segment_format,
            part_duration=cfg.hls.part_duration if cfg.hls.low_latency else 0.0,
        )

    async def media(self, packet: MediaPacket) -> None:
        if self.closed:
            return
        ingest = self.stream.ingest
        if packet.config:
            ingest[f"{packet.kind}_codec"] = packet.codec
        else:
            ingest["bitrate"] = self._rate.add(time.monotonic(), len(packet.data))
        if self.transcoder is None:
            # Start lazily: by the first media packet @setDataFrame has told us
            # the frame rate, so the encoders open with the right one.
            self.stream.begin_generation()
            sink = _StoreSink(self.node, self.stream)
            sink.record_begin()
            self.transcoder = Transcoder(
                self.key,
                self._spec(),
                sink,
                queue_packets=self.node.config.transcode.input_queue_packets,
                restart_backoff=self.node.config.transcode.restart_backoff,
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
        if self.transcoder is not None:
            await self.transcoder.finish()
        self.node._unpublished(self)


class Node:
    def __init__(self, config: Config, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.imetrics = IngestMetrics(self.registry)
        self.tmetrics = TranscodeMetrics(self.registry)
        self.store = Store(config.hls)
        self.capacity = Capacity(config.transcode.capacity_units)
        self.tmetrics.capacity.set(config.transcode.capacity_units)
        self.sessions: dict[StreamKey, StreamSession] = {}
        self._grace: dict[StreamKey, asyncio.TimerHandle] = {}
        self.rtmp = RtmpServer(config.rtmp, self, self.imetrics)
        api = create_api(self.store, self.registry, self._ready, self.info)
        # Recording (record.tenants): written on its own thread, served at /{t}/{s}/vod/.
        self.recorder: Recorder | None = (
            Recorder(config.record, RecordMetrics(self.registry)) if config.record.tenants else None
        )
        self.http_app = MediaApp(
            self.store, api, MediaMetrics(self.registry), config.http.cors_origin, vod=self.recorder
        )
        self._http_server: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._calibration: asyncio.Task[None] | None = None
        self.agent: Any = None
        self._http_sock: socket.socket | None = None
        self.started = time.time()

    # -- IngestSink -----------------------------------------------------------------

    async def open_publish(self, request: PublishRequest) -> StreamSession:
        key = request.key
        if key.tenant not in self.config.rtmp.tenants:
            raise PublishRefused("tenant", f"tenant {key.tenant!r} is not configured on this node")
        if key in self.sessions:
            raise PublishRefused("duplicate", f"stream {key} is already being published")
        profile, units = self._admit(request)
        timer = self._grace.pop(key, None)
        if timer is not None:
            timer.cancel()
            log.info("[node %s] publisher is back within the grace period", key)
        stream = self.store.open(key)
        stream.publisher_connected = True
        session = StreamSession(self, request, stream, profile, units)
        self.sessions[key] = session
        self.capacity.reserve(key, units)
        self.tmetrics.used.set(self.capacity.in_use)
        return session

    def _admit(self, request: PublishRequest) -> tuple[str, float]:
        """Pick the stream's profile and check it fits the node's transcode capacity."""
        tc = self.config.transcode
        profile = tc.tenant_profiles.get(request.key.tenant, "default")
        asked = parse_query(request.query).get("profile") if tc.stream_profile_param else None
        if asked:
            profile = asked
        try:
            ladder = tc.profile(profile).ladder
        except KeyError:
            raise PublishRefused("profile", f"unknown transcode profile {profile!r}") from None
        units = ladder_units(ladder)
        if self.capacity.fits(units):
            return profile, units
        if tc.overflow == "refuse":
            raise PublishRefused(
                "capacity",
                f"no transcode capacity for {request.key}: {self.capacity.in_use:.2f} of "
                f"{self.capacity.total:.2f} units in use, {profile!r} needs {units:.2f}",
            )
        log.warning(
            "[node %s] over capacity (%.2f of %.2f units): serving the source untranscoded",
            request.key, self.capacity.in_use, self.capacity.total,
        )
        self.tmetrics.degradations.labels("passthrough").inc()
        return "passthrough", 0.0

    def _unpublished(self, session: StreamSession) -> None:
        key = session.key
        if self.sessions.get(key) is session:
            del self.sessions[key]
        session.stream.publisher_connected = False
        self.capacity.release(key)
        self.tmetrics.used.set(self.capacity.in_use)
        grace = self.config.hls.grace_period
        loop = asyncio.get_running_loop()
        self._grace[key] = loop.call_later(grace, self._end_stream, key, session.stream)

    def _end_stream(self, key: StreamKey, stream: LiveStream) -> None:
        self._grace.pop(key, None)
        if key not in self.sessions:
            log.info("[node %s] no publisher within the grace period; playlist ended", key)
            stream.end(time.time())
            if self.recorder is not None and self.recorder.mode(key.tenant) is not None:
                self.recorder.end(key.tenant, key.stream)

    # -- views ------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        n = self.config.node
        return {
            "id": n.id,
            "tier": n.tier,
            "region": n.region,
            "city": n.city,
            "isp": n.isp,
            "uptime": round(time.time() - self.started, 3),
            "rtmp_port": self.rtmp_port,
            "http_port": self.http_port,
        }

    def _ready(self) -> dict[str, bool]:
        return {
            "rtmp": self.rtmp.serving,
            "http": self._http_server is not None and self._http_server.started,
        }

    @property
    def rtmp_port(self) -> int:
        return self.rtmp.port

    @property
    def http_port(self) -> int:
        return self._http_sock.getsockname()[1] if self._http_sock else 0

    def _update_worker_gauge(self) -> None:
        counts = {s: 0 for s in WorkerState}
        for sess in self.sessions.values():
            if sess.transcoder is not None:
                counts[sess.transcoder.state] += 1
        for state, n in counts.items():
            self.tmetrics.workers.labels(state.value).set(n)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        if self.recorder is not None:
            # Close what a crash or a stop left open, before any publisher can add to it.
            await asyncio.to_thread(self.recorder.recover)
        await self.rtmp.start()
        host, port = parse_hostport(self.config.http.listen)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        self._http_sock = sock
        server = _EmbeddedServer(
            uvicorn.Config(
                self.http_app,
                # Media hits skip the ASGI machinery (distribute/fastpath.py).
                http=media_protocol(self.http_app),
                log_level="warning",
                lifespan="off",
                access_log=False,
                timeout_keep_alive=30,
            )
        )
        self._http_server = server
        self._http_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        deadline = time.monotonic() + 10
        while not server.started:
            if self._http_task.done():
                self._http_task.result()
            if time.monotonic() > deadline:
                raise RuntimeError("HTTP server did not start within 10 s")
            await asyncio.sleep(0.01)
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        if self.config.transcode.capacity_units == 0:
            self._calibration = asyncio.create_task(self._calibrate(), name="calibration")
        await self._start_agent(host)
        log.info(
            "node %s up: rtmp://%s:%d  http://%s:%d",
            self.config.node.id,
            *parse_hostport(self.config.rtmp.listen)[:1],
            self.rtmp_port,
            host,
            self.http_port,
        )

    async def _start_agent(self, host: str) -> None:
        """Register with placement (remote, or the embedded registry). Never blocks media."""
        from placement import model as pm
        from placement.agent import NodeAgent
        from placement.registry.memory import InProcessRegistry

        n = self.config.node
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        tenant = self.config.rtmp.tenants[0]
        desc = pm.Node(
            id=n.id,
            tier=pm.Tier(n.tier),
            region=n.region,
            city=n.city,
            isp=n.isp,
            lat=0.0,
            lon=0.0,
            urls=pm.Urls(
                rtmp=f"rtmp://{shown}:{self.rtmp_port}/{tenant}",
                http=f"http://{shown}:{self.http_port}",
                whip=f"http://{shown}:{self.http_port}",
            ),
            capacity=pm.Capacity(
                slots=max(1, int(self.capacity.total) or 1), egress_mbps=1000.0, viewers=1000
            ),
        )

        def load() -> pm.Load:
            used = self.capacity.in_use
            total = self.capacity.total or 1.0
            return pm.Load(cpu=min(1.5, used / total), transcodes=len(self.sessions))

        try:
            registry = None if self.config.placement.url else InProcessRegistry()
            self.agent = NodeAgent(
                desc, load, self.config.placement, registry=registry,
                streams=lambda: [str(k) for k in self.sessions],
            )
            await self.agent.start()
        except Exception:
            log.exception("placement agent failed to start; serving without it")
            self.agent = None

    async def _calibrate(self) -> None:
        """Measure capacity in a child process, so the event loop and GIL stay free."""
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "transcode.calibrate",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                out, _ = await proc.communicate()
            except asyncio.CancelledError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise
            units = float(json.loads(out)["capacity_units"])
        except (OSError, ValueError, KeyError) as exc:
            log.warning("capacity calibration failed (%s); admitting every stream", exc)
            return
        self.capacity.total = units
        self.tmetrics.capacity.set(units)
        log.info("transcode capacity measured: %.2f ladder units", units)

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                for key in self.store.expire(time.time()):
                    log.info("[node %s] ended stream dropped from the store", key)
                    self.tmetrics.fps.clear()
                self._update_worker_gauge()
            except Exception:
                log.exception("housekeeping failed")

    async def stop(self) -> None:
        """Stop ingest, flush every worker, stop HTTP. Never hangs."""
        log.info("node stopping")
        if self.agent is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.agent.stop(), 5)
        await self.rtmp.stop()
        sessions = list(self.sessions.values())
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        for t in self._grace.values():
            t.cancel()
        if self.recorder is not None:
            for key in list(self._grace):
                if self.recorder.mode(key.tenant) is not None:
                    self.recorder.end(key.tenant, key.stream)
            await asyncio.to_thread(self.recorder.close)
        self._grace.clear()
        if self._calibration is not None:
            self._calibration.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._calibration
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        if self._http_server is not None and self._http_task is not None:
            self._http_server.should_exit = True
            try:
                await asyncio.wait_for(self._http_task, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._http_task.cancel()
        if self._http_sock is not None:
            self._http_sock.close()
        log.info("node stopped")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the node decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield
