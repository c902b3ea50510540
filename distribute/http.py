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

This module decides what a media request gets; :mod:`distribute.responses`
sends it (headers, Range, errors, CORS) and :mod:`distribute.media_metrics`
counts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Protocol

from distribute.access import RELAY_HEADER, TokenCheck
from distribute.hls.store import Store
from distribute.hls.stream import LiveStream
from distribute.hls.track import RenditionTrack
from distribute.media_metrics import MediaMetrics
from distribute.responses import (
    BLOCKING_PLAYLIST_CACHE,
    ENDED_PLAYLIST_CACHE,
    FMP4_TYPE,
    INIT_TYPE,
    LIVE_PLAYLIST_CACHE,
    LL_PLAYLIST_CACHE,
    NO_SEGMENT,
    PLAYLIST_TYPE,
    SEGMENT_CACHE,
    SEGMENT_TYPE,
    TIMED_OUT,
    VOD_PLAYLIST_CACHE,
    ASGIApp,
    Headers,
    Receive,
    Responder,
    Scope,
    Send,
    header_lines,
)

log = logging.getLogger(__name__)


class VodSource(Protocol):
    """Recorded streams (``/{tenant}/{stream}/vod/...``), served from disk."""

    async def read(
        self, tenant: str, stream: str, rendition: str | None, file: str
    ) -> tuple[bytes, bytes] | None:
        """(body, content type), or None when there is no such file."""
        ...


class RelayHook(Protocol):
    """Streams this node does not hold, pulled from another node on demand
    (:class:`distribute.relay.manager.RelayManager`)."""

    def touch(self, stream: LiveStream, rendition: str | None) -> bool:
        """A viewer request for a stream (and rendition): cheap, called per request.
        False: the rendition is not ready to serve yet (the ASGI path waits for it)."""
        ...

    async def open(self, tenant: str, name: str, rendition: str | None) -> LiveStream | None:
        """The local copy of a stream not held here, once relayed (bounded wait)."""
        ...

    async def settle(self, stream: LiveStream, rendition: str) -> None:
        """Wait (bounded) until a relayed rendition lists something."""
        ...


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


class Memo:
    """A 200 that :meth:`MediaApp.fast` gave, kept by the fast path for the same request
    bytes: :meth:`MediaApp.replay` answers it again while ``owner.attr`` (or
    ``owner[key]``) is still ``item``, without parsing or looking anything up."""

    __slots__ = (
        "kind",
        "block",
        "body",
        "stream",
        "stream_key",
        "ended",
        "rendition",
        "owner",
        "attr",
        "key",
        "item",
        "viewer",
        "stored",
        "count",
        "wire",
        "wired",
    )

    def __init__(
        self,
        kind: str,
        block: bytes,
        body: bytes,
        stream: LiveStream,
        rendition: str | None,
        owner: object,
        attr: str | None,
        key: object,
        item: object,
        viewer: tuple[bytes, bytes, bytes] | None = None,
        stored: float = 0.0,
    ) -> None:
        self.kind, self.block, self.body = kind, block, body
        self.stream, self.ended = stream, stream.ended
        # The stream's key in Store.streams, made once.
        self.stream_key = (stream.key.tenant, stream.key.stream)
        self.rendition = rendition
        self.owner, self.attr, self.key, self.item = owner, attr, key, item
        # A media playlist's viewer-estimate key, less the client address.
        self.viewer = viewer
        # A part still kept: when it was stored, for the part-delivery histogram.
        self.stored = stored
        self.count = (kind, 200)
        # The response's bytes as the fast path last sent them (its head, or head and
        # body when the body is small), and the Date header source they were made with.
        self.wire = b""
        self.wired: object = None


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
        # Bound once: called per part response and per playlist request.
        self._part_plain = metrics.part_plain.observe
        self._saw_viewer = metrics.viewers.saw
        self.vod = vod
        # Playback tokens (set by the node when some tenant needs them): a guarded
        # tenant's request with a verified ``?token=`` is answered here like any
        # other, its playlists signed; every other one goes down the ASGI path,
        # where :class:`distribute.access.PlaybackGuard` refuses it with a reason.
        self.tokens: TokenCheck | None = None
        # Streams not held here are relayed from another node (``relay.enabled``).
        self.relay: RelayHook | None = None
        # Whether another node's relay pull may start a relay here too: on MEC and cloud
        # nodes, which edges pull through (relays chain by tier); never on an edge, which
        # only another node's relay asks when it is the origin, or it would relay back.
        self.relays_for_relays = False
        self.respond = Responder(cors_origin, metrics)
        cors = self.respond.cors
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
        """Before the run's first segment exists (a whole one, or the lead with
        hls.lead_parts), hold a playlist request until it does: players such as hls.js
        reject a playlist without an EXTINF."""

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

        metrics = self.metrics

        def answer() -> tuple[bytes, bytes] | None:
            got = track.part_data(msn, index)
            if got is None:
                return None
            if got[1]:
                metrics.part_sent(got[1], True)
            return self._b_part, got[0]

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

    def fast(
        self,
        url: bytes,
        headers: Headers,
        client: tuple[str, int] | None = None,
        memo: list[Memo] | None = None,
    ) -> tuple[bytes, bytes] | Hold | None:
        """A GET without a Range: (header block, body) of a 200 when it can be answered
        now, a :class:`Hold` when it is a blocking reload or preload-hinted part that
        must wait. None sends the request down the ASGI path, which handles
        everything (ranges, errors, HEAD, OPTIONS) the same way. ``client`` (address,
        port) feeds the viewer estimate. With ``memo``, a 200 that :meth:`replay` can
        give again appends its :class:`Memo` there (not for a guarded tenant: its
        tokens expire)."""
        path, _, qs = url.partition(b"?")
        if b"%" in path or not path.isascii():
            # Percent-encoded or raw non-ASCII bytes: uvicorn decodes or refuses them (400).
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
            if self.relay is not None:
                self.relay.touch(stream, None)
            body = stream.master
            block = self._b_ended if stream.ended else self._b_live
            if token is not None:
                body = tokens.signed(body, token)  # type: ignore[union-attr]
            elif memo is not None:
                memo.append(Memo("master", block, body, stream, None, stream, "master", None, body))
            self.metrics.count("master", 200)
            self.metrics.sent += len(body)
            return block, body
        if n != 5 or parts[3] == b"vod":
            return None
        stream = self.store.get(parts[1].decode(), parts[2].decode())
        if stream is None:
            return None
        track = stream.renditions.get(parts[3].decode())
        if track is None:
            return None
        if self.relay is not None and not self.relay.touch(stream, track.name):
            return None
        file = parts[4]
        # What the answer is, for a memo: owner.attr, or owner[key], is item.
        owner: object
        attr: str | None = None
        key: object = None
        item: object
        viewer: tuple[bytes, bytes, bytes] | None = None
        stored = 0.0
        if file == b"index.m3u8":
            kind = "playlist"
            viewer = self._saw(client, headers, parts, stream.low_latency)
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
                    if skip:
                        attr = "playlist_skip"
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
            owner, item = track, body
            attr = attr or "playlist"
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
                got = track.part_data(msn, index)
                if got is None:
                    return self._hold_part(stream, track, msn, index)
                kind, body, block = "part", got[0], self._b_part
                stored = got[1]
                if stored:
                    self._part_plain(monotonic() - stored)
                if memo is not None:
                    # The part while it is kept, else the segment it is a slice of.
                    item = track.parts.get((msn, index))
                    if item is not None:
                        owner, key = track.parts, (msn, index)
                    else:
                        owner, key, item = track.by_msn, msn, track.by_msn.get(msn)
            else:
                seg = track.by_msn.get(msn)
                if seg is None or seg.gap:
                    return None
                kind, body, block = "segment", seg.data, self._b_m4s
                owner, key, item = track.by_msn, msn, seg
        elif file.endswith(b".ts"):
            try:
                msn = int(file[:-3])
            except ValueError:
                return None
            seg = track.by_msn.get(msn)
            if seg is None or seg.gap:
                return None
            kind, body, block = "segment", seg.data, self._b_ts
            owner, key, item = track.by_msn, msn, seg
        elif file.startswith(b"init-") and file.endswith(b".mp4"):
            try:
                n = int(file[5:-4])
            except ValueError:
                return None
            init = track.inits.get(n)
            if init is None:
                return None
            kind, body, block = "init", init, self._b_init
            owner, key, item = track.inits, n, init
        else:
            return None
        if memo is not None and token is None:
            memo.append(
                Memo(kind, block, body, stream, track.name, owner, attr, key, item, viewer, stored)
            )
        self.metrics.count(kind, 200)
        self.metrics.sent += len(body)
        return block, body

    def replay(self, memo: Memo, client: tuple[str, int] | None) -> bool:
        """Is what :meth:`fast` answered when it made ``memo`` still the answer? The
        stream is still the store's and has not ended or restarted since, the playlist,
        part, segment or init segment answered is still the one held, and the tenant
        still needs no token. Then this request has :meth:`fast`'s side effects (request
        counts, the viewer estimate, the part-delivery histogram, the relay's use), and
        the caller sends ``memo.block`` and ``memo.body``. False: :meth:`fast` decides
        again."""
        stream = memo.stream
        if (
            stream.ended is not memo.ended
            or self.store.streams.get(memo.stream_key) is not stream  # the store's own key
            or (self.tokens is not None and self.tokens.guarded(memo.stream_key[0]))
        ):
            return False
        owner = memo.owner
        if memo.attr is not None:
            if getattr(owner, memo.attr) is not memo.item:
                return False
        elif owner.get(memo.key) is not memo.item:  # type: ignore[attr-defined]
            return False
        if self.relay is not None and not self.relay.touch(stream, memo.rendition):
            return False
        viewer = memo.viewer
        if viewer is not None:
            self._saw_viewer((client[0] if client else "", *viewer), stream.low_latency)
        elif memo.stored:
            self._part_plain(monotonic() - memo.stored)
        metrics = self.metrics
        counts, key = metrics.counts, memo.count
        counts[key] = counts.get(key, 0) + 1
        metrics.sent += len(memo.body)
        return True

    def _saw(
        self,
        client: tuple[str, int] | None,
        headers: Headers,
        parts: list[bytes],
        low_latency: bool,
    ) -> tuple[bytes, bytes, bytes]:
        """A media playlist request: one more sighting for the viewer estimate. Returns
        the sighting's key less the client's address."""
        ua = b""
        for k, v in headers:
            if k == b"user-agent":
                ua = v
                break
        self._saw_viewer((client[0] if client else "", ua, parts[1], parts[2]), low_latency)
        return ua, parts[1], parts[2]

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

    def _may_relay(self, scope: Scope) -> bool:
        """Whether a request for a stream not held here may start a relay of it."""
        return self.relays_for_relays or not _from_relay(scope)

    # -- handlers ----------------------------------------------------------------------

    async def _master(self, scope: Scope, send: Send, tenant: str, name: str) -> None:
        if await self.respond.preflight(scope, send, "master"):
            return
        stream = self.store.get(tenant, name)
        if stream is None and self.relay is not None and self._may_relay(scope):
            stream = await self.relay.open(tenant, name, None)
        if stream is None or not stream.master:
            await self.respond.error(send, "master", 404, b"no such stream\n")
            return
        await self.respond.body(
            scope, send, "master", stream.master, self._h_ended if stream.ended else self._h_live
        )

    async def _media(
        self, scope: Scope, send: Send, tenant: str, name: str, rendition: str, file: str
    ) -> None:
        if await self.respond.preflight(scope, send, "playlist"):
            return
        stream = self.store.get(tenant, name)
        relay = self.relay
        if stream is None and relay is not None and self._may_relay(scope):
            stream = await relay.open(tenant, name, rendition)
        track = stream.renditions.get(rendition) if stream else None
        if stream is None or track is None:
            await self.respond.error(send, "playlist", 404, b"no such stream\n")
            return
        if relay is not None and not relay.touch(stream, rendition):
            await relay.settle(stream, rendition)
        if file == "index.m3u8":
            await self._playlist(scope, send, stream, track)
        elif file.endswith(".m4s"):
            stem = file[:-4]
            msn_s, dot, part_s = stem.partition(".")
            try:
                msn = int(msn_s)
                part = int(part_s) if dot else -1
            except ValueError:
                await self.respond.error(send, "segment", 404, b"no such segment\n")
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
                await self.respond.error(send, "init", 404, b"no such init segment\n")
                return
            await self.respond.body(scope, send, "init", data, self._h_init, ranges=True)
        else:
            await self.respond.error(send, "segment", 404, b"no such file\n")

    async def _segment(
        self, scope: Scope, send: Send, track: RenditionTrack, msn: int, headers: Headers
    ) -> None:
        seg = track.by_msn.get(msn)
        if seg is None or seg.gap:
            await self.respond.error(send, "segment", 404, b"no such segment\n")
            return
        await self.respond.body(scope, send, "segment", seg.data, headers, ranges=True)

    async def _playlist(
        self, scope: Scope, send: Send, stream: LiveStream, track: RenditionTrack
    ) -> None:
        if scope["method"] == "GET":
            path = scope["path"].encode().split(b"/")
            self._saw(scope.get("client"), scope["headers"], path, stream.low_latency)
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
                    await self.respond.error(send, "playlist", status, why)
                    return
                blocking = True
        if stream.low_latency and not blocking and track.last_msn < 0 and not stream.ended:
            # Hold until the run's first segment exists (see _hold_first).
            await self._wait(stream, track, lambda: track.last_msn >= 0)
        body = track.playlist_skip if skip else track.playlist
        if not body:
            await self.respond.error(send, "playlist", 404, NO_SEGMENT)
            return
        if stream.ended:
            headers = self._h_ended
        elif blocking:
            headers = self._h_blocking
        elif stream.low_latency:
            headers = self._h_ll
        else:
            headers = self._h_live
        await self.respond.body(scope, send, "playlist", body, headers)

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
        got = track.part_data(msn, index)
        if got is None:
            # The preload-hinted part (or one just after it): hold the request
            # until the part exists (§6.2.6), unless it can no longer appear.
            last_msn, last_part = track.last_part
            ahead = msn > max(track.last_msn, last_msn) + 1 or (
                msn == last_msn and index > last_part + 3
            )
            if stream.ended or msn <= track.last_msn or ahead or index < 0:
                await self.respond.error(send, "part", 404, b"no such part\n")
                return

            def arrived() -> bool:
                return key in track.parts or track.last_msn >= msn

            await self._wait(stream, track, arrived)
            got = track.part_data(msn, index)
            if got is None:
                await self.respond.error(send, "part", 404, b"the hinted part was not produced\n")
                return
            # Sent as it became available: chunked transfer, no Content-Length.
            if got[1]:
                self.metrics.part_sent(got[1], True)
            await self.respond.body(
                scope, send, "part", got[0], self._h_part, ranges=True, chunked=True
            )
            return
        if scope["method"] == "GET" and got[1]:
            self.metrics.part_sent(got[1], False)
        await self.respond.body(scope, send, "part", got[0], self._h_part, ranges=True)

    async def _vod(
        self, scope: Scope, send: Send, tenant: str, name: str, rendition: str | None, file: str
    ) -> None:
        if await self.respond.preflight(scope, send, "vod"):
            return
        found = await self.vod.read(tenant, name, rendition, file) if self.vod else None
        if found is None:
            await self.respond.error(send, "vod", 404, b"no such recording\n")
            return
        data, ctype = found
        if ctype == PLAYLIST_TYPE:
            await self.respond.body(scope, send, "vod", data, self._h_vod_pl)
        else:
            headers = (
                self._h_init
                if file.startswith("init-")
                else self._h_ts
                if ctype == SEGMENT_TYPE
                else self._h_m4s
            )
            await self.respond.body(scope, send, "vod", data, headers, ranges=True)


_RELAY_HEADER = RELAY_HEADER.encode()


def _from_relay(scope: Scope) -> bool:
    """Whether the request is another node's relay pull (it is never relayed onwards)."""
    return any(k == _RELAY_HEADER for k, _ in scope["headers"])
