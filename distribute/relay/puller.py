"""Pull one rendition of a stream from an upstream node over HTTP (LL-HLS aware).

The puller asks for the media playlist with blocking reloads
(``?_HLS_msn=N&_HLS_part=M``, RFC 8216bis §6.2.5.2), so the upstream answers the
moment the next part exists; it then fetches each new part once and hands it on.
A segment whose parts were all fetched is handed on assembled from them. Streams
without parts (MPEG-TS, plain fMP4) are polled and pulled segment by segment.

Any rendition can be pulled, listed in the multivariant playlist or not (a hidden
one such as a WebRTC tap's CMAF rendition): what arrives goes to a
:class:`RenditionSink`, not to a store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import httpx

from distribute.relay.cursor import Assemble, Cursor, Discontinuity, Init, Part, Step, Whole
from distribute.relay.playlist import MediaPlaylist, PartRef, SegmentRef, parse_media

log = logging.getLogger(__name__)

# Fetches of one playlist's steps in flight at once (a backfill, a burst of parts).
FETCH_CONCURRENCY = 8


class RenditionSink(Protocol):
    """Where a pulled rendition goes: called in media order, on the event loop."""

    def on_init(self, rendition: str, data: bytes) -> None: ...

    def on_part(self, rendition: str, part: PartRef, data: bytes) -> None: ...

    def on_segment(self, rendition: str, segment: SegmentRef, data: bytes) -> None: ...

    def on_discontinuity(self, rendition: str, msn: int) -> None:
        """Segment ``msn`` and what follows come after an EXT-X-DISCONTINUITY upstream."""
        ...


class PullError(Exception):
    """A pull from the upstream failed. ``reason`` is one of metrics.PULL_ERRORS;
    ``node_failed`` says whether the node itself looks down (connection refused or
    reset, timeouts, 5xx), as opposed to an answer about the stream."""

    def __init__(self, reason: str, message: str, *, node_failed: bool, status: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.node_failed = node_failed
        self.status = status


class StreamGone(Exception):
    """The upstream does not have the stream (404 on its playlist)."""


Count = Callable[[str, int], None]


class Puller:
    """Pulls ``rendition`` from ``base`` (``{upstream}/{tenant}/{stream}``) until the
    upstream ends the stream (``run`` returns) or a pull fails (``run`` raises)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base: str,
        rendition: str,
        sink: RenditionSink,
        cursor: Cursor,
        *,
        token: Callable[[], str | None],
        count: Count,
        hold: float,
        on_start: Callable[[int], None] | None = None,
        on_primed: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.base = base.rstrip("/")
        self.rendition = rendition
        self.sink = sink
        self.cursor = cursor
        self.token = token
        self.count = count
        # How long the upstream may hold a blocking request (three target durations).
        self.hold = hold
        self.on_start = on_start
        # Called once the first playlist's steps are all handed on (the backfill).
        self.on_primed = on_primed
        self.prefix = f"[relay {base.rsplit('/', 2)[-2]}/{base.rsplit('/', 1)[-1]}/{rendition}]"

    def _params(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        params = dict(extra or {})
        token = self.token()
        if token:
            # The relay's own credential, never a viewer's token (distribute.access).
            params["token"] = token
        return params

    async def _get(self, uri: str, kind: str, params: dict[str, str], read: float) -> bytes:
        url = f"{self.base}/{self.rendition}/{uri}"
        try:
            timeout = httpx.Timeout(self.client.timeout.connect, read=read, write=read, pool=read)
            r = await self.client.get(url, params=params, timeout=timeout)
        except httpx.ConnectError as exc:
            raise PullError("connect", f"{url}: {exc}", node_failed=True) from None
        except httpx.TimeoutException as exc:
            raise PullError("timeout", f"{url}: {type(exc).__name__}", node_failed=True) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise PullError("reset", f"{url}: {exc}", node_failed=True) from None
        self.count(kind, len(r.content))
        if r.status_code == 200:
            return r.content
        if r.status_code == 404:
            if kind == "playlist":
                raise StreamGone(f"{url}: 404")
            raise PullError("missing", f"{url}: 404", node_failed=False)
        if r.status_code in (401, 403):
            raise PullError(
                "refused", f"{url}: {r.status_code} {r.text[:200]!r}", node_failed=False
            )
        raise PullError(
            "status",
            f"{url}: {r.status_code}",
            node_failed=r.status_code >= 500,
            status=r.status_code,
        )

    async def playlist(self, block: tuple[int, int] | None) -> MediaPlaylist | None:
        """The media playlist (held until part ``block`` exists); None when the
        upstream's hold timed out (503: no new part within three target durations)."""
        extra = None if block is None else {"_HLS_msn": str(block[0]), "_HLS_part": str(block[1])}
        read = self.client.timeout.read or 5.0
        try:
            body = await self._get(
                "index.m3u8", "playlist", self._params(extra), read + (self.hold if block else 0)
            )
        except PullError as exc:
            if block is not None and exc.status == 503:
                return None
            raise
        try:
            return parse_media(body.decode("utf-8", "replace"))
        except ValueError as exc:
            raise PullError("protocol", f"{self.prefix} {exc}", node_failed=False) from None

    async def run(self) -> None:
        pl = await self.playlist(None)
        while True:
            if pl is not None:
                started = self.cursor.started
                steps = self.cursor.plan(pl)
                if not started and self.on_start is not None and self.cursor.next_msn is not None:
                    self.on_start(self.cursor.next_msn)
                await self.execute(steps)
                if self.on_primed is not None:
                    self.on_primed()
                    self.on_primed = None
                if pl.ended:
                    return
                block = self.cursor.next_request(pl)
            else:
                block = None
            if block is None:
                # No parts to block on: poll about four times a target duration.
                await asyncio.sleep(min(1.0, max(0.1, (pl.target if pl else 2.0) / 4)))
            pl = await self.playlist(block)

    async def execute(self, steps: list[Step]) -> None:
        """Fetch what ``steps`` need, at most FETCH_CONCURRENCY at once, and hand each on
        in order. A failed fetch stops there: the steps before it are handed on."""
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)
        params = self._params()
        read = self.client.timeout.read or 5.0

        async def fetch(step: Step) -> bytes:
            if isinstance(step, Assemble | Discontinuity):
                return b""
            if isinstance(step, Whole) and step.segment.gap:
                return b""
            uri = (
                step.uri
                if isinstance(step, Init)
                else step.segment.uri
                if isinstance(step, Whole)
                else step.part.uri
            )
            async with sem:
                return await self._get(uri, "media", params, read)

        tasks = [asyncio.ensure_future(fetch(s)) for s in steps]
        try:
            for step, task in zip(steps, tasks, strict=True):
                data = await task
                self._apply(step, data)
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
            for t in tasks:
                if t.done() and not t.cancelled():
                    t.exception()  # retrieved: a failure after the first is not logged twice

    def _apply(self, step: Step, data: bytes) -> None:
        out = self.cursor.advance(step, data)
        if isinstance(step, Discontinuity):
            self.sink.on_discontinuity(self.rendition, step.msn)
        elif isinstance(step, Init):
            self.sink.on_init(self.rendition, out)
        elif isinstance(step, Part):
            self.sink.on_part(self.rendition, step.part, out)
        elif not step.segment.gap:
            self.sink.on_segment(self.rendition, step.segment, out)
