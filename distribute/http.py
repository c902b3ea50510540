"""The HTTP front of a node.

Playlists, parts and segments are the hot path: every viewer asks for a
playlist every target duration (LL-HLS: every part) and for every segment. They
are answered here by a bare ASGI callable that splits the path once, does one
dictionary lookup and sends pre-rendered bytes with pre-built header lists;
FastAPI's routing and validation cost about 5x nginx per request on this path
(see the performance notes), so only the control API and pages go through
FastAPI.

LL-HLS (RFC 8216bis §6.2.5): a playlist request with ``_HLS_msn``/``_HLS_part``
is held until that segment or part is listed, waiting on the rendition's
:class:`asyncio.Event` (no polling), for at most three target durations (then
503). A request for the preload-hinted part is held the same way and answered,
with chunked transfer, the moment the part exists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from distribute.access import TokenCheck
from distribute.hls.store import Store
from distribute.hls.stream import LiveStream
from distribute.hls.track import RenditionTrack

log = logging.getLogger(__name__)

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


class VodSource(Protocol):
    """Recorded streams (``/{tenant}/{stream}/vod/...``), served from disk."""

    async def read(
        self, tenant: str, stream: str, rendition: str | None, file: str
    ) -> tuple[bytes, bytes] | None:
        """(body, content type), or None when there is no such file."""
        ...


class MediaMetrics:
    """Counters of the media path, kept as plain integers and exported at scrape time.

    A prometheus_client ``Counter.inc`` takes a lock and validates its state on
    every call; on a path that answers tens of thousands of requests a second
    that is a measurable share of the work, so the hot path only adds to ints.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.sent = 0
        # hls_held_requests: LL-HLS blocking playlist and preload-hint part requests
        # waiting right now for their part.
        self.held = Gauge(
            "hls_held_requests", "LL-HLS requests held until their part exists", registry=registry
        )
        registry.register(_MediaCollector(self))

    def count(self, kind: str, status: int) -> None:
        key = (kind, status)
        self.counts[key] = self.counts.get(key, 0) + 1


class _MediaCollector(Collector):
    def __init__(self, metrics: MediaMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        # hls_requests_total{kind,status}: master, playlist, part, segment, init or vod
        # requests answered by the media path; kind and status are small fixed sets.
        requests = CounterMetricFamily(
            "hls_requests", "HLS requests answered by the media path", labels=["kind", "status"]
        )
        for (kind, status), n in list(self.metrics.counts.items()):
            requests.add_metric([kind, str(status)], n)
        yield requests
        # hls_outbound_bytes_total: body bytes sent to viewers (segments, parts, playlists).
        sent = CounterMetricFamily("hls_outbound_bytes", "Body bytes sent to HLS viewers")
        sent.add_metric([], self.metrics.sent)
        yield sent

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


@dataclass(slots=True)
class Hold:
    """A fast-path request that must wait: answered from ``track``'s waiter callbacks."""

    track: RenditionTrack
    ready: Callable[[], bool]
    # (header block, body) when ready; None when the thing waited for will never exist (404).
    answer: Callable[[], tuple[bytes, bytes] | None]
    timeout: float
    kind: str
    chunked: bool = False
    # The body of that 404: the same words the ASGI path uses.
    missing: bytes = b"the hinted part was not produced\n"


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


def _query(qs: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for item in qs.split(b"&"):
        k, _, v = item.partition(b"=")
        out[k] = v
    return out


# Path segments after /{tenant}/{stream}/ that are not renditions: the API owns them.
_CONTROL = ("whip", "whep")
# First path segments of the control API and static files: never a tenant.
_API_ROOTS = ("v1", "static")


class MediaApp:
    """ASGI app for ``/{tenant}/{stream}/...`` media paths; everything else goes to ``fallback``."""

    def __init__(
        self,
        store: Store,
        fallback: ASGIApp,
        metrics: MediaMetrics,
        cors_origin: str = "*",
        vod: VodSource | None = None,
    ) -> None:
        self.store = store
        self.fallback = fallback
        self.metrics = metrics
        self.vod = vod
        # Playback tokens (set by the node when some tenant needs them): a guarded
        # tenant's request with a verified ``?token=`` is answered here like any
        # other, its playlists signed; every other one goes down the ASGI path,
        # where :class:`distribute.access.PlaybackGuard` refuses it with a reason.
        self.tokens: TokenCheck | None = None
        self.cors = cors_origin.encode()
        cors = [
            (b"access-control-allow-origin", self.cors),
            (b"access-control-expose-headers", b"content-length, content-range, age"),
        ]
        self._cors = cors
        cfg = store.config
        # Parts live for about three segments; caches may keep them that long.
        part_cache = f"public, max-age={max(1, int(3 * cfg.segment_duration))}".encode()

        def h(ctype: bytes, cache: bytes, ranges: bool = False) -> Headers:
            base = [(b"content-type", ctype), (b"cache-control", cache)] + cors
            return base + [(b"accept-ranges", b"bytes")] if ranges else base

        self._h_live = h(PLAYLIST_TYPE, LIVE_PLAYLIST_CACHE)
        self._h_ended = h(PLAYLIST_TYPE, ENDED_PLAYLIST_CACHE)
        self._h_ll = h(PLAYLIST_TYPE, LL_PLAYLIST_CACHE)
        self._h_blocking = h(PLAYLIST_TYPE, BLOCKING_PLAYLIST_CACHE)
        self._h_vod_pl = h(PLAYLIST_TYPE, VOD_PLAYLIST_CACHE)
        self._h_ts = h(SEGMENT_TYPE, SEGMENT_CACHE, True)
        self._h_m4s = h(FMP4_TYPE, SEGMENT_CACHE, True)
        self._h_init = h(INIT_TYPE, SEGMENT_CACHE, True)
        self._h_part = h(FMP4_TYPE, part_cache, True)
        # The same header sets as raw HTTP/1.1 header lines, for the fast path.
        self._b_live = header_lines(self._h_live)
        self._b_ended = header_lines(self._h_ended)
        self._b_ll = header_lines(self._h_ll)
        self._b_blocking = header_lines(self._h_blocking)
        self._b_ts = header_lines(self._h_ts)
        self._b_m4s = header_lines(self._h_m4s)
        self._b_part = header_lines(self._h_part)
        self._b_init = header_lines(self._h_init)

    # -- fast path (see distribute.fastpath) ----------------------------------------------

    def _hold_playlist(
        self,
        stream: LiveStream,
        track: RenditionTrack,
        q: dict[bytes, bytes],
        msn: int,
        part: int | None,
    ) -> Hold | None:
        last = max(track.last_msn, track.building_msn if track.building else -1)
        per_segment = int(stream.config.segment_duration / stream.config.part_duration) + 2
        if msn > last + 2 or (part is not None and part > 2 * per_segment):
            return None  # the ASGI path answers 400
        skip = q.get(b"_HLS_skip") in (b"YES", b"v2")

        def ready() -> bool:
            return track.reached(msn, part) or stream.ended

        def answer() -> tuple[bytes, bytes] | None:
            body = track.playlist_skip if skip else track.playlist
            if not body:
                return None  # the stream ended before its first segment
            return (self._b_ended if stream.ended else self._b_blocking), body

        return Hold(
            track, ready, answer, 3 * stream.config.segment_duration, "playlist", missing=NO_SEGMENT
        )

    def _hold_first(self, stream: LiveStream, track: RenditionTrack) -> Hold:
        """Before the run's first (short, lead) segment exists, hold a playlist request
        until it does: players such as hls.js reject a playlist without an EXTINF."""

        def ready() -> bool:
            return track.last_msn >= 0 or stream.ended

        def answer() -> tuple[bytes, bytes] | None:
            if not track.playlist:
                return None  # the stream ended before its first segment
            return (self._b_ended if stream.ended else self._b_ll), track.playlist

        return Hold(
            track, ready, answer, 3 * stream.config.segment_duration, "playlist", missing=NO_SEGMENT
        )

    def _hold_part(
        self, stream: LiveStream, track: RenditionTrack, msn: int, index: int
    ) -> Hold | None:
        last_msn, last_part = track.last_part
        ahead = msn > max(track.last_msn, last_msn) + 1 or (
            msn == last_msn and index > last_part + 3
        )
        if stream.ended or msn <= track.last_msn or ahead or index < 0:
            return None  # the ASGI path answers 404
        key = (msn, index)

        def ready() -> bool:
            return key in track.parts or track.last_msn >= msn or stream.ended

        def answer() -> tuple[bytes, bytes] | None:
            p = track.parts.get(key)
            return (self._b_part, p.data) if p is not None else None

        return Hold(track, ready, answer, 3 * stream.config.segment_duration, "part", chunked=True)

    @staticmethod
    def _verified(
        tokens: TokenCheck, q: dict[bytes, bytes], tenant: str, stream: str
    ) -> str | None:
        """The request's ``?token=`` when it lets the viewer play ``tenant/stream``."""
        raw = q.get(b"token")
        if not raw or b"%" in raw or b"+" in raw:
            return None  # percent-encoded: the ASGI path decodes it
        token = raw.decode("latin-1")
        return token if tokens.valid(token, tenant, stream) else None

    def _signing(self, hold: Hold | None, token: str) -> Hold | None:
        """``hold`` answering with ``token`` in every URI of the playlist it sends."""
        if hold is None:
            return None
        tokens = self.tokens
        assert tokens is not None
        unsigned = hold.answer

        def answer() -> tuple[bytes, bytes] | None:
            got = unsigned()
            return None if got is None else (got[0], tokens.signed(got[1], token))

        hold.answer = answer
        return hold

    def fast(self, url: bytes, headers: Headers) -> tuple[bytes, bytes] | Hold | None:
        """A GET without a Range: (header block, body) of a 200 when it can be answered
        now, a :class:`Hold` when it is a blocking reload or preload-hinted part that
        must wait. None sends the request down the ASGI path, which handles
        everything (ranges, errors, HEAD, OPTIONS) the same way."""
        path, _, qs = url.partition(b"?")
        if b"%" in path:
            return None
        for k, _v in headers:
            if k == b"range":
                return None
        parts = path.split(b"/")
        n = len(parts)
        if n > 1 and parts[1] in (b"v1", b"static"):
            return None
        token: str | None = None
        q: dict[bytes, bytes] | None = None
        tokens = self.tokens
        if tokens is not None and n >= 4 and tokens.guarded(parts[1].decode()):
            q = _query(qs)
            token = self._verified(tokens, q, parts[1].decode(), parts[2].decode())
            if token is None:
                return None
        if n == 4 and parts[3] == b"index.m3u8":
            stream = self.store.get(parts[1].decode(), parts[2].decode())
            if stream is None or not stream.master:
                return None
            body = stream.master
            if token is not None:
                body = tokens.signed(body, token)  # type: ignore[union-attr]
            self.metrics.count("master", 200)
            self.metrics.sent += len(body)
            return (self._b_ended if stream.ended else self._b_live), body
        if n != 5 or parts[3] == b"vod":
            return None
        stream = self.store.get(parts[1].decode(), parts[2].decode())
        if stream is None:
            return None
        track = stream.renditions.get(parts[3].decode())
        if track is None:
            return None
        file = parts[4]
        block: bytes
        if file == b"index.m3u8":
            kind = "playlist"
            if qs:
                if not stream.low_latency:
                    body = track.playlist
                    block = self._b_ended if stream.ended else self._b_live
                else:
                    if q is None:
                        q = _query(qs)
                    msn_b, part_b = q.get(b"_HLS_msn"), q.get(b"_HLS_part")
                    if msn_b is not None:
                        try:
                            msn = int(msn_b)
                            part = int(part_b) if part_b is not None else None
                        except ValueError:
                            return None
                        if msn < 0 or (part is not None and part < 0):
                            return None
                        if not (track.reached(msn, part) or stream.ended):
                            hold = self._hold_playlist(stream, track, q, msn, part)
                            return hold if token is None else self._signing(hold, token)
                        block = self._b_ended if stream.ended else self._b_blocking
                    elif part_b is not None:
                        return None
                    else:
                        block = self._b_ended if stream.ended else self._b_ll
                    skip = q.get(b"_HLS_skip") in (b"YES", b"v2")
                    body = track.playlist_skip if skip else track.playlist
            else:
                if stream.low_latency and track.last_msn < 0 and not stream.ended:
                    hold = self._hold_first(stream, track)
                    return hold if token is None else self._signing(hold, token)
                body = track.playlist
                if stream.ended:
                    block = self._b_ended
                else:
                    block = self._b_ll if stream.low_latency else self._b_live
            if not body:
                return None
            if token is not None:
                body = tokens.signed(body, token)  # type: ignore[union-attr]
        elif file.endswith(b".m4s"):
            msn_b, dot, part_b = file[:-4].partition(b".")
            try:
                msn = int(msn_b)
                index = int(part_b) if dot else -1
            except ValueError:
                return None
            if dot:
                p = track.parts.get((msn, index))
                if p is None:
                    return self._hold_part(stream, track, msn, index)
                kind, body, block = "part", p.data, self._b_part
            else:
                seg = track.by_msn.get(msn)
                if seg is None or seg.gap:
                    return None
                kind, body, block = "segment", seg.data, self._b_m4s
        elif file.endswith(b".ts"):
            try:
                seg = track.by_msn.get(int(file[:-3]))
            except ValueError:
                return None
            if seg is None or seg.gap:
                return None
            kind, body, block = "segment", seg.data, self._b_ts
        elif file.startswith(b"init-") and file.endswith(b".mp4"):
            try:
                init = track.inits.get(int(file[5:-4]))
            except ValueError:
                return None
            if init is None:
                return None
            kind, body, block = "init", init, self._b_init
        else:
            return None
        self.metrics.count(kind, 200)
        self.metrics.sent += len(body)
        return block, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        parts = scope["path"].split("/")
        if len(parts) > 1 and parts[1] in _API_ROOTS:
            await self.fallback(scope, receive, send)
            return
        # "", tenant, stream, file  |  "", tenant, stream, rendition, file
        # |  "", tenant, stream, "vod", file  |  "", tenant, stream, "vod", rendition, file
        n = len(parts)
        if n == 5:
            if parts[3] == "vod":
                await self._vod(scope, send, parts[1], parts[2], None, parts[4])
            elif parts[3] in _CONTROL:
                await self.fallback(scope, receive, send)  # WHIP/WHEP session resources
            else:
                await self._media(scope, send, parts[1], parts[2], parts[3], parts[4])
        elif n == 4 and parts[3] == "index.m3u8":
            await self._master(scope, send, parts[1], parts[2])
        elif n == 6 and parts[3] == "vod":
            await self._vod(scope, send, parts[1], parts[2], parts[4], parts[5])
        else:
            await self.fallback(scope, receive, send)

    # -- handlers ----------------------------------------------------------------------

    async def _master(self, scope: Scope, send: Send, tenant: str, name: str) -> None:
        if await self._preflight(scope, send, "master"):
            return
        stream = self.store.get(tenant, name)
        if stream is None or not stream.master:
            await self._error(send, "master", 404, b"no such stream\n")
            return
        await self._body(
            scope, send, "master", stream.master, self._h_ended if stream.ended else self._h_live
        )

    async def _media(
        self, scope: Scope, send: Send, tenant: str, name: str, rendition: str, file: str
    ) -> None:
        if await self._preflight(scope, send, "playlist"):
            return
        stream = self.store.get(tenant, name)
        track = stream.renditions.get(rendition) if stream else None
        if stream is None or track is None:
            await self._error(send, "playlist", 404, b"no such stream\n")
            return
        if file == "index.m3u8":
            await self._playlist(scope, send, stream, track)
        elif file.endswith(".m4s"):
            stem = file[:-4]
            msn_s, dot, part_s = stem.partition(".")
            try:
                msn = int(msn_s)
                part = int(part_s) if dot else -1
            except ValueError:
                await self._error(send, "segment", 404, b"no such segment\n")
                return
            if dot:
                await self._part(scope, send, stream, track, msn, part)
            else:
                await self._segment(scope, send, track, msn, self._h_m4s)
        elif file.endswith(".ts"):
            try:
                msn = int(file[:-3])
            except ValueError:
                msn = -1
            await self._segment(scope, send, track, msn, self._h_ts)
        elif file.startswith("init-") and file.endswith(".mp4"):
            try:
                data = track.inits.get(int(file[5:-4]))
            except ValueError:
                data = None
            if data is None:
                await self._error(send, "init", 404, b"no such init segment\n")
                return
            await self._body(scope, send, "init", data, self._h_init, ranges=True)
        else:
            await self._error(send, "segment", 404, b"no such file\n")

    async def _segment(
        self, scope: Scope, send: Send, track: RenditionTrack, msn: int, headers: Headers
    ) -> None:
        seg = track.by_msn.get(msn)
        if seg is None or seg.gap:
            await self._error(send, "segment", 404, b"no such segment\n")
            return
        await self._body(scope, send, "segment", seg.data, headers, ranges=True)

    async def _playlist(
        self, scope: Scope, send: Send, stream: LiveStream, track: RenditionTrack
    ) -> None:
        qs: bytes = scope.get("query_string", b"")
        skip = False
        blocking = False
        if qs and stream.low_latency:
            q = _query(qs)
            skip = q.get(b"_HLS_skip") in (b"YES", b"v2")
            msn_b = q.get(b"_HLS_msn")
            part_b = q.get(b"_HLS_part")
            if msn_b is not None or part_b is not None:
                status, why = await self._block(stream, track, msn_b, part_b)
                if status != 200:
                    await self._error(send, "playlist", status, why)
                    return
                blocking = True
        if stream.low_latency and not blocking and track.last_msn < 0 and not stream.ended:
            # Hold until the run's short first segment exists (see _hold_first).
            await self._wait(stream, track, lambda: track.last_msn >= 0)
        body = track.playlist_skip if skip else track.playlist
        if not body:
            await self._error(send, "playlist", 404, NO_SEGMENT)
            return
        if stream.ended:
            headers = self._h_ended
        elif blocking:
            headers = self._h_blocking
        elif stream.low_latency:
            headers = self._h_ll
        else:
            headers = self._h_live
        await self._body(scope, send, "playlist", body, headers)

    async def _block(
        self, stream: LiveStream, track: RenditionTrack, msn_b: bytes | None, part_b: bytes | None
    ) -> tuple[int, bytes]:
        """Hold a blocking playlist reload (RFC 8216bis §6.2.5.2) until it can be answered."""
        if msn_b is None:
            return 400, b"_HLS_part needs _HLS_msn\n"
        try:
            msn = int(msn_b)
            part = int(part_b) if part_b is not None else None
        except ValueError:
            return 400, b"_HLS_msn and _HLS_part must be integers\n"
        if msn < 0 or (part is not None and part < 0):
            return 400, b"_HLS_msn and _HLS_part must not be negative\n"
        last = max(track.last_msn, track.building_msn if track.building else -1)
        # §6.2.5.2: more than two segments past the playlist's last one is a bad request;
        # so is a part index no segment can reach.
        if msn > last + 2:
            return 400, b"_HLS_msn is more than two segments ahead of the playlist\n"
        per_segment = int(stream.config.segment_duration / stream.config.part_duration) + 2
        if part is not None and part > 2 * per_segment:
            return 400, b"_HLS_part is beyond any segment's parts\n"
        if track.reached(msn, part) or stream.ended:
            return 200, b""
        ok = await self._wait(stream, track, lambda: track.reached(msn, part))
        if not ok:
            return 503, TIMED_OUT
        return 200, b""

    async def _wait(
        self, stream: LiveStream, track: RenditionTrack, ready: Callable[[], bool]
    ) -> bool:
        """Wait on the rendition's event until ``ready()`` or the stream ends; False on timeout."""
        limit = 3 * stream.config.segment_duration
        self.metrics.held.inc()
        try:
            async with asyncio.timeout(limit):
                while not (ready() or stream.ended):
                    await track.changed.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self.metrics.held.dec()

    async def _part(
        self,
        scope: Scope,
        send: Send,
        stream: LiveStream,
        track: RenditionTrack,
        msn: int,
        index: int,
    ) -> None:
        key = (msn, index)
        part = track.parts.get(key)
        if part is None:
            # The preload-hinted part (or one just after it): hold the request
            # until the part exists (§6.2.6), unless it can no longer appear.
            last_msn, last_part = track.last_part
            ahead = msn > max(track.last_msn, last_msn) + 1 or (
                msn == last_msn and index > last_part + 3
            )
            if stream.ended or msn <= track.last_msn or ahead or index < 0:
                await self._error(send, "part", 404, b"no such part\n")
                return

            def arrived() -> bool:
                return key in track.parts or track.last_msn >= msn

            await self._wait(stream, track, arrived)
            part = track.parts.get(key)
            if part is None:
                await self._error(send, "part", 404, b"the hinted part was not produced\n")
                return
            # Sent as it became available: chunked transfer, no Content-Length.
            await self._body(
                scope, send, "part", part.data, self._h_part, ranges=True, chunked=True
            )
            return
        await self._body(scope, send, "part", part.data, self._h_part, ranges=True)

    async def _vod(
        self, scope: Scope, send: Send, tenant: str, name: str, rendition: str | None, file: str
    ) -> None:
        if await self._preflight(scope, send, "vod"):
            return
        found = await self.vod.read(tenant, name, rendition, file) if self.vod else None
        if found is None:
            await self._error(send, "vod", 404, b"no such recording\n")
            return
        data, ctype = found
        if ctype == PLAYLIST_TYPE:
            await self._body(scope, send, "vod", data, self._h_vod_pl)
        else:
            headers = (
                self._h_init
                if file.startswith("init-")
                else self._h_ts
                if ctype == SEGMENT_TYPE
                else self._h_m4s
            )
            await self._body(scope, send, "vod", data, headers, ranges=True)

    # -- responses ---------------------------------------------------------------------

    async def _preflight(self, scope: Scope, send: Send, kind: str) -> bool:
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
                        (b"access-control-allow-origin", self.cors),
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
        await self._error(
            send, kind, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD, OPTIONS")]
        )
        return True

    async def _body(
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
                        await self._error(
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

    async def _error(
        self, send: Send, kind: str, status: int, body: bytes, extra: Headers | None = None
    ) -> None:
        headers = [
            (b"content-type", TEXT),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", ERROR_CACHE),
            *self._cors,
            *(extra or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.count(kind, status)
