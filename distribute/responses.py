"""Responses of the HTTP media path: content types, cache policies, Range, CORS.

:class:`Responder` sends what :class:`distribute.http.MediaApp` decided on the
ASGI path (a body, whole, as one byte range or chunked; an error; a CORS
preflight answer) and counts each in :class:`MediaMetrics`. The constants and
:func:`header_lines` are shared with the fast path (:mod:`distribute.fastpath`),
which writes the same headers as raw HTTP/1.1 lines.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from distribute.media_metrics import MediaMetrics

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

PLAYLIST_TYPE = b"application/vnd.apple.mpegurl"
SEGMENT_TYPE = b"video/mp2t"
FMP4_TYPE = b"video/mp4"  # CMAF media segments and parts; "video/iso.segment" is rarer in players
INIT_TYPE = b"video/mp4"
# RFC 8216bis §6.2.1 / Apple's authoring spec: a live playlist changes every
# segment, so caches may keep it for at most half a target duration; a segment
# never changes once listed.
LIVE_PLAYLIST_CACHE = b"max-age=1"
ENDED_PLAYLIST_CACHE = b"max-age=60"
SEGMENT_CACHE = b"public, max-age=31536000, immutable"
# LL-HLS: a plain playlist request must see the newest part; a blocking one
# (unique URL per msn/part) and a part may be cached briefly by a CDN.
LL_PLAYLIST_CACHE = b"no-cache"
BLOCKING_PLAYLIST_CACHE = b"public, max-age=2"
VOD_PLAYLIST_CACHE = b"no-cache"
ERROR_CACHE = b"no-store"
TEXT = b"text/plain; charset=utf-8"
NO_SEGMENT = b"no segment yet\n"
TIMED_OUT = b"the requested part did not appear within three target durations\n"


class BadRange(ValueError):
    """A Range header no byte of the body satisfies (416)."""


def parse_range(header: bytes, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range of RFC 9110 §14.1.2 as (first, last) inclusive.

    None means "send the whole body" (no usable range: another unit, several
    ranges); :class:`BadRange` means 416.
    """
    unit, _, spec = header.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition(b"-")
    if not dash:
        return None
    try:
        first = int(first_s) if first_s else -1
        last = int(last_s) if last_s else size - 1
    except ValueError:
        return None
    if first_s == b"":  # suffix: the last N bytes
        if not last_s:
            return None
        if last <= 0 or size == 0:
            raise BadRange(f"suffix range of {last} bytes on a {size}-byte body")
        return max(0, size - last), size - 1
    if first >= size:
        raise BadRange(f"range starts at {first}, past the {size}-byte body")
    if first < 0 or last < first:
        return None
    return first, min(last, size - 1)


def header_lines(headers: Headers) -> bytes:
    return b"".join(k + b": " + v + b"\r\n" for k, v in headers)


class Responder:
    """Sends the media path's ASGI responses, with its CORS headers, and counts them."""

    def __init__(self, cors_origin: str, metrics: MediaMetrics) -> None:
        self.metrics = metrics
        self.origin = cors_origin.encode()
        # On every media answer, errors included.
        self.cors: Headers = [
            (b"access-control-allow-origin", self.origin),
            (b"access-control-expose-headers", b"content-length, content-range, age"),
        ]

    async def preflight(self, scope: Scope, send: Send, kind: str) -> bool:
        method = scope["method"]
        if method == "GET" or method == "HEAD":
            return False
        if method == "OPTIONS":
            asked = b"range"
            for k, v in scope["headers"]:
                if k == b"access-control-request-headers":
                    asked = v
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        (b"access-control-allow-origin", self.origin),
                        (b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
                        (b"access-control-allow-headers", asked),
                        (b"access-control-max-age", b"86400"),
                        (b"content-length", b"0"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            self.metrics.count(kind, 204)
            return True
        await self.error(
            send, kind, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD, OPTIONS")]
        )
        return True

    async def body(
        self,
        scope: Scope,
        send: Send,
        kind: str,
        body: bytes,
        headers: Headers,
        *,
        ranges: bool = False,
        chunked: bool = False,
    ) -> None:
        status = 200
        if ranges:
            for k, v in scope["headers"]:
                if k == b"range":
                    try:
                        r = parse_range(v, len(body))
                    except BadRange:
                        await self.error(
                            send,
                            kind,
                            416,
                            b"range not satisfiable\n",
                            [(b"content-range", f"bytes */{len(body)}".encode())],
                        )
                        return
                    if r is not None:
                        first, last = r
                        headers = headers + [
                            (b"content-range", f"bytes {first}-{last}/{len(body)}".encode())
                        ]
                        body = body[first : last + 1]
                        status = 206
                    break
        head = scope["method"] == "HEAD"
        if chunked and not head:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": headers + [(b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": b"" if head else body})
        self.metrics.count(kind, status)
        if not head:
            self.metrics.sent += len(body)

    async def error(
        self, send: Send, kind: str, status: int, body: bytes, extra: Headers | None = None
    ) -> None:
        headers = [
            (b"content-type", TEXT),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", ERROR_CACHE),
            *self.cors,
            *(extra or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.count(kind, status)
