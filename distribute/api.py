"""The node's control API and pages (FastAPI). Media bytes never pass through here."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
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

    @app.get("/v1/streams")
    async def streams() -> dict[str, Any]:
        now = time.time()
        return {
            "node": node_info(),
            "streams": [s.describe(now) for s in store.streams.values()],
        }

    @app.get("/v1/streams/{tenant}/{stream}")
    async def stream(tenant: str, stream: str) -> dict[str, Any]:
        s = store.get(tenant, stream)
        if s is None:
            raise HTTPException(404, f"stream {tenant}/{stream} is not on this node")
        return s.describe(time.time())

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
