"""The node's control API and pages (FastAPI). Media bytes never pass through here.

What a caller learns depends on what it presents (the node listens on the open
internet):

- ``GET /v1/streams`` without a token lists only the streams of tenants whose
  playback is open (no playback token required), with what a viewer of them can
  see anyway (codecs, sizes, renditions, URLs); a guarded tenant's streams are
  never listed, and ``GET /v1/streams/{tenant}/{stream}`` of one is 404 as for a
  stream that does not exist.
- With ``Authorization: Bearer <ingest.operator_token>`` both list every stream
  with its ingest statistics (publisher address included). A wrong token is 401,
  never the anonymous view, so an operator's typo is not mistaken for an empty node.
- ``GET /metrics`` needs ``Authorization: Bearer <http.metrics_token>`` when that
  is set (401 otherwise); empty leaves it open, for a node scraped on loopback.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from distribute.hls.store import Store

WEB = Path(__file__).resolve().parent / "web"
_ROOT = Path(__file__).resolve().parent.parent
# hls.js comes from npm (`make` installs it); the page falls back to native HLS without it.
HLSJS_CANDIDATES = [
    _ROOT / "node_modules" / "hls.js" / "dist" / "hls.min.js",
    WEB / "vendor" / "hls.min.js",
]


# Shaka Player (npm too): a second, independent HLS implementation, which the latency
# benchmark plays beside hls.js (bench/players.py).
SHAKA_CANDIDATES = [
    _ROOT / "node_modules" / "shaka-player" / "dist" / "shaka-player.compiled.js",
    WEB / "vendor" / "shaka-player.compiled.js",
]


def find_hlsjs() -> Path | None:
    return next((p for p in HLSJS_CANDIDATES if p.is_file()), None)


def find_shaka() -> Path | None:
    return next((p for p in SHAKA_CANDIDATES if p.is_file()), None)


# -- response documentation ------------------------------------------------------------
# These models describe the JSON bodies in the OpenAPI document (docs/openapi-node.json)
# only: the routes return their dicts as they are, so a field added to a description
# reaches callers before the model is updated.


class Health(BaseModel):
    status: str = Field(description='Always "ok": the process answers HTTP.')


class Readiness(BaseModel):
    ready: bool = Field(description="Every check passed (503 otherwise).")
    checks: dict[str, bool] = Field(description="Each listener's state: rtmp, http.")


class NodeInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    tier: str = Field(description="edge, mec or cloud")
    region: str
    city: str
    isp: str
    uptime: float = Field(description="Seconds since the node started.")
    rtmp_port: int
    rtmps_port: int = Field(description="0 without RTMPS")
    http_port: int = Field(description="0 without plain HTTP")
    https_port: int = Field(description="0 without HTTPS")


class Source(BaseModel):
    model_config = ConfigDict(extra="allow")
    codec: str | None = Field(description="The publisher's video codec (null before media).")
    audio_codec: str | None
    bitrate: float = Field(description="The publisher's bit rate in bit/s.")


class LeftOut(BaseModel):
    rendition: str
    reason: str = Field(description="Why admission left this rung out.")


class Rendition(BaseModel):
    name: str
    width: int
    height: int
    fps: float
    bandwidth: int = Field(description="Peak bit rate announced in the playlist (bit/s).")
    codecs: str = Field(description="RFC 6381 codecs string.")
    url: str = Field(description="The rendition's media playlist, relative to the node.")


class StreamInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    tenant: str
    stream: str
    live: bool = Field(description="False once the playlist has ended.")
    publisher_connected: bool
    source: Source
    uptime: float = Field(description="Seconds since the stream was first published.")
    profile: str = Field(description="The transcode profile in use.")
    left_out: list[LeftOut]
    generation: int = Field(description="Publishes of this stream (discontinuities).")
    degradation: int = Field(description="How many steps the worker has degraded (0: none).")
    segments: int = Field(description="Segments produced so far.")
    edge_age: float | None = Field(
        None,
        description="Seconds since the end of the newest listed part or segment, on its "
        "EXT-X-PROGRAM-DATE-TIME clock: how stale the live edge is here (null before any "
        "media; 0 when media ran ahead of that clock). Grows when media stops arriving or "
        "the worker runs slower than real time.",
    )
    renditions: list[Rendition]
    url: str = Field(description="The multivariant playlist, relative to the node.")
    ingest: dict[str, Any] | None = Field(
        None,
        description="Operator only: the live publisher's statistics (address, protocol, "
        "packets, bit rate); null while nobody publishes.",
    )


class StreamList(BaseModel):
    node: NodeInfo
    streams: list[StreamInfo]


class Kicked(BaseModel):
    kicked: str = Field(description="TENANT/STREAM whose publisher was disconnected.")


class Problem(BaseModel):
    detail: str


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "A missing or wrong bearer token."}
}


def create_api(
    store: Store,
    registry: CollectorRegistry,
    ready: Callable[[], dict[str, bool]],
    node_info: Callable[[], dict[str, Any]],
    *,
    ingest_stats: Callable[[str, str], dict[str, Any] | None] | None = None,
    kick: Callable[[str, str], bool] | None = None,
    operator_token: str = "",
    metrics_token: str = "",
    guarded: Callable[[str], bool] = lambda tenant: False,
) -> FastAPI:
    """``guarded(tenant)``: does the tenant's playback need a token (then its streams
    are hidden from anonymous callers)?"""
    app = FastAPI(title="nearcast node", version="0.1.0", docs_url="/docs", redoc_url=None)

    @app.get("/healthz", response_model=None, responses={200: {"model": Health}}, tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        responses={
            200: {"model": Readiness, "description": "Ready to take publishers and viewers."},
            503: {"model": Readiness, "description": "A listener is not serving yet."},
        },
        tags=["health"],
    )
    async def readyz() -> Response:
        """Readiness: the RTMP and HTTP listeners serve."""
        checks = ready()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                "description": "Prometheus text exposition format.",
            },
            **UNAUTHORIZED,
        },
        tags=["health"],
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics; ``Authorization: Bearer <http.metrics_token>`` when that
        is set."""
        if metrics_token and not _bearer_is(request, metrics_token):
            raise HTTPException(
                401, "metrics bearer token required", headers={"WWW-Authenticate": "Bearer"}
            )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def operator(request: Request) -> bool:
        """True for the operator, False for an anonymous caller; 401 for a wrong token."""
        if "authorization" not in request.headers:
            return False
        require_operator(request)
        return True

    def describe(s: Any, now: float, full: bool) -> dict[str, Any]:
        d: dict[str, Any] = s.describe(now)
        if ingest_stats is not None:
            # The live publisher's measurements; null while nobody publishes the stream.
            stats = ingest_stats(s.key.tenant, s.key.stream)
            if stats is not None:
                d["source"]["bitrate"] = stats["bitrate"]
            if full:
                d["ingest"] = stats
        return d

    @app.get(
        "/v1/streams",
        response_model=None,
        responses={200: {"model": StreamList}, **UNAUTHORIZED},
        tags=["streams"],
    )
    async def streams(request: Request) -> dict[str, Any]:
        """The node and its streams. Anonymous callers see the streams of tenants whose
        playback is open; the operator (``Authorization: Bearer <ingest.operator_token>``)
        sees every stream with its ingest statistics."""
        full = operator(request)
        now = time.time()
        return {
            "node": node_info(),
            "streams": [
                describe(s, now, full)
                for s in store.streams.values()
                if full or not guarded(s.key.tenant)
            ],
        }

    @app.get(
        "/v1/streams/{tenant}/{stream}",
        response_model=None,
        responses={
            200: {"model": StreamInfo},
            **UNAUTHORIZED,
            404: {"model": Problem, "description": "No such stream (or hidden from the caller)."},
        },
        tags=["streams"],
    )
    async def stream(tenant: str, stream: str, request: Request) -> dict[str, Any]:
        """One stream, as listed by ``GET /v1/streams``."""
        full = operator(request)
        s = store.get(tenant, stream)
        if s is None or (guarded(tenant) and not full):
            raise HTTPException(404, f"stream {tenant}/{stream} is not on this node")
        return describe(s, time.time(), full)

    def require_operator(request: Request) -> None:
        if not _bearer_is(request, operator_token):
            raise HTTPException(
                401, "operator bearer token required", headers={"WWW-Authenticate": "Bearer"}
            )

    @app.post(
        "/v1/streams/{tenant}/{stream}/kick",
        response_model=None,
        responses={
            200: {"model": Kicked},
            **UNAUTHORIZED,
            404: {"model": Problem, "description": "Nobody publishes the stream here."},
        },
        tags=["streams"],
    )
    async def kick_publisher(tenant: str, stream: str, request: Request) -> dict[str, Any]:
        """Operator only: disconnect the stream's publisher (its viewers keep the
        playlist through the grace period)."""
        require_operator(request)
        if kick is None or not kick(tenant, stream):
            raise HTTPException(404, f"nobody publishes {tenant}/{stream} on this node")
        return {"kicked": f"{tenant}/{stream}"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> Response:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/static/hls.min.js", include_in_schema=False)
    async def hlsjs() -> Response:
        path = find_hlsjs()
        if path is None:
            raise HTTPException(404, "hls.js is not installed; run `make` (npm install)")
        return FileResponse(path, media_type="text/javascript")

    @app.get("/static/stamp.js", include_in_schema=False)
    async def stamp() -> Response:
        # The clock-stamp reader of the watch page and the player latency probe.
        return FileResponse(WEB / "stamp.js", media_type="text/javascript")

    @app.get("/static/whep.js", include_in_schema=False)
    async def whepjs() -> Response:
        # The WHEP viewer of the watch page, loaded by the placement console too.
        return FileResponse(WEB / "whep.js", media_type="text/javascript")

    @app.get("/static/shaka-player.compiled.js", include_in_schema=False)
    async def shaka() -> Response:
        path = find_shaka()
        if path is None:
            raise HTTPException(404, "Shaka Player is not installed; run `make` (npm install)")
        return FileResponse(path, media_type="text/javascript")

    return app


def _bearer_is(request: Request, token: str) -> bool:
    """Does the request carry ``Authorization: Bearer <token>``? Never for an empty token."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return (
        bool(token)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), token.encode())
    )
