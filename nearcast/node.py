"""Assembly of an edge node: ingest -> transcode -> distribute.

This module only wires the stages together and owns the per-stream lifecycle
(publish, grace period, reconnect, end). The stages know nothing of each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
import time
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from distribute.access import PlaybackGuard, PlaybackMetrics, TokenCheck
from distribute.api import create_api
from distribute.fastpath import media_protocol
from distribute.hls.store import LiveStream, RenditionTrack, Segment, Store
from distribute.http import MediaApp, MediaMetrics
from distribute.record import Recorder, RecordMetrics, StreamRecorder
from distribute.whep import WhepServer
from distribute.whep.http import whep_router
from ingest.auth import PublishAuth, client_ip
from ingest.metrics import IngestMetrics
from ingest.rtmp.server import RtmpServer, parse_query
from ingest.sink import PublishRefused, PublishRequest
from ingest.stats import IngestStats
from ingest.whip import WhipServer
from media import MediaPacket, StreamKey
from media.segments import InitFrame, PartFrame, SegmentFrame
from nearcast.config import Config, parse_hostport
from transcode.capacity import Capacity, ladder_units
from transcode.metrics import TranscodeMetrics
from transcode.pool import Transcoder, WorkerState
from transcode.spec import Spec

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
        return {n: t.width * t.height for n, t in self.stream.renditions.items()}

    def _record_segment(
        self, rendition: str, data: bytes, duration: float, fmp4: bool | None = None
    ) -> None:
        rec = self._recorder()
        track = self.stream.renditions.get(rendition)
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
        self.record_begin()

    def on_tap(self, packet: MediaPacket, arrival: float) -> None:
        self.node.whep.feed(self.stream.key, packet)

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
        self.ingest = IngestStats(request.protocol, request.remote, time.monotonic())
        self._next_limit_check = 0.0

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
        ladder = list(profile.ladder)
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
            tap=(tap_rendition(cfg.webrtc.rendition, profile.ladder) if cfg.webrtc.enabled else ""),
            record_fmp4=(
                hls.segment_format == "ts"
                and self.node.recorder is not None
                and self.node.recorder.mode(self.key.tenant) is not None
            ),
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
        # The stream's last measured bit rate stays in its description after it ends.
        self.stream.ingest["bitrate"] = round(self.ingest.bitrate(time.monotonic()))
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
        from placement.agent import AgentCollector

        self.registry.register(AgentCollector(lambda: self.agent))
        self.sessions: dict[StreamKey, StreamSession] = {}
        self._grace: dict[StreamKey, asyncio.TimerHandle] = {}
        self.rtmp = RtmpServer(config.rtmp, self, self.imetrics)
        self.auth = PublishAuth(
            config.ingest,
            config.node.id,
            on_webhook=lambda outcome: self.imetrics.webhook.labels(outcome).inc(),
        )
        # Publishes past the cheap checks, awaiting the webhook: they count towards the limits.
        self._opening: dict[StreamKey, int] = {}
        api = create_api(
            self.store,
            self.registry,
            self._ready,
            self.info,
            ingest_stats=self.ingest_stats,
            kick=self.kick,
            operator_token=config.ingest.operator_token,
        )
        self.placement_registry: Any = None
        self.placement: Any = None
        if not config.placement.url:
            self._embed_placement(api)
        self.whip = WhipServer(
            config.whip,
            self,
            self.imetrics,
            cors_origin=config.http.cors_origin,
            keyframe_interval=self._whip_keyframe_interval,
        )
        api.include_router(self.whip.router)
        self.whep = WhepServer(config.webrtc, self.registry)
        api.include_router(whep_router(self.whep, config.http.cors_origin))
        # Recording (record.tenants): written on its own thread, served at /{t}/{s}/vod/.
        self.recorder: Recorder | None = (
            Recorder(config.record, RecordMetrics(self.registry)) if config.record.tenants else None
        )
        self.media_app = MediaApp(
            self.store, api, MediaMetrics(self.registry), config.http.cors_origin, vod=self.recorder
        )
        self.http_app: Any = self.media_app
        if config.playback.tenants:
            # Tenants whose viewers need a signed token: the fast path answers a request
            # whose token is already verified (signing every playlist URI with it); the
            # guard checks the rest and refuses them with a reason.
            tokens = TokenCheck(config.playback.keys_for)
            self.media_app.tokens = tokens
            self.http_app = PlaybackGuard(
                self.media_app,
                tokens,
                PlaybackMetrics(self.registry),
                cors_origin=config.http.cors_origin,
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
        token = request.token
        if token is None:
            token = parse_query(request.query).get("token")
        # Limits first (no I/O), then token and webhook; only an authorized publisher
        # learns whether the stream is live (duplicate) or is let take it over.
        takeover = self.config.ingest.takeover and key in self.sessions
        self._check_limits(key, replacing=takeover)
        self._opening[key] = self._opening.get(key, 0) + 1
        try:
            query = "&".join(
                p for p in request.query.split("&") if p and not p.startswith("token=")
            )
            await self.auth.check(
                key.tenant,
                key.stream,
                token,
                client_ip(request.remote),
                request.protocol,
                {"query": query},
            )
        finally:
            self._opening[key] -= 1
            if not self._opening[key]:
                del self._opening[key]
        old = self.sessions.get(key)
        if old is not None and old.closed:
            # Its publisher is gone and the worker is flushing: a quick reconnect waits
            # for the flush instead of being refused as a duplicate.
            await old.close()
            old = self.sessions.get(key)
        if old is not None:
            if not self.config.ingest.takeover:
                raise PublishRefused("duplicate", f"stream {key} is already being published")
            log.warning(
                "[node %s] taken over by %s %s; disconnecting %s",
                key,
                request.protocol,
                request.remote,
                old.request.remote,
            )
            self.imetrics.closed.labels("takeover").inc()
            old.disconnect("takeover")
            await old.close()
            if key in self.sessions:  # a third publisher won the race meanwhile
                raise PublishRefused("duplicate", f"stream {key} is already being published")
        self._check_limits(key, replacing=old is not None)
        profile, units = self._admit(request)
        timer = self._grace.pop(key, None)
        if timer is not None:
            timer.cancel()
            log.info("[node %s] publisher is back within the grace period", key)
        stream = self.store.open(key)
        stream.publisher_connected = True
        session = StreamSession(self, request, stream, profile, units)
        self.sessions[key] = session
        if self.config.webrtc.enabled:
            self.whep.open(key)
        self.capacity.reserve(key, units)
        self.tmetrics.used.set(self.capacity.in_use)
        return session

    def _check_limits(self, key: StreamKey, replacing: bool = False) -> None:
        """Refuse a publish over max_publishers or max_publishers_per_tenant."""
        ic = self.config.ingest
        live = [k for k in self.sessions if k != key or not replacing]
        pending = [k for k, n in self._opening.items() for _ in range(n)]
        if ic.max_publishers and len(live) + len(pending) >= ic.max_publishers:
            raise PublishRefused(
                "limit_node",
                f"{key}: node has {len(live)} publishers, the limit (ingest.max_publishers) "
                f"is {ic.max_publishers}",
            )
        per = ic.max_publishers_per_tenant
        n = sum(1 for k in live + pending if k.tenant == key.tenant)
        if per and n >= per:
            raise PublishRefused(
                "limit_tenant",
                f"{key}: tenant {key.tenant!r} has {n} publishers, the limit "
                f"(ingest.max_publishers_per_tenant) is {per}",
            )

    def ingest_stats(self, tenant: str, stream: str) -> dict[str, Any] | None:
        session = self.sessions.get(StreamKey(tenant, stream))
        if session is None:
            return None
        return session.ingest.describe(time.monotonic())

    def kick(self, tenant: str, stream: str) -> bool:
        """Disconnect the publisher of ``tenant/stream``; False when nobody publishes it."""
        session = self.sessions.get(StreamKey(tenant, stream))
        if session is None or session.closed:
            return False
        log.warning(
            "[node %s] publisher %s kicked by an operator", session.key, session.request.remote
        )
        self.imetrics.closed.labels("kicked").inc()
        session.disconnect("kicked")
        return True

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
            request.key,
            self.capacity.in_use,
            self.capacity.total,
        )
        self.tmetrics.degradations.labels("passthrough").inc()
        return "passthrough", 0.0

    def _whip_keyframe_interval(self, publication: Any) -> float:
        """Seconds between keyframe requests to a WebRTC publisher (0: none).

        Once a segment when the stream's profile passes the source through.
        """
        if self.config.whip.keyframe_interval:
            return self.config.whip.keyframe_interval
        ladder = self.config.transcode.profile(getattr(publication, "profile", "default")).ladder
        return self.config.hls.segment_duration if any(r.codec == "copy" for r in ladder) else 0.0

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
            self.whep.end(key)
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
            "rtmps_port": self.rtmp.tls_port,
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
                http=media_protocol(self.media_app),
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

    def _embed_placement(self, api: Any) -> None:
        """No placement.url: this node is its own placement service. It registers itself
        in an in-process registry and answers the placement API's /v1/ routes (sessions,
        route, nodes, policy, decisions) on its own HTTP port, so a single node needs no
        Redis and other nodes may even heartbeat into it."""
        from placement.app import create_app
        from placement.registry.memory import InProcessRegistry

        self.placement_registry = InProcessRegistry()
        app = create_app(
            self.config.placement, self.placement_registry, metrics_registry=self.registry
        )
        self.placement = app.state.service
        routes = [r for r in app.router.routes if getattr(r, "path", "").startswith("/v1/")]
        api.router.routes[:0] = routes  # before the node's /{tenant}/{stream}/... routes
        for exc, handler in app.exception_handlers.items():
            if exc not in api.exception_handlers:
                api.add_exception_handler(exc, handler)

    async def _start_agent(self, host: str) -> None:
        """Register with placement (remote, or the embedded registry). Never blocks media."""
        from placement.agent import NodeAgent

        try:
            report = _PlacementReport(self, host)
            registry = None if self.config.placement.url else self.placement_registry
            if self.placement is not None:
                await self.placement.start()
            self.agent = NodeAgent(
                report.descriptor(),
                report.load,
                self.config.placement,
                registry=registry,
                sessions=report.sessions,
                streams=lambda: [str(k) for k in self.sessions],
            )
            report.agent = self.agent
            await self.agent.start()
        except Exception:
            log.exception("placement agent failed to start; serving without it")
            self.agent = None

    async def _calibrate(self) -> None:
        """Measure capacity in a child process, so the event loop and GIL stay free."""
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "transcode.calibrate",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
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
        if self.placement is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.placement.stop(), 5)
        await self.rtmp.stop()
        await self.whip.stop()
        with contextlib.suppress(Exception):
            await self.auth.aclose()
        sessions = list(self.sessions.values())
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.whep.close(), 5)
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


class _PlacementReport:
    """What the placement agent tells the fleet about this node: its descriptor and load.

    Everything here reads state the node already keeps (no I/O on the media path).
    """

    def __init__(self, node: Node, host: str) -> None:
        self.node = node
        self.agent: Any = None
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.host = f"[{shown}]" if ":" in shown else shown
        self._cpu = _CpuMeter()
        # (when, HLS bytes sent, segments fetched, parts fetched) at the last measure.
        self._last = (time.monotonic(), *_hls_totals(node.media_app.metrics))
        self._egress_mbps = 0.0
        self._hls_viewers = 0
        # Placement session ids of streams whose publisher has gone, kept through the grace
        # period (the stream may come back), keyed by stream.
        self._ids: dict[StreamKey, str] = {}

    def descriptor(self) -> Any:
        from placement import model as pm

        n = self.node.config.node
        rtmp = n.public_rtmp or f"rtmp://{self.host}:{self.node.rtmp_port}"
        http = n.public_http or f"http://{self.host}:{self.node.http_port}"
        total = self.node.capacity.total
        return pm.Node(
            id=n.id,
            tier=pm.Tier(n.tier),
            region=n.region,
            city=n.city,
            isp=n.isp,
            lat=n.lat,
            lon=n.lon,
            urls=pm.Urls(rtmp=rtmp.rstrip("/"), http=http.rstrip("/"), whip=http.rstrip("/")),
            # Ladder units as slots: the measured (or configured) transcode capacity; 1
            # while it is still being measured, or when it is unknown (0: admit everything).
            capacity=pm.Capacity(
                slots=max(1, int(total)), egress_mbps=n.egress_mbps, viewers=n.max_viewers
            ),
            labels=dict(n.labels),
        )

    def sessions(self) -> list[str]:
        """Placement session ids of the streams held, whose leases each beat renews.

        A publisher names its session with ``?session=ID`` on the ingest URL (RTMP stream
        key or WHIP URL); the id stays renewed through the grace period after it leaves.
        """
        from ingest.rtmp.server import parse_query

        live: dict[StreamKey, str] = {}
        for key, sess in self.node.sessions.items():
            sid = parse_query(sess.request.query).get("session")
            if sid:
                live[key] = sid
        for key in list(self._ids):
            if key not in live and key not in self.node._grace:
                del self._ids[key]
        self._ids.update(live)
        return sorted(set(self._ids.values()))

    def load(self) -> Any:
        """The node's real load, measured since the previous beat."""
        from placement import model as pm

        node = self.node
        if self.agent is not None:
            # Capacity is measured after start (calibration): re-send the descriptor.
            self.agent.update(self.descriptor())
        now = time.monotonic()
        metrics = node.media_app.metrics
        t0, sent0, seg0, part0 = self._last
        if now - t0 >= 0.5:
            sent, seg, part = _hls_totals(metrics)
            self._last = (now, sent, seg, part)
            hls_mbps = (sent - sent0) * 8 / (now - t0) / 1e6
            # HLS viewers are not tracked per client (the fast path keeps no per-client
            # state): estimate them from the fetch rate, a player fetching one segment per
            # segment duration (or one part per part duration with LL-HLS).
            hc = node.config.hls
            by_seg = (seg - seg0) / (now - t0) * hc.segment_duration
            by_part = (part - part0) / (now - t0) * hc.part_duration  # LL-HLS streams only
            self._hls_viewers = round(max(by_seg, by_part))
            # WHEP bytes are not counted per packet: estimate each WHEP viewer's egress as
            # its stream's ingest bit rate (what the tap rendition is at most).
            whep_bps = 0.0
            for w in list(node.whep.sessions.values()):
                if not w.closed:
                    s = node.sessions.get(w.key)
                    if s is not None:
                        whep_bps += s.ingest.bitrate(now)
            self._egress_mbps = hls_mbps + whep_bps / 1e6
        whep_viewers = sum(1 for w in list(node.whep.sessions.values()) if not w.closed)
        return pm.Load(
            cpu=self._cpu.read(),
            # Streams encoding a ladder; passthrough (over capacity, or a copy-only
            # profile) costs no transcode slot.
            transcodes=sum(1 for s in node.sessions.values() if s.units > 0 and not s.closed),
            egress_mbps=round(self._egress_mbps, 3),
            viewers=whep_viewers + self._hls_viewers,
        )


def _hls_totals(metrics: MediaMetrics) -> tuple[int, int, int]:
    """HLS media bytes sent, and the segments and parts served, since the node started."""
    seg = part = 0
    for (kind, status), n in list(metrics.counts.items()):
        if status < 400:
            seg += n if kind == "segment" else 0
            part += n if kind == "part" else 0
    return metrics.sent, seg, part


class _CpuMeter:
    """Share of the machine's CPU in use (0-1) since the previous read, from /proc/stat:
    transcode workers, the node and anything else on the host. Falls back to the 1-minute
    load average per core where /proc is not available."""

    def __init__(self) -> None:
        self._last = self._times()
        self._value = 0.0

    @staticmethod
    def _times() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # guest time is already counted in user

    def read(self) -> float:
        now = self._times()
        if now is None or self._last is None:
            try:
                return min(1.5, os.getloadavg()[0] / (os.cpu_count() or 1))
            except OSError:
                return 0.0
        total, idle = now[0] - self._last[0], now[1] - self._last[1]
        if total > 0:
            self._value = min(1.0, max(0.0, 1.0 - idle / total))
            self._last = now
        return self._value


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the node decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield
