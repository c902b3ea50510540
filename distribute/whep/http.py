"""WHEP HTTP edge (draft-ietf-wish-whep) and the ``/watch`` page.

- ``POST /{tenant}/{stream}/whep`` with ``application/sdp`` -> ``201 Created``,
  ``Location`` of the session resource, the SDP answer (all candidates
  included: aiortc gathers before answering), ``Link`` headers for ICE servers.
- ``DELETE`` on the session resource (``/{tenant}/{stream}/whep/session/{id}``)
  ends the session. Six path segments: never mistaken for a media path
  ``/{tenant}/{stream}/{rendition}/{file}`` by the HTTP fast path.
- ``PATCH`` (trickle ICE / ICE restart) -> ``405``: aiortc gathers every
  candidate up front and cannot restart ICE, so the draft's answer is 405 with
  ``Allow``.
- ``OPTIONS`` answers CORS preflights and lists the ICE servers.

Signalling is a few requests per viewer, so it goes through FastAPI; media does
not touch HTTP at all.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect

from distribute.whep.exceptions import (
    BadOffer,
    NoUdpPort,
    SessionNotFound,
    StreamNotFound,
    TooManyViewers,
)
from distribute.whep.server import WhepServer
from media import StreamKey

log = logging.getLogger(__name__)

WATCH_PAGE = Path(__file__).resolve().parent.parent / "web" / "watch.html"
SDP = "application/sdp"
# Largest offer accepted: a browser's is 3-8 KB.
MAX_OFFER = 64 * 1024


def whep_router(
    server: WhepServer,
    cors_origin: str = "*",
    relay: Callable[[str, str], Awaitable[bool]] | None = None,
) -> APIRouter:
    """The WHEP endpoints of ``server``. ``relay``: called for a stream not live here,
    true once it relays the stream's WebRTC tap from another node (the viewer is then
    answered as on the origin)."""
    router = APIRouter()

    def cors(methods: str) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": cors_origin,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match",
            "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Post, Allow",
        }

    def links() -> list[str]:
        return server.ice_links()

    def error(status: int, message: str, methods: str, **headers: str) -> Response:
        return PlainTextResponse(message + "\n", status, headers={**cors(methods), **headers})

    endpoint_methods = "POST, OPTIONS"
    session_methods = "DELETE, OPTIONS"

    @router.options("/{tenant}/{stream}/whep", include_in_schema=False)
    async def endpoint_options(tenant: str, stream: str) -> Response:
        response = Response(
            status_code=204,
            headers={**cors(endpoint_methods), "Allow": endpoint_methods, "Accept-Post": SDP},
        )
        for link in links():
            response.headers.append("Link", link)
        return response

    @router.post("/{tenant}/{stream}/whep", include_in_schema=False)
    async def create(tenant: str, stream: str, request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != SDP:
            return error(
                415, f"the offer must be sent as {SDP}", endpoint_methods, **{"Accept-Post": SDP}
            )
        # Refused from Content-Length before reading. The HTTP server caps every body at
        # http.max_body_bytes (answering 413 itself: the read ends in a disconnect) and
        # ends the connection after an early answer (distribute.fastpath).
        body: bytes | None = None
        if int(request.headers.get("content-length") or 0) <= MAX_OFFER:
            with contextlib.suppress(ClientDisconnect):
                body = await request.body()
        if body is None or len(body) > MAX_OFFER:
            return error(413, f"offer larger than {MAX_OFFER} bytes", endpoint_methods)
        key = StreamKey(tenant, stream)
        offer = body.decode("utf-8", "replace")
        try:
            try:
                session, answer = await server.create(key, offer)
            except StreamNotFound:
                if relay is None or not server.config.enabled or not await relay(tenant, stream):
                    raise
                session, answer = await server.create(key, offer)
        except StreamNotFound as exc:
            return error(404, str(exc), endpoint_methods)
        except BadOffer as exc:
            log.info("[whep %s] refused offer: %s", key, exc)
            return error(400, str(exc), endpoint_methods)
        except TooManyViewers as exc:
            return error(503, str(exc), endpoint_methods, **{"Retry-After": "10"})
        except NoUdpPort as exc:
            log.warning("[whep %s] %s", key, exc)
            return error(503, str(exc), endpoint_methods, **{"Retry-After": "10"})
        location = f"/{tenant}/{stream}/whep/session/{session.id}"
        response = Response(
            answer,
            status_code=201,
            media_type=SDP,
            headers={**cors(endpoint_methods), "Location": location, "ETag": f'"{session.id}"'},
        )
        for link in links():
            response.headers.append("Link", link)
        return response

    @router.delete("/{tenant}/{stream}/whep/session/{session_id}", include_in_schema=False)
    async def delete(tenant: str, stream: str, session_id: str) -> Response:
        try:
            await server.delete(StreamKey(tenant, stream), session_id)
        except SessionNotFound as exc:
            return error(404, str(exc), session_methods)
        return Response(status_code=200, headers=cors(session_methods))

    @router.patch("/{tenant}/{stream}/whep/session/{session_id}", include_in_schema=False)
    async def patch(tenant: str, stream: str, session_id: str) -> Response:
        return error(
            405,
            "trickle ICE and ICE restarts are not supported: every candidate is in the answer",
            session_methods,
            Allow=session_methods,
        )

    @router.options("/{tenant}/{stream}/whep/session/{session_id}", include_in_schema=False)
    async def session_options(tenant: str, stream: str, session_id: str) -> Response:
        return Response(
            status_code=204, headers={**cors(session_methods), "Allow": session_methods}
        )

    @router.get("/{tenant}/{stream}/watch", include_in_schema=False)
    async def watch(tenant: str, stream: str) -> Response:
        return FileResponse(
            WATCH_PAGE, media_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    return router
