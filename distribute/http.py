"""The HTTP front of a node.

Playlists and segments are the hot path: every viewer asks for a playlist every
target duration and for every segment. They are answered here by a bare ASGI
callable that does one dictionary lookup and sends pre-rendered bytes; FastAPI's
routing and validation cost about 5x nginx per request on this path (see the
performance notes), so only the control API and pages go through FastAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from distribute.hls.store import Store

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PLAYLIST_TYPE = b"application/vnd.apple.mpegurl"
SEGMENT_TYPE = b"video/mp2t"
# RFC 8216bis §6.2.1 / Apple's authoring spec: a live playlist changes every
# segment, so caches may keep it for at most half a target duration; a segment
# never changes once listed.
LIVE_PLAYLIST_CACHE = b"max-age=1"
ENDED_PLAYLIST_CACHE = b"max-age=60"
SEGMENT_CACHE = b"public, max-age=31536000, immutable"


class MediaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # hls_requests_total{kind,status}: playlist, segment or master requests
        # answered by the media path; kind and status are small fixed sets.
        self.requests = Counter(
            "hls_requests_total",
            "HLS requests answered by the media path",
            ["kind", "status"],
            registry=registry,
        )
        # hls_outbound_bytes_total: body bytes sent to viewers (segments + playlists).
        self.bytes = Counter(
            "hls_outbound_bytes_total", "Body bytes sent to HLS viewers", registry=registry
        )


class MediaApp:
    """ASGI app for ``/{tenant}/{stream}/...`` media paths; everything else goes to ``fallback``."""

    def __init__(
        self, store: Store, fallback: ASGIApp, metrics: MediaMetrics, cors_origin: str = "*"
    ) -> None:
        self.store = store
        self.fallback = fallback
        self.metrics = metrics
        self.cors = cors_origin.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        path: str = scope["path"]
        parts = path.split("/")
        # "", tenant, stream, file  |  "", tenant, stream, rendition, file
        n = len(parts)
        if n == 4 and parts[3] == "index.m3u8":
            await self._master(scope, send, parts[1], parts[2])
        elif n == 5 and (parts[4] == "index.m3u8" or parts[4].endswith(".ts")):
            await self._media(scope, send, parts[1], parts[2], parts[3], parts[4])
        else:
            await self.fallback(scope, receive, send)

    async def _master(self, scope: Scope, send: Send, tenant: str, name: str) -> None:
        stream = self.store.get(tenant, name)
        if stream is None or not stream.master:
            await self._not_found(scope, send, "master", b"no such stream\n")
            return
        cache = ENDED_PLAYLIST_CACHE if stream.ended else LIVE_PLAYLIST_CACHE
        await self._reply(scope, send, "master", stream.master, PLAYLIST_TYPE, cache)

    async def _media(
        self, scope: Scope, send: Send, tenant: str, name: str, rendition: str, file: str
    ) -> None:
        stream = self.store.get(tenant, name)
        track = stream.renditions.get(rendition) if stream else None
        if stream is None or track is None:
            await self._not_found(scope, send, "playlist", b"no such stream\n")
            return
        if file == "index.m3u8":
            if not track.playlist:
                await self._not_found(scope, send, "playlist", b"no segment yet\n")
                return
            cache = ENDED_PLAYLIST_CACHE if stream.ended else LIVE_PLAYLIST_CACHE
            await self._reply(scope, send, "playlist", track.playlist, PLAYLIST_TYPE, cache)
            return
        try:
            msn = int(file[:-3])
        except ValueError:
            msn = -1
        seg = track.by_msn.get(msn)
        if seg is None:
            await self._not_found(scope, send, "segment", b"no such segment\n")
            return
        await self._reply(scope, send, "segment", seg.data, SEGMENT_TYPE, SEGMENT_CACHE)

    async def _reply(
        self, scope: Scope, send: Send, kind: str, body: bytes, ctype: bytes, cache: bytes
    ) -> None:
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD", "OPTIONS"):
            await self._send(send, 405, b"text/plain", b"method not allowed\n", b"no-store", head=False)
            self.metrics.requests.labels(kind, "405").inc()
            return
        await self._send(send, 200, ctype, body, cache, head=method != "GET")
        self.metrics.requests.labels(kind, "200").inc()
        if method == "GET":
            self.metrics.bytes.inc(len(body))

    async def _not_found(self, scope: Scope, send: Send, kind: str, body: bytes) -> None:
        await self._send(send, 404, b"text/plain", body, b"no-cache", head=False)
        self.metrics.requests.labels(kind, "404").inc()

    async def _send(
        self, send: Send, status: int, ctype: bytes, body: bytes, cache: bytes, *, head: bool
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", cache),
                    (b"access-control-allow-origin", self.cors),
                    (b"access-control-expose-headers", b"content-length"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if head else body})
