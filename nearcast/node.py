"""Assembly of an edge node: ingest -> transcode -> distribute.

This module only wires the stages together and owns the per-stream lifecycle
(publish, grace period, reconnect, end). The stages know nothing of each other.
One publish's session and its worker's sink are in nearcast.session; what the node
reports to placement is in nearcast.placement_report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import sys
import time
from typing import Any

import httpx
import uvicorn
from prometheus_client import CollectorRegistry

from distribute.access import PlaybackGuard, PlaybackMetrics, TokenCheck
from distribute.api import create_api
from distribute.fastpath import media_protocol
from distribute.hls.store import Store
from distribute.hls.stream import LiveStream
from distribute.http import MediaApp
from distribute.media_metrics import MediaMetrics
from distribute.record import Recorder, RecordMetrics
from distribute.relay.api import add_relay_routes
from distribute.relay.manager import PlacementDirectory, RelayManager
from distribute.relay.metrics import RelayMetrics
from distribute.whep.cmaf_source import CmafWhepSource
from distribute.whep.http import whep_router
from distribute.whep.server import WhepServer, ice_network
from ingest.auth import PublishAuth, client_ip, redact_query
from ingest.metrics import IngestMetrics
from ingest.rtmp.server import RtmpServer, parse_query
from ingest.sink import PublishRefused, PublishRequest
from ingest.whip.server import WhipServer
from media import StreamKey
from nearcast.config import Config, parse_hostport
from nearcast.logs import uvicorn_log_config
from nearcast.placement_report import PlacementReport
from nearcast.session import StreamSession
from nearcast.tls import CertReloader, server_context
from transcode.admission import Admission, admit
from transcode.capacity import Capacity, cached, ladder_units, remember
from transcode.metrics import TranscodeMetrics
from transcode.pool import WorkerState

log = logging.getLogger(__name__)

# Housekeeping ticks (seconds) between checks of the certificate files for a renewal.
TLS_RELOAD_TICKS = 3


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
            metrics_token=config.http.metrics_token,
            # A tenant whose viewers need a token is not listed to anonymous callers.
            guarded=lambda tenant: config.playback.keys_for(tenant) is not None,
        )
        self.placement_registry: Any = None
        self.placement: Any = None
        if not config.placement.url:
            self._embed_placement(api)
        # One WebRTC network (webrtc: UDP ports, announced IPs, STUN/TURN) for WHIP and WHEP.
        self.ice = ice_network(config.webrtc, self.registry)
        self.whip = WhipServer(
            config.whip,
            self,
            self.imetrics,
            cors_origin=config.http.cors_origin,
            keyframe_interval=self._whip_keyframe_interval,
            network=self.ice,
        )
        api.include_router(self.whip.router)
        self.whep = WhepServer(config.webrtc, self.registry, network=self.ice)
        api.include_router(whep_router(self.whep, config.http.cors_origin, self._relay_tap))
        # Recording (record.tenants): written on its own thread, served at /{t}/{s}/vod/.
        self.recorder: Recorder | None = (
            Recorder(config.record, RecordMetrics(self.registry)) if config.record.tenants else None
        )
        media_metrics = MediaMetrics(self.registry, whep=lambda: len(self.whep.sessions))
        self.media_app = MediaApp(
            self.store, api, media_metrics, config.http.cors_origin, vod=self.recorder
        )
        self.http_app: Any = self.media_app
        if config.playback.tenants:
            # Tenants whose viewers need a signed token: the fast path answers a request
            # whose token is already verified (signing every playlist URI with it); the
            # guard checks the rest and refuses them with a reason.
            # A relay's pull carries its relay credential (relay.keys), not a viewer token.
            tokens = TokenCheck(config.playback.keys_for, relay_keys=config.relay.keys)
            self.media_app.tokens = tokens
            self.http_app = PlaybackGuard(
                self.media_app,
                tokens,
                PlaybackMetrics(self.registry),
                cors_origin=config.http.cors_origin,
            )
        # One uvicorn server per listener (plain HTTP, HTTPS), the same app behind both.
        self._http_servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
        self._https_sock: socket.socket | None = None
        # Certificates reloaded when their files change (HTTPS, RTMPS).
        self._tls_reloaders: list[CertReloader] = []
        self._housekeeping: asyncio.Task[None] | None = None
        self.agent: Any = None
        # Streams not held here, pulled from another node on demand (relay.enabled).
        self.relay: RelayManager | None = None
        add_relay_routes(
            api,
            lambda: self.relay.describe() if self.relay is not None else [],
            config.ingest.operator_token,
        )
        self._http_sock: socket.socket | None = None
        self.started = time.time()

    # -- IngestSink -----------------------------------------------------------------

    async def open_publish(self, request: PublishRequest) -> StreamSession:
        key = request.key
        # Every attempt counts, refused ones too: guessing tokens or names is attempts.
        self.auth.check_rate(client_ip(request.remote), str(key), exempt=request.exempt)
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
            query = redact_query(request.query)
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
        profile, admission = self._admit(request)
        request.source_limits = self.config.ingest.source_limits(key.tenant)
        timer = self._grace.pop(key, None)
        if timer is not None:
            timer.cancel()
            log.info("[node %s] publisher is back within the grace period", key)
        if self.relay is not None:
            self.relay.release(key)  # a stream relayed here until now
        stream = self.store.open(key)
        stream.publisher_connected = True
        session = StreamSession(self, request, stream, profile, admission)
        self.sessions[key] = session
        if self.config.webrtc.enabled:
            self.whep.open(key)
        self.capacity.reserve(key, admission.units)
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

    def _admit(self, request: PublishRequest) -> tuple[str, Admission]:
        """Pick the stream's profile and the largest part of its ladder that fits."""
        tc = self.config.transcode
        profile = tc.tenant_profiles.get(request.key.tenant, "default")
        asked = parse_query(request.query).get("profile") if tc.stream_profile_param else None
        if asked:
            profile = asked
        try:
            ladder = tc.profile(profile).ladder
        except KeyError:
            raise PublishRefused("profile", f"unknown transcode profile {profile!r}") from None
        # An unknown capacity (calibration failed) admits every ladder, as before it existed.
        known = self.capacity.total > 0
        free = self.capacity.total - self.capacity.in_use if known else float("inf")
        admission = admit(
            ladder, free, reserve=tc.admission_reserve, add_source=tc.trimmed_adds_source
        )
        if admission is not None:
            if admission.trimmed:
                log.warning(
                    "[node %s] %.2f of %.2f transcode units free: %s left out",
                    request.key,
                    free,
                    self.capacity.total,
                    ", ".join(name for name, _ in admission.left_out),
                )
                self.tmetrics.degradations.labels("trimmed").inc()
            return profile, admission
        if tc.overflow == "refuse":
            raise PublishRefused(
                "capacity",
                f"no transcode capacity for {request.key}: {self.capacity.in_use:.2f} of "
                f"{self.capacity.total:.2f} units in use, {profile!r} needs at least "
                f"{min(ladder_units([r]) for r in ladder if r.codec != 'copy'):.2f}",
            )
        log.warning(
            "[node %s] over capacity (%.2f of %.2f units): serving the source untranscoded",
            request.key,
            self.capacity.in_use,
            self.capacity.total,
        )
        self.tmetrics.degradations.labels("passthrough").inc()
        reason = f"{free:.2f} transcode units free, not enough for any rung"
        left_out = [(r.name, reason) for r in ladder if r.codec != "copy"]
        return "passthrough", Admission(tc.profile("passthrough").ladder, 0.0, left_out)

    async def _relay_tap(self, tenant: str, stream: str) -> bool:
        """A WHEP viewer of a stream not published here: relay its WebRTC tap, if relays
        are on (relay.enabled)."""
        if self.relay is None:
            return False
        return await self.relay.open_tap(tenant, stream)

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
        self.tmetrics.forget_stream(str(key))  # its worker has flushed: no stats follow
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
            "https_port": self.https_port,
        }

    def _ready(self) -> dict[str, bool]:
        return {
            "rtmp": self.rtmp.serving,
            "http": bool(self._http_servers) and all(s.started for s, _ in self._http_servers),
        }

    @property
    def rtmp_port(self) -> int:
        return self.rtmp.port

    @property
    def http_port(self) -> int:
        """The plain HTTP port; 0 when ``http.listen`` is empty."""
        return self._http_sock.getsockname()[1] if self._http_sock else 0

    @property
    def https_port(self) -> int:
        """The HTTPS port; 0 unless ``http.tls_cert`` and ``http.tls_key`` are set."""
        return self._https_sock.getsockname()[1] if self._https_sock else 0

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
        if self.config.transcode.capacity_units == 0:
            # Before the ports open: no class is admitted on an unknown capacity, and the
            # calibration encode never competes with a live stream for the cores.
            await self._calibrate()
        await self.rtmp.start()
        hc = self.config.http
        if self.rtmp.tls_context is not None:
            rc = self.config.rtmp
            self._tls_reloaders.append(
                CertReloader(self.rtmp.tls_context, rc.tls_cert, rc.tls_key, "RTMPS")
            )
        if hc.listen:
            self._http_sock = await self._serve_http(hc.listen, None)
        if hc.tls:
            # A browser grants a WHIP page the camera only in a secure context, and tokens
            # must not travel in clear: HTTPS serves the same app, fast path included.
            ctx = server_context(hc.tls_cert, hc.tls_key, "HTTPS ('http.tls_cert')")
            self._https_sock = await self._serve_http(hc.tls_listen, ctx)
            self._tls_reloaders.append(CertReloader(ctx, hc.tls_cert, hc.tls_key, "HTTPS"))
        host = parse_hostport(hc.listen or hc.tls_listen)[0]
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        if self.config.relay.enabled:
            self._start_relay(host)
        await self._start_agent(host)
        log.info(
            "node %s up: rtmp://%s:%d  http://%s:%d  https://%s:%d",
            self.config.node.id,
            *parse_hostport(self.config.rtmp.listen)[:1],
            self.rtmp_port,
            host,
            self.http_port,
            host,
            self.https_port,
        )

    async def _serve_http(self, listen: str, tls: ssl.SSLContext | None) -> socket.socket:
        """Start a uvicorn server for the node's app on ``listen``, over TLS with ``tls``."""
        host, port = parse_hostport(listen)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        name = "https" if tls is not None else "http"
        server = _EmbeddedServer(
            uvicorn.Config(
                self.http_app,
                # Media hits skip the ASGI machinery, and every request meets the
                # http: section's limits there (distribute/fastpath.py).
                http=media_protocol(self.media_app, self.config.http),
                log_level="warning",
                log_config=uvicorn_log_config(),
                lifespan="off",
                access_log=False,
                timeout_keep_alive=self.config.http.keep_alive_timeout,
                # The node's own live context, so a reloaded certificate reaches new
                # handshakes (nearcast.tls).
                ssl_context_factory=None if tls is None else lambda _config, _default: tls,
                limit_concurrency=self.config.http.limit_concurrency or None,
                # Without httptools (h11): at least the request head stays bounded.
                h11_max_incomplete_event_size=(
                    self.config.http.max_url_bytes + self.config.http.max_header_bytes
                ),
            )
        )
        task = asyncio.create_task(server.serve(sockets=[sock]), name=name)
        self._http_servers.append((server, task))
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done():
                sock.close()
                task.result()
            if time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"{name.upper()} server did not start within 10 s")
            await asyncio.sleep(0.01)
        return sock

    def _embed_placement(self, api: Any) -> None:
        """No placement.url: this node is its own placement service. It registers itself
        in an in-process registry and answers the placement API's /v1/ routes (sessions,
        route, nodes, policy, decisions) and serves the operator's console (/console) on
        its own HTTP port, so a single node needs no Redis and other nodes may even
        heartbeat into it."""
        from placement.app import create_app
        from placement.registry.memory import InProcessRegistry

        self.placement_registry = InProcessRegistry()
        app = create_app(
            self.config.placement, self.placement_registry, metrics_registry=self.registry
        )
        self.placement = app.state.service
        # The placement API, and the operator's console that drives it (/console).
        routes = [
            r for r in app.router.routes if getattr(r, "path", "").startswith(("/v1/", "/console"))
        ]
        api.router.routes[:0] = routes  # before the node's /{tenant}/{stream}/... routes
        for exc, handler in app.exception_handlers.items():
            if exc not in api.exception_handlers:
                api.add_exception_handler(exc, handler)

    async def _start_agent(self, host: str) -> None:
        """Register with placement (remote, or the embedded registry). Never blocks media."""
        from placement.agent import NodeAgent

        try:
            report = PlacementReport(self, host)
            registry = None if self.config.placement.url else self.placement_registry
            if self.placement is not None:
                await self.placement.start()
            self.agent = NodeAgent(
                report.descriptor(),
                report.load,
                self.config.placement,
                registry=registry,
                sessions=report.sessions,
                streams=lambda: (
                    [str(k) for k in self.sessions]
                    + (self.relay.held() if self.relay is not None else [])
                ),
            )
            report.agent = self.agent
            if self.relay is not None:
                self.relay.on_change = self.agent.streams_changed
            await self.agent.start()
        except Exception:
            log.exception("placement agent failed to start; serving without it")
            self.agent = None

    def _start_relay(self, host: str) -> None:
        """Relay streams not held here: ask placement (remote, or this node's own embedded
        one) for an upstream with this node's credential."""
        pc = self.config.placement
        if pc.url:
            base = pc.url.rstrip("/")
        else:
            shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            shown = f"[{shown}]" if ":" in shown else shown
            base = (
                f"http://{shown}:{self.http_port}"
                if self.http_port
                else f"https://{shown}:{self.https_port}"
            )
        rc = self.config.relay
        # httpx logs every request at INFO: a relay makes several per part.
        logging.getLogger("httpx").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
        headers = {"Authorization": f"Bearer {pc.node_token}"} if pc.node_token else {}
        client = httpx.AsyncClient(
            base_url=base,
            headers=headers,
            timeout=httpx.Timeout(rc.read_timeout, connect=rc.connect_timeout),
        )
        self.relay = RelayManager(
            rc,
            self.store,
            PlacementDirectory(client, self.config.node.id),
            RelayMetrics(self.registry),
            placement_client=client,
        )
        self.media_app.relay = self.relay
        if self.config.webrtc.enabled:
            # WHEP viewers of a relayed stream: its WebRTC tap, pulled as CMAF and sent
            # re-packetized (distribute.whep.cmaf_source).
            self.relay.tap_sink = lambda key: CmafWhepSource(self.whep, key)
            self.relay.tap_viewers = self.whep.viewers
        self.media_app.relays_for_relays = self.config.node.tier != "edge"
        self.relay.start()
        log.info("relay on: streams not held here are pulled via placement at %s", base)

    async def _calibrate(self) -> None:
        """Measure capacity in a child process, so the event loop and GIL stay free; a
        figure measured before on this machine for this ladder is taken as it is."""
        tc = self.config.transcode
        units = cached(tc) if tc.calibration_cache else None
        if units is not None:
            log.info("transcode capacity %.2f ladder units (measured before, cached)", units)
        else:
            log.info("measuring transcode capacity before opening the ports")
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
            if tc.calibration_cache:
                await asyncio.to_thread(remember, tc, units)
            log.info("transcode capacity measured: %.2f ladder units", units)
        self.capacity.total = units
        self.tmetrics.capacity.set(units)

    async def _housekeep(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            try:
                for key in self.store.expire(time.time()):
                    log.info("[node %s] ended stream dropped from the store", key)
                self._update_worker_gauge()
                if ticks % TLS_RELOAD_TICKS == 0:
                    # Two stat() calls per certificate: a renewed one is served within
                    # a few seconds, without a restart.
                    for reloader in self._tls_reloaders:
                        reloader.check()
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
        if self.relay is not None:
            self.media_app.relay = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay.close(), 5)
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
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        for server, _task in self._http_servers:
            server.should_exit = True
        tasks = [task for _server, task in self._http_servers]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
        for sock in (self._http_sock, self._https_sock):
            if sock is not None:
                sock.close()
        log.info("node stopped")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the node decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield
