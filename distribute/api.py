"""The node's control API and pages (FastAPI). Media bytes never pass through here."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from distribute.hls.store import Store

WEB = Path(__file__).resolve().parent / "web"
_ROOT = Path(__file__).resolve().parent.parent
# hls.js comes from npm (`make` installs it); the page falls back to native HLS without it.
HLSJS_CANDIDATES = [
    _ROOT / "node_modules" / "hls.js" / "dist" / "hls.min.js",
    WEB / "vendor" / "hls.min.js",
]


def find_hlsjs() -> Path | None:
    return next((p for p in HLSJS_CANDIDATES if p.is_file()), None)


def create_api(
    store: Store,
    registry: CollectorRegistry,
    ready: Callable[[], dict[str, bool]],
    node_info: Callable[[], dict[str, Any]],
    *,
    ingest_stats: Callable[[str, str], dict[str, Any] | None] | None = None,
    kick: Callable[[str, str], bool] | None = None,
    operator_token: str = "",
) -> FastAPI:
    app = FastAPI(title="nearcast node", version="0.1.0", docs_url="/docs", redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        checks = ready()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def describe(s: Any, now: float) -> dict[str, Any]:
        d: dict[str, Any] = s.describe(now)
        if ingest_stats is not None:
            # The live publisher's measurements; null while nobody publishes the stream.
            d["ingest"] = ingest_stats(s.key.tenant, s.key.stream)
            if d["ingest"] is not None:
                d["source"]["bitrate"] = d["ingest"]["bitrate"]
        return d

    @app.get("/v1/streams")
    async def streams() -> dict[str, Any]:
        now = time.time()
        return {
            "node": node_info(),
            "streams": [describe(s, now) for s in store.streams.values()],
        }

    @app.get("/v1/streams/{tenant}/{stream}")
    async def stream(tenant: str, stream: str) -> dict[str, Any]:
        s = store.get(tenant, stream)
        if s is None:
            raise HTTPException(404, f"stream {tenant}/{stream} is not on this node")
        return describe(s, time.time())

    def require_operator(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        ok = (
            bool(operator_token)
            and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), operator_token.encode())
        )
        if not ok:
            raise HTTPException(
                401, "operator bearer token required", headers={"WWW-Authenticate": "Bearer"}
            )

    @app.post("/v1/streams/{tenant}/{stream}/kick")
    async def kick_publisher(tenant: str, stream: str, request: Request) -> dict[str, Any]:
        require_operator(request)
        if kick is None or not kick(tenant, stream):
            raise HTTPException(404, f"nobody publishes {tenant}/{stream} on this node")
        return {"kicked": f"{tenant}/{stream}"}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> Response:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/static/hls.min.js")
    async def hlsjs() -> Response:
        path = find_hlsjs()
        if path is None:
            raise HTTPException(404, "hls.js is not installed; run `make` (npm install)")
        return FileResponse(path, media_type="text/javascript")

    return app
