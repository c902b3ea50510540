"""WHIP (RFC 9725): WebRTC publish over one HTTP POST, onto the node's ingest seam.

``POST /{tenant}/{stream}/whip`` with an SDP offer creates a session resource
and answers with the full SDP answer (this endpoint gathers all its candidates
before answering: aiortc does not trickle). ``DELETE`` on the resource ends the
publish; ``PATCH`` (trickle ICE, ICE restart) is answered ``405`` with the
methods allowed, as RFC 9725 §4.3.1 permits. Every response carries CORS
headers, so a page on another origin can publish.

The encoded frames reach :class:`ingest.sink.Publication` exactly as RTMP's do;
the transcode worker decodes them once (H.264, VP8, Opus -> the ladder + AAC).

Interop note: FFmpeg 8.1 built with GnuTLS (PyAV's wheels) signs DTLS with a
self-generated secp224r1 certificate, which OpenSSL 4 (aiortc's DTLS) no longer
accepts ("wrong curve"). Give its WHIP muxer a P-256 certificate with
``-cert_file``/``-key_file``; RFC 8827 §6.5 makes P-256 the curve every WebRTC
endpoint supports.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiortc import (
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc import sdp as aiosdp
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.requests import ClientDisconnect

from ingest.metrics import IngestMetrics
from ingest.sink import IngestSink, Publication, PublishRefused, PublishRequest
from ingest.source import SourceGuard
from ingest.whip.config import WhipConfig
from ingest.whip.mapper import AUDIO_CODECS, VIDEO_CODECS
from ingest.whip.session import WhipSession
from media import StreamKey
from media.ice import PortsExhausted
from media.icegather import IceNetwork
from media.names import stream_name_problem

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "publish.html"
SDP_TYPE = "application/sdp"

# (tenant, stream, bearer token or None, client IP, protocol) -> None to allow, or the
# refusal reason. Publish authentication plugs in here; the default allows everyone.
PublishAuthorizer = Callable[[str, str, str | None, str, str], Awaitable[str | None] | str | None]

# PublishRefused.reason -> HTTP status of the refused POST.
REFUSAL_STATUS = {
    "tenant": 404,
    "duplicate": 409,
    "capacity": 503,
    "limit": 503,
    "profile": 400,
    "codec": 400,
    "auth": 403,
    "token": 403,
    # RFC 6585 §4, with Retry-After: the client's address made too many attempts.
    "publish_rate": 429,
}


def refusal_status(reason: str, token: str | None) -> tuple[int, dict[str, str]]:
    """HTTP status (and headers) of a publish the node refused for ``reason``."""
    if reason.startswith("token_"):
        if token is None:
            return 401, {"WWW-Authenticate": 'Bearer realm="nearcast"'}
        return 403, {}
    if reason.startswith("webhook"):
        return 403, {}
    if reason.startswith("limit") or reason == "bitrate":
        return 503, {}
    return REFUSAL_STATUS.get(reason, 403), {}


class OfferError(ValueError):
    """The SDP offer cannot be answered; the message says why."""


def allow_all(tenant: str, stream: str, token: str | None, ip: str, protocol: str) -> None:
    return None


def check_offer(text: str) -> aiosdp.SessionDescription:
    """Parse an SDP offer and check it publishes something this node can take."""
    if not text.strip():
        raise OfferError("the SDP offer is empty")
    if not text.lstrip().startswith("v=0"):
        raise OfferError("the SDP offer does not start with 'v=0' (RFC 8866 §5)")
    try:
        desc = aiosdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc raises anything from ValueError to IndexError
        raise OfferError(f"the SDP offer is malformed: {exc or type(exc).__name__}") from None
    video = [m for m in desc.media if m.kind == "video"]
    audio = [m for m in desc.media if m.kind == "audio"]
    if not video:
        raise OfferError("the SDP offer has no video m-line; WHIP ingest needs H.264 or VP8 video")
    for kind, lines, accepted in (("video", video, VIDEO_CODECS), ("audio", audio, AUDIO_CODECS)):
        for m in lines:
            if m.direction not in ("sendonly", "sendrecv", None):
                raise OfferError(
                    f"the {kind} m-line is {m.direction}; a WHIP offer must send media"
                )
            names = [c.name for c in m.rtp.codecs if c.name.lower() not in ("rtx", "red", "ulpfec")]
            if not any(n.lower() in accepted for n in names):
                offered = ", ".join(names) or "none"
                wanted = ", ".join(n.upper() if n != "opus" else "Opus" for n in accepted)
                raise OfferError(
                    f"no acceptable {kind} codec (offered: {offered}; accepted: {wanted})"
                )
            if m.ice is None or not m.ice.usernameFragment or not m.ice.password:
                raise OfferError(f"the {kind} m-line has no a=ice-ufrag and a=ice-pwd")
            if not m.dtls or not m.dtls.fingerprints:
                raise OfferError(f"the {kind} m-line has no a=fingerprint (DTLS-SRTP is mandatory)")
    return desc


def _rank(offered: list[str], name: str) -> int:
    if name == "rtx":
        return len(offered) + 1  # after every media codec, as aiortc expects
    return offered.index(name) if name in offered else len(offered)


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class WhipServer:
    def __init__(
        self,
        config: WhipConfig,
        sink: IngestSink,
        metrics: IngestMetrics,
        *,
        cors_origin: str = "*",
        authorize: PublishAuthorizer = allow_all,
        keyframe_interval: Callable[[Publication], float] | None = None,
        network: IceNetwork | None = None,
    ) -> None:
        self.config = config
        # Ports, announced addresses and STUN/TURN servers (the webrtc: section), shared
        # with WHEP; by default ephemeral ports, host candidates only.
        self.network = network or IceNetwork()
        self.sink = sink
        self.metrics = metrics
        self.cors = cors_origin
        self.authorize = authorize
        # Seconds between keyframe requests for a publication (0: only at start and
        # after loss). The node says when a profile passes the source through.
        self.keyframe_interval = keyframe_interval or (lambda _pub: config.keyframe_interval)
        self.sessions: dict[str, WhipSession] = {}
        self._tasks: set[asyncio.Task[bool]] = set()
        self.router = self._routes()
        # aioice logs every candidate pair check at INFO: keep the node's log readable
        # unless someone asked for those loggers explicitly.
        for name in ("aioice", "aiortc"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)

    # -- HTTP edge ------------------------------------------------------------------

    def _headers(self, methods: str, **extra: str) -> dict[str, str]:
        h = {
            "Access-Control-Allow-Origin": self.cors,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
            "Access-Control-Expose-Headers": (
                "Location, Link, ETag, Accept-Patch, Allow, Retry-After"
            ),
            "Allow": methods,
            "Cache-Control": "no-store",
        }
        h.update(extra)
        return h

    def _error(self, status: int, message: str, methods: str, **extra: str) -> Response:
        return Response(
            message.rstrip("\n") + "\n",
            status_code=status,
            media_type="text/plain",
            headers=self._headers(methods, **extra),
        )

    def _routes(self) -> APIRouter:
        router = APIRouter()
        endpoint = "POST, OPTIONS"
        resource = "DELETE, OPTIONS"

        @router.options("/{tenant}/{stream}/whip")
        async def preflight(tenant: str, stream: str) -> Response:
            return Response(
                status_code=204,
                headers=self._headers(
                    endpoint, **{"Access-Control-Max-Age": "86400", "Accept-Post": SDP_TYPE}
                ),
            )

        @router.post("/{tenant}/{stream}/whip")
        async def publish(tenant: str, stream: str, request: Request) -> Response:
            return await self._post(StreamKey(tenant, stream), request)

        @router.api_route(
            "/{tenant}/{stream}/whip", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"]
        )
        async def endpoint_other(tenant: str, stream: str) -> Response:
            return self._error(405, "the WHIP endpoint takes POST with an SDP offer", endpoint)

        @router.options("/{tenant}/{stream}/whip/{session_id}")
        async def resource_preflight(tenant: str, stream: str, session_id: str) -> Response:
            return Response(
                status_code=204,
                headers=self._headers(resource, **{"Access-Control-Max-Age": "86400"}),
            )

        @router.delete("/{tenant}/{stream}/whip/{session_id}")
        async def stop(tenant: str, stream: str, session_id: str) -> Response:
            session = self._find(tenant, stream, session_id)
            if session is None:
                return self._error(
                    404, f"no WHIP session {session_id} for {tenant}/{stream}", resource
                )
            await session.close("DELETE by the client")
            return Response(status_code=200, headers=self._headers(resource))

        @router.api_route(
            "/{tenant}/{stream}/whip/{session_id}", methods=["PATCH", "GET", "HEAD", "POST", "PUT"]
        )
        async def resource_other(
            tenant: str, stream: str, session_id: str, request: Request
        ) -> Response:
            if self._find(tenant, stream, session_id) is None:
                return self._error(
                    404, f"no WHIP session {session_id} for {tenant}/{stream}", resource
                )
            if request.method == "PATCH":
                msg = (
                    "trickle ICE and ICE restarts are not supported:"
                    " the answer carries every candidate"
                )
            else:
                msg = f"{request.method} is not allowed on a WHIP session"
            return self._error(405, msg, resource)

        @router.get("/{tenant}/{stream}/publish")
        async def page(tenant: str, stream: str) -> Response:
            return FileResponse(PAGE, media_type="text/html", headers={"Cache-Control": "no-cache"})

        return router

    def _find(self, tenant: str, stream: str, session_id: str) -> WhipSession | None:
        session = self.sessions.get(session_id)
        if session is None or session.key != StreamKey(tenant, stream):
            return None
        return session

    async def _post(self, key: StreamKey, request: Request) -> Response:
        methods = "POST, OPTIONS"
        problem = stream_name_problem(key.stream)
        if problem is not None:
            # Refused before the name reaches a log line or the Location header.
            self.metrics.rejected.labels("name").inc()
            return self._error(400, problem, methods)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != SDP_TYPE:
            self.metrics.rejected.labels("protocol").inc()
            return self._error(
                415,
                f"a WHIP offer must be {SDP_TYPE}, not {ctype or 'without a Content-Type'}",
                methods,
                **{"Accept-Post": SDP_TYPE},
            )
        # The offer's own limit, from Content-Length before reading. The HTTP server caps
        # every body at http.max_body_bytes (answering 413 itself: the read ends in a
        # disconnect) and ends the connection after an early answer (distribute.fastpath).
        body: bytes | None = None
        if int(request.headers.get("content-length") or 0) <= self.config.max_offer_bytes:
            with contextlib.suppress(ClientDisconnect):
                body = await request.body()
        if body is None or len(body) > self.config.max_offer_bytes:
            self.metrics.rejected.labels("protocol").inc()
            return self._error(
                413, f"the SDP offer is larger than {self.config.max_offer_bytes} bytes", methods
            )
        try:
            text = body.decode("utf-8")
            check_offer(text)
        except (UnicodeDecodeError, OfferError) as exc:
            reason = str(exc) if isinstance(exc, OfferError) else "the SDP offer is not UTF-8"
            log.warning("[whip %s] offer refused: %s", key, reason)
            self.metrics.rejected.labels("protocol").inc()
            return self._error(400, reason, methods)
        remote = request.client.host if request.client else ""
        token = _bearer(request)
        verdict = self.authorize(key.tenant, key.stream, token, remote, "whip")
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is not None:
            log.warning("[whip %s] publish from %s refused: %s", key, remote, verdict)
            self.metrics.rejected.labels("auth").inc()
            status = 401 if token is None else 403
            extra = {"WWW-Authenticate": 'Bearer realm="nearcast"'} if status == 401 else {}
            return self._error(status, f"publish refused: {verdict}", methods, **extra)
        query = dict(request.query_params)
        if token is not None:
            query["token"] = token  # the same place an RTMP publisher puts it
        publish = PublishRequest(
            key=key,
            protocol="whip",
            remote=remote,
            query=urlencode(query),
            token=token,
            disconnect=lambda reason: self._disconnect(key, reason),
        )
        try:
            publication = await self.sink.open_publish(publish)
        except PublishRefused as exc:
            log.warning("[whip %s] publish from %s refused: %s", key, remote, exc.description)
            self.metrics.rejected.labels(exc.reason).inc()
            status, extra = refusal_status(exc.reason, token)
            if exc.retry_after > 0:
                extra["Retry-After"] = str(math.ceil(exc.retry_after))
            return self._error(status, exc.description, methods, **extra)
        limits = publish.source_limits
        guard = SourceGuard(limits, str(key)) if limits and not limits.unlimited else None
        try:
            session, answer = await self._answer(key, remote, text, publication, guard)
        except Exception as exc:
            await publication.close()
            if isinstance(exc, PortsExhausted):
                log.warning("[whip %s] publish from %s refused: %s", key, remote, exc.strerror)
                self.metrics.rejected.labels("capacity").inc()
                return self._error(
                    503,
                    f"cannot answer the offer: {exc.strerror}",
                    methods,
                    **{"Retry-After": "10"},
                )
            if isinstance(exc, (ValueError, OfferError)) or type(exc).__name__ == "OperationError":
                log.warning("[whip %s] offer refused: %s", key, exc)
                self.metrics.rejected.labels("protocol").inc()
                return self._error(400, f"the SDP offer cannot be answered: {exc}", methods)
            raise
        self.sessions[session.id] = session
        self.metrics.sessions.labels("whip", key.tenant).inc()
        log.info(
            "[whip %s] publishing from %s, session %s (%s)",
            key,
            remote,
            session.id,
            ", ".join(f"{k} {v}" for k, v in sorted(session.codecs.items())),
        )
        headers = self._headers(methods, Location=session.path)
        links = self.network.links()
        if links:
            headers["Link"] = ", ".join(links)
        return Response(answer, status_code=201, media_type=SDP_TYPE, headers=headers)

    async def _answer(
        self,
        key: StreamKey,
        remote: str,
        offer: str,
        publication: Publication,
        guard: SourceGuard | None = None,
    ) -> tuple[WhipSession, str]:
        pc = RTCPeerConnection(self.network.configuration())
        session = WhipSession(
            self.config,
            self.metrics,
            self._forget,
            secrets.token_urlsafe(12),
            key,
            remote,
            pc,
            publication,
            self.keyframe_interval(publication),
            guard,
        )
        try:
            desc = aiosdp.SessionDescription.parse(offer)
            for m in desc.media:
                if m.kind in ("audio", "video"):
                    t = pc.addTransceiver(m.kind, direction="recvonly")
                    accepted = VIDEO_CODECS if m.kind == "video" else AUDIO_CODECS
                    caps = RTCRtpReceiver.getCapabilities(m.kind)
                    assert caps is not None
                    # The publisher's order wins: it knows which encoder it has in hardware.
                    offered = [c.name.lower() for c in m.rtp.codecs]
                    t.setCodecPreferences(
                        sorted(
                            (
                                c
                                for c in caps.codecs
                                if c.mimeType.split("/")[1].lower() in (*accepted, "rtx")
                            ),
                            key=lambda c: _rank(offered, c.mimeType.split("/")[1].lower()),
                        )
                    )
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            self.network.bind(pc)
            session.attach()
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            session.abort()
            await pc.close()
            raise
        return session, pc.localDescription.sdp

    def _forget(self, session: WhipSession) -> None:
        if self.sessions.pop(session.id, None) is session:
            self.metrics.sessions.labels("whip", session.key.tenant).dec()

    # -- lifecycle --------------------------------------------------------------------

    def _disconnect(self, key: StreamKey, reason: str) -> None:
        """The node's request to drop this publisher (kick, takeover, a limit)."""
        task = asyncio.get_running_loop().create_task(self.close_stream(key, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_stream(self, key: StreamKey, reason: str) -> bool:
        """End the WHIP publish of ``key`` (an operator kick); False when there is none."""
        sessions = [s for s in self.sessions.values() if s.key == key]
        for s in sessions:
            await s.close(reason)
        return bool(sessions)

    async def stop(self) -> None:
        for session in list(self.sessions.values()):
            await session.close("node stopping")

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"stream": str(s.key), "session": s.id, "remote": s.remote, "codecs": s.codecs}
            for s in self.sessions.values()
        ]
