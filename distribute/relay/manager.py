"""The relayed streams of one node: started on a viewer's request, stopped when idle.

A request for a stream this node does not hold (``open``) asks placement which
node to pull it from (``GET /v1/upstream``), reads that node's multivariant
playlist and opens a local :class:`~distribute.hls.stream.LiveStream` listing the
same renditions. Each rendition is pulled only once a viewer asks for it
(``touch``), and fed into the local stream with the calls a transcoder's sink
makes (add_init, add_part, add_segment), so the HTTP layer serves it like any
other: blocking reloads, preload hints, rendition reports, tokens.

When the upstream fails (refused, reset, timed out), the relay tells placement
(``POST /v1/nodes/{id}/suspect``) and asks for another upstream, with a bounded
backoff, until one is named; the local playlists go on across the switch with
EXT-X-DISCONTINUITY (a new generation of the local stream). With no viewer
request for ``relay.idle_timeout``, the relay stops pulling and frees the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from distribute.access import RELAY, RELAY_HEADER
from distribute.hls.store import Store
from distribute.hls.stream import LiveStream
from distribute.relay.config import RelayConfig
from distribute.relay.cursor import BACKFILL_SEGMENTS, Cursor
from distribute.relay.metrics import RelayMetrics
from distribute.relay.playlist import Master, PartRef, SegmentRef, parse_master
from distribute.relay.puller import Puller, PullError, StreamGone
from distribute.whep.cmaf_source import TAP_RENDITION
from media import StreamKey
from media.segments import InitFrame, PartFrame, SegmentFrame
from tokens import sign

log = logging.getLogger(__name__)

# A stream placement does not know is not asked about again for this long.
UNKNOWN_TTL = 2.0
# Backoff between questions to placement while no other upstream is named.
FAILOVER_BACKOFF = (0.25, 1.0)
# A pull failing again within this many seconds of a failure means its upstream failed.
RETRY_WINDOW = 5.0
# The marker a relay puts before a stream it reports to placement: "relay:tenant/stream".
RELAY_MARK = "relay:"


@dataclass(frozen=True, slots=True)
class Upstream:
    node: str
    tier: str
    url: str
    origin: str


class NoUpstream(Exception):
    """Placement named no upstream now (503, unreachable): ask again later."""


class UnknownStream(Exception):
    """Placement knows no such stream (404)."""


class Directory(Protocol):
    """Placement, as a relay asks it (see :class:`PlacementDirectory`)."""

    async def upstream(self, tenant: str, stream: str) -> Upstream: ...

    async def suspect(self, node: str) -> None: ...


class PlacementDirectory:
    """``GET /v1/upstream`` and ``POST /v1/nodes/{id}/suspect`` with the node credential."""

    def __init__(self, client: httpx.AsyncClient, node_id: str) -> None:
        self.client = client
        self.node_id = node_id

    async def upstream(self, tenant: str, stream: str) -> Upstream:
        try:
            r = await self.client.get(
                "/v1/upstream", params={"tenant": tenant, "stream": stream, "node": self.node_id}
            )
        except httpx.HTTPError as exc:
            raise NoUpstream(f"placement unreachable: {exc}") from None
        if r.status_code == 404:
            raise UnknownStream(f"{tenant}/{stream}: {r.text[:200]}")
        if r.status_code != 200:
            raise NoUpstream(f"placement answered {r.status_code}: {r.text[:200]}")
        try:
            d = r.json()
            return Upstream(str(d["node"]), str(d["tier"]), str(d["url"]), str(d["origin"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise NoUpstream(f"placement answered an unreadable upstream: {exc!r}") from None

    async def suspect(self, node: str) -> None:
        try:
            r = await self.client.post(f"/v1/nodes/{node}/suspect")
        except httpx.HTTPError as exc:
            log.warning("[relay] could not report node %s as suspect: %s", node, exc)
            return
        if r.status_code in (404, 405):
            return  # a placement service without the route: it finds out by heartbeats
        if r.status_code >= 400:
            log.warning("[relay] suspect report on %s answered %d", node, r.status_code)
            return
        with contextlib.suppress(ValueError):
            if r.json().get("dead"):
                log.warning("[relay] placement declared node %s dead", node)


class Credentials:
    """Relay credentials (action ``relay``, one per stream), renewed at half their lifetime."""

    def __init__(self, config: RelayConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}

    def token(self, tenant: str, stream: str) -> str | None:
        key = self.config.signing_key()
        if key is None:
            return None
        now = self.clock()
        life = self.config.credential_lifetime
        hit = self._cache.get((tenant, stream))
        if hit is not None and hit[0] - now > life / 2:
            return hit[1]
        expires = now + life
        token = sign(key[1], key[0], RELAY, tenant, stream, int(expires))
        self._cache[(tenant, stream)] = (expires, token)
        return token

    def forget(self, tenant: str, stream: str) -> None:
        self._cache.pop((tenant, stream), None)


class TapSink(Protocol):
    """Where a relayed stream's WebRTC tap goes (distribute.whep.cmaf_source's
    CmafWhepSource: WHEP viewers of this node, re-packetized, no decode)."""

    def init(self, data: bytes) -> None: ...

    def fragment(self, data: bytes) -> object: ...

    def discontinuity(self) -> None: ...

    def close(self) -> None: ...


class _Feeder:
    """A pulled rendition into the local stream: upstream media sequence numbers map to
    worker segment indexes from ``base`` (the generation's first upstream number)."""

    def __init__(self, stream: LiveStream, codecs: dict[str, str]) -> None:
        self.stream = stream
        self.codecs = codecs
        self.base: int | None = None
        # The upstream discontinuity the current local generation started at.
        self.since: int | None = None
        # Per rendition: media time of the segment being fed, and of its next part.
        self._seg_start: dict[str, float] = {}
        self._part_start: dict[str, float] = {}
        # The hidden TAP_RENDITION goes here (WHEP viewers), not into the local stream;
        # the segment whose parts it was last given (a segment assembled from them is
        # not given again).
        self.tap: TapSink | None = None
        self._tap_parts_of: int | None = None

    def _tap(self, what: str, data: bytes) -> None:
        assert self.tap is not None
        try:
            if what == "init":
                self.tap.init(data)
            else:
                self.tap.fragment(data)
        except ValueError as exc:
            log.warning("[relay %s] webrtc %s refused: %s", self.stream.key, what, exc)

    def _index(self, msn: int) -> int:
        assert self.base is not None
        return msn - self.base

    def on_init(self, rendition: str, data: bytes) -> None:
        if rendition == TAP_RENDITION:
            if self.tap is not None:
                self._tap("init", data)
            return
        self.stream.add_init(InitFrame(rendition, self.codecs.get(rendition, ""), data))

    def on_discontinuity(self, rendition: str, msn: int) -> None:
        """The upstream starts a new run at ``msn`` (every rendition at the same number):
        so does the local stream, once, when the first rendition gets there. Numbers
        map on from the local number that follows the last segment listed."""
        if rendition == TAP_RENDITION:
            if self.tap is not None:
                self.tap.discontinuity()
            return
        if self.base is None or (self.since is not None and msn <= self.since):
            return
        log.info("[relay %s] upstream discontinuity at %d: new generation", self.stream.key, msn)
        self.stream.begin_generation(lead=False)
        self.base, self.since = msn, msn

    def on_part(self, rendition: str, part: PartRef, data: bytes) -> None:
        if rendition == TAP_RENDITION:
            if self.tap is not None:
                self._tap("part", data)
                self._tap_parts_of = part.msn
            return
        seg_start = self._seg_start.get(rendition, 0.0)
        start = seg_start if part.index == 0 else self._part_start.get(rendition, seg_start)
        self.stream.add_part(
            PartFrame(
                rendition,
                self._index(part.msn),
                part.index,
                start,
                part.duration,
                part.independent,
                data,
            )
        )
        self._part_start[rendition] = start + part.duration

    def on_segment(self, rendition: str, segment: SegmentRef, data: bytes) -> None:
        if rendition == TAP_RENDITION:
            if self.tap is not None and segment.msn != self._tap_parts_of:
                self._tap("segment", data)
            return
        start = self._seg_start.get(rendition, 0.0)
        track = self.stream.renditions.get(rendition)
        codecs = self.codecs.get(rendition) or (track.codecs if track else "")
        self.stream.add_segment(
            SegmentFrame(rendition, self._index(segment.msn), start, segment.duration, codecs, data)
        )
        self._seg_start[rendition] = start + segment.duration
        self._part_start[rendition] = start + segment.duration


def _video_codecs(codecs: str) -> str:
    return ",".join(c for c in codecs.split(",") if c and not c.startswith("mp4a"))


def _renditions(master: Master) -> dict[str, Any]:
    """The rendition info a transcoder reports (LiveStream.set_renditions), as far as
    the upstream's multivariant playlist states it (bit rates as BANDWIDTH implies)."""
    return {
        "audio": master.audio,
        "renditions": [
            {
                "name": v.name,
                "width": v.width,
                "height": v.height,
                "fps": v.fps,
                # LiveStream lists (maxrate + audio) x 1.1 and (video + audio) x 1.05.
                "video_bitrate": int(v.average_bandwidth / 1.05),
                "maxrate": int(v.bandwidth / 1.1),
                "audio_bitrate": 0,
            }
            for v in master.variants
        ],
    }


class RelayedStream:
    """One stream this node relays: its upstream, its local stream, its pullers."""

    def __init__(self, manager: RelayManager, key: StreamKey) -> None:
        self.manager = manager
        self.key = key
        self.prefix = f"[relay {key}]"
        self.upstream: Upstream | None = None
        self.stream: LiveStream | None = None
        self.ready = asyncio.Event()
        self.wanted: set[str] = set()
        self.cursors: dict[str, Cursor] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.feeder: _Feeder | None = None
        self.used = True
        self.last_used = self.opened = time.monotonic()
        self.closed = False
        self._switching: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None
        self.generations = 0
        # The upstream number each rendition started at in this generation.
        self.started_at: dict[str, int] = {}
        # Renditions waiting for the generation's first segment number (after a switch).
        self._deferred: set[str] = set()
        # Bytes pulled: media, playlists.
        self.bytes = [0, 0]
        # Renditions whose first playlist (the backfill) is in: viewers are answered.
        self.primed: dict[str, asyncio.Event] = {}

    # -- start --------------------------------------------------------------------------

    def start(self) -> None:
        self._opening = asyncio.create_task(self._open(), name=f"relay-open-{self.key}")

    async def _open(self) -> None:
        m = self.manager
        try:
            up = await m.directory.upstream(self.key.tenant, self.key.stream)
            master = await self._master(up)
        except UnknownStream as exc:
            m.unknown[self.key] = time.monotonic() + UNKNOWN_TTL
            log.info("%s placement knows no such stream: %s", self.prefix, exc)
            m.drop(self, "unknown")
            return
        except (NoUpstream, PullError, StreamGone) as exc:
            log.warning("%s no upstream to pull from: %s", self.prefix, exc)
            m.drop(self, "unavailable")
            return
        except Exception:
            log.exception("%s relay failed to start", self.prefix)
            m.drop(self, "error")
            return
        if self.closed:
            return
        local = m.store.get(self.key.tenant, self.key.stream)
        if local is not None and not local.ended:
            # Published here while the relay was asking: the publisher's stream wins.
            m.drop(self, "published")
            return
        stream = m.store.open(self.key)
        stream.fmp4 = master.fmp4
        stream.low_latency = master.fmp4 and not master.independent
        stream.set_renditions(_renditions(master))
        stream.publisher_connected = True
        self.stream = stream
        self.upstream = up
        codecs = {v.name: _video_codecs(v.codecs) for v in master.variants}
        self.feeder = _Feeder(stream, codecs)
        m.by_stream[stream] = self
        m.changed()
        m.metrics.started.inc()
        m.metrics.active.set(len(m.relays))
        log.info(
            "%s relaying from %s (%s, origin %s) at %s: %s",
            self.prefix,
            up.node,
            up.tier,
            up.origin,
            up.url,
            ", ".join(v.name for v in master.variants),
        )
        self.ready.set()
        for name in sorted(self.wanted):
            self._pull(name)

    async def _master(self, up: Upstream) -> Master:
        m = self.manager
        url = f"{up.url.rstrip('/')}/{self.key.tenant}/{self.key.stream}/index.m3u8"
        params = {}
        token = m.credentials.token(self.key.tenant, self.key.stream)
        if token:
            params["token"] = token
        try:
            r = await m.client.get(url, params=params)
        except httpx.HTTPError as exc:
            m.metrics.errors.labels("connect").inc()
            raise PullError("connect", f"{url}: {exc}", node_failed=True) from None
        m.metrics.inbound.labels(up.node, "playlist").inc(len(r.content))
        self.bytes[1] += len(r.content)
        if r.status_code == 404:
            raise StreamGone(f"{url}: 404")
        if r.status_code != 200:
            m.metrics.errors.labels("refused" if r.status_code in (401, 403) else "status").inc()
            raise PullError(
                "status",
                f"{url}: {r.status_code} {r.text[:200]!r}",
                node_failed=r.status_code >= 500,
                status=r.status_code,
            )
        try:
            master = parse_master(r.content.decode("utf-8", "replace"))
        except ValueError as exc:
            m.metrics.errors.labels("protocol").inc()
            raise PullError("protocol", f"{url}: {exc}", node_failed=False) from None
        if not master.variants:
            raise PullError("protocol", f"{url}: no variants", node_failed=False)
        return master

    # -- renditions ---------------------------------------------------------------------

    def want(self, rendition: str) -> None:
        """A viewer asked for ``rendition``: pull it (once)."""
        if rendition in self.wanted or self.closed:
            return
        stream = self.stream
        if stream is not None and rendition not in stream.renditions and rendition != TAP_RENDITION:
            return
        self.wanted.add(rendition)
        self.primed.setdefault(rendition, asyncio.Event())
        if stream is not None and self._switching is None:
            self._pull(rendition)

    def _pull(self, rendition: str) -> None:
        up, feeder = self.upstream, self.feeder
        assert up is not None and feeder is not None
        task = self.tasks.get(rendition)
        if task is not None and not task.done():
            return
        cursor = self.cursors.get(rendition)
        if cursor is None:
            if feeder.base is None and any(not t.done() for t in self.tasks.values()):
                # Renditions of a generation start no earlier than its first segment
                # (after a switch, at it: it carries the discontinuity), known once one
                # rendition has started.
                self._deferred.add(rendition)
                return
            # WebRTC viewers start at the live edge: the tap's backlog is latency.
            backfill = 0 if rendition == TAP_RENDITION else BACKFILL_SEGMENTS
            cursor = self.cursors[rendition] = Cursor(floor=feeder.base or 0, backfill=backfill)
        m = self.manager
        inbound = m.metrics.inbound

        def count(kind: str, n: int) -> None:
            inbound.labels(up.node, "playlist" if kind == "playlist" else "media").inc(n)
            self.bytes[kind == "playlist"] += n

        def started(msn: int) -> None:
            self.started_at.setdefault(rendition, msn)
            if feeder.base is None:
                feeder.base = msn
                deferred, self._deferred = self._deferred, set()
                for name in sorted(deferred):
                    self.cursors[name] = Cursor(start=msn)
                    self._pull(name)

        stream = self.stream
        assert stream is not None
        puller = Puller(
            m.client,
            f"{up.url.rstrip('/')}/{self.key.tenant}/{self.key.stream}",
            rendition,
            feeder,
            cursor,
            token=lambda: m.credentials.token(self.key.tenant, self.key.stream),
            count=count,
            hold=3 * max(stream.config.segment_duration, 1.0),
            on_start=started,
            on_primed=lambda: self._primed(rendition),
        )
        self.tasks[rendition] = asyncio.create_task(
            self._run(puller, up), name=f"relay-{self.key}-{rendition}"
        )

    def _primed(self, rendition: str) -> None:
        self.primed.setdefault(rendition, asyncio.Event()).set()
        log.debug(
            "%s %s: first playlist in after %.3f s",
            self.prefix,
            rendition,
            time.monotonic() - self.opened,
        )

    async def _run(self, puller: Puller, up: Upstream) -> None:
        m = self.manager
        last_failure = -1e9
        while not self.closed:
            try:
                await puller.run()
            except asyncio.CancelledError:
                raise
            except StreamGone as exc:
                log.warning("%s upstream %s lost the stream: %s", self.prefix, up.node, exc)
                self._failover(up, suspect=False)
                return
            except PullError as exc:
                m.metrics.errors.labels(exc.reason).inc()
                if exc.node_failed:
                    now = time.monotonic()
                    if now - last_failure > RETRY_WINDOW:
                        # One more try at once: a single reset is not a dead node.
                        last_failure = now
                        log.warning("%s pull failed, retrying: %s", self.prefix, exc)
                        continue
                    log.warning("%s upstream %s failed: %s", self.prefix, up.node, exc)
                    self._failover(up, suspect=True)
                    return
                log.info("%s %s; reading the playlist again", self.prefix, exc)
                await asyncio.sleep(0.1)
                continue
            except Exception:
                log.exception("%s pull of %s failed", self.prefix, puller.rendition)
                await asyncio.sleep(1.0)
                continue
            else:
                # The upstream ended the stream (EXT-X-ENDLIST): so does this one.
                log.info("%s upstream ended the stream", self.prefix)
                m.stop(self, "ended", end=True, remove=False)
                return

    # -- failover -------------------------------------------------------------------------

    def _failover(self, failed: Upstream, *, suspect: bool) -> None:
        if self._switching is not None or self.closed or self.upstream is not failed:
            return
        self._switching = asyncio.create_task(
            self._switch(failed, suspect), name=f"relay-failover-{self.key}"
        )

    async def _switch(self, failed: Upstream, suspect: bool) -> None:
        m = self.manager
        try:
            for task in list(self.tasks.values()):
                if task is not asyncio.current_task():
                    task.cancel()
            self.tasks.clear()
            if suspect:
                await m.directory.suspect(failed.node)
            low, high = FAILOVER_BACKOFF
            delay = low
            while not self.closed:
                try:
                    up = await m.directory.upstream(self.key.tenant, self.key.stream)
                except UnknownStream:
                    log.warning("%s placement no longer knows the stream; ending it", self.prefix)
                    m.stop(self, "gone", end=True, remove=False)
                    return
                except NoUpstream as exc:
                    log.info("%s no upstream yet: %s", self.prefix, exc)
                    up = None
                # A new origin answers once its publisher's first media is in (a second
                # or two after the publisher moved): until then, keep asking.
                if up is not None and await self._alive(up):
                    break
                await asyncio.sleep(delay)
                delay = min(high, delay * 1.5)
            else:
                return
            if up.node != failed.node:
                m.metrics.failovers.inc()
                log.warning(
                    "%s upstream %s -> %s (%s, origin %s)",
                    self.prefix,
                    failed.node,
                    up.node,
                    up.tier,
                    up.origin,
                )
                # The new upstream numbers its segments its own way: a new generation of
                # the local stream, after EXT-X-DISCONTINUITY (RFC 8216bis §4.4.4.3).
                assert self.stream is not None and self.feeder is not None
                self.stream.begin_generation(lead=False)
                self.generations += 1
                self.feeder.base = self.feeder.since = None
                self.cursors.clear()
                self.started_at.clear()
                self._deferred.clear()
            self.upstream = up
        finally:
            self._switching = None
        for name in sorted(self.wanted):
            self._pull(name)

    async def _alive(self, up: Upstream) -> bool:
        """Whether ``up`` answers for the stream now (its master playlist is there)."""
        try:
            await self._master(up)
        except (PullError, StreamGone):
            return False
        return True

    # -- stop ------------------------------------------------------------------------------

    async def close(self) -> None:
        self.closed = True
        if self.feeder is not None and self.feeder.tap is not None:
            self.feeder.tap.close()
            self.feeder.tap = None
        tasks = [t for t in (self._opening, self._switching, *self.tasks.values()) if t]
        current = asyncio.current_task()
        for t in tasks:
            if t is not current:
                t.cancel()
        for t in tasks:
            if t is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        self.ready.set()

    def describe(self) -> dict[str, Any]:
        up = self.upstream
        return {
            "tenant": self.key.tenant,
            "stream": self.key.stream,
            "upstream": None
            if up is None
            else {"node": up.node, "tier": up.tier, "url": up.url, "origin": up.origin},
            "renditions": {
                name: {
                    "first": self.started_at.get(name),
                    "next": c.next_msn,
                    "parts": len(c.parts),
                    # Segments gone upstream before this relay got them (it fell behind).
                    "skipped": c.skipped,
                }
                for name, c in self.cursors.items()
            },
            "generation": self.generations,
            "bytes": {"media": self.bytes[0], "playlist": self.bytes[1]},
            "idle": round(time.monotonic() - self.last_used, 3),
        }


class RelayManager:
    """Every stream this node relays. The HTTP layer calls :meth:`touch` on each
    request for a relayed stream and :meth:`open` for a stream it does not hold."""

    def __init__(
        self,
        config: RelayConfig,
        store: Store,
        directory: Directory,
        metrics: RelayMetrics,
        *,
        client: httpx.AsyncClient | None = None,
        credentials: Credentials | None = None,
        placement_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.directory = directory
        self.metrics = metrics
        self.client = client or httpx.AsyncClient(
            headers={RELAY_HEADER: getattr(directory, "node_id", "") or "relay"},
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self.credentials = credentials or Credentials(config)
        # The client the directory talks to placement with: closed with the manager.
        self.placement_client = placement_client
        self.relays: dict[StreamKey, RelayedStream] = {}
        # Local streams being relayed, by identity: the fast path's lookup per request.
        self.by_stream: dict[LiveStream, RelayedStream] = {}
        self.unknown: dict[StreamKey, float] = {}
        self._idle: asyncio.Task[None] | None = None
        # Called when the streams relayed change (what the node reports to placement).
        self.on_change: Callable[[], None] | None = None
        # Makes the sink of a relayed stream's WebRTC tap (WHEP viewers here); None: WHEP
        # viewers are not relayed.
        self.tap_sink: Callable[[StreamKey], TapSink] | None = None
        # WHEP viewers of a stream here: a relay they watch is in use.
        self.tap_viewers: Callable[[StreamKey], int] = lambda key: 0

    # -- HTTP hooks -----------------------------------------------------------------------

    def touch(self, stream: LiveStream, rendition: str | None) -> bool:
        """A viewer request for ``stream`` (and ``rendition``): keep the relay alive, and
        pull the rendition if it is not pulled yet. False while that rendition's first
        playlist is not in yet (:meth:`settle` waits for it). Cheap: a dictionary lookup."""
        relay = self.by_stream.get(stream)
        if relay is None:
            return True
        relay.used = True
        if rendition is None:
            return True
        if rendition not in relay.wanted:
            relay.want(rendition)
        primed = relay.primed.get(rendition)
        return primed is None or primed.is_set()

    async def open(self, tenant: str, name: str, rendition: str | None) -> LiveStream | None:
        """The local copy of ``tenant/name`` once the relay has its playlist (waiting at
        most ``relay.first_wait``), starting the relay if needed; None when there is no
        such stream to relay, or it could not be started in time."""
        key = StreamKey(tenant, name)
        now = time.monotonic()
        relay = self.relays.get(key)
        if relay is None:
            until = self.unknown.get(key)
            if until is not None:
                if now < until:
                    return None
                del self.unknown[key]
            if len(self.relays) >= self.config.max_streams:
                log.warning(
                    "[relay %s] not relayed: %d streams relayed already (relay.max_streams)",
                    key,
                    len(self.relays),
                )
                return None
            existing = self.store.get(tenant, name)
            if existing is not None and not existing.ended:
                return existing
            relay = self.relays[key] = RelayedStream(self, key)
            relay.start()
        relay.used = True
        if rendition is not None:
            relay.want(rendition)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.first_wait):
                await relay.ready.wait()
                primed = relay.primed.get(rendition) if rendition is not None else None
                if primed is not None:
                    await primed.wait()
        # None when the relay could not start; a stream published here meanwhile is served.
        return relay.stream or self.store.get(tenant, name)

    async def open_tap(self, tenant: str, name: str) -> bool:
        """A WHEP viewer of a stream not published here: relay the stream's WebRTC tap
        (its hidden TAP_RENDITION) into a :class:`TapSink` made by ``tap_sink``, once.
        True once the tap's first playlist is in (waiting at most ``relay.first_wait``);
        its first packets follow as they are pulled."""
        factory = self.tap_sink
        if factory is None:
            return False
        t0 = time.monotonic()
        stream = await self.open(tenant, name, None)
        relay = self.relays.get(StreamKey(tenant, name))
        if stream is None or relay is None or relay.feeder is None or relay.closed:
            return False
        if relay.feeder.tap is None:
            relay.feeder.tap = factory(relay.key)
        relay.want(TAP_RENDITION)
        primed = relay.primed.get(TAP_RENDITION)
        if primed is None:
            return False
        left = self.config.first_wait - (time.monotonic() - t0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, left)):
                await primed.wait()
        return primed.is_set()

    async def settle(self, stream: LiveStream, rendition: str) -> None:
        """Wait (at most ``relay.first_wait``) until a relayed rendition's first playlist
        is in: its playlist then lists what the relay started from."""
        relay = self.by_stream.get(stream)
        if relay is None or rendition not in stream.renditions:
            return
        relay.used = True
        relay.want(rendition)
        primed = relay.primed.get(rendition)
        if primed is None or primed.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.first_wait):
                await primed.wait()

    # -- placement ------------------------------------------------------------------------

    def held(self) -> list[str]:
        """What the node reports as held for its relays: ``tenant/stream`` (a holder, for
        viewer routing) and ``relay:tenant/stream`` (a relay, not an origin)."""
        out = []
        for key, relay in self.relays.items():
            if relay.stream is not None and not relay.closed:
                out += [str(key), RELAY_MARK + str(key)]
        return out

    def describe(self) -> list[dict[str, Any]]:
        return [r.describe() for r in self.relays.values()]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._idle is None:
            self._idle = asyncio.create_task(self._reap(), name="relay-idle")

    async def _reap(self) -> None:
        period = min(1.0, self.config.idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            self.unknown = {k: t for k, t in self.unknown.items() if t > now}
            for relay in list(self.relays.values()):
                try:
                    stream = relay.stream
                    held = stream is not None and any(t.waiters for t in stream.renditions.values())
                    held = held or (
                        relay.feeder is not None
                        and relay.feeder.tap is not None
                        and self.tap_viewers(relay.key) > 0
                    )
                    if relay.used or held:
                        # A request held for its part (a blocking reload) is a viewer too.
                        relay.used = False
                        relay.last_used = now
                    elif now - relay.last_used >= self.config.idle_timeout:
                        log.info(
                            "%s no viewer for %.0f s (relay.idle_timeout): stopping",
                            relay.prefix,
                            self.config.idle_timeout,
                        )
                        self.stop(relay, "idle", end=True, remove=True)
                except Exception:
                    log.exception("%s idle check failed", relay.prefix)

    def changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("[relay] change listener failed")

    def release(self, key: StreamKey) -> None:
        """A publisher is taking ``key`` on this node: the relay of it stops and frees
        the local stream, so the publish starts a stream of its own."""
        relay = self.relays.get(key)
        if relay is not None:
            log.info("%s published here now: relay stopped", relay.prefix)
            self.stop(relay, "published", end=True, remove=True)

    def drop(self, relay: RelayedStream, reason: str) -> None:
        """A relay that never started: forget it (waiting requests get None)."""
        relay.closed = True
        relay.ready.set()
        if self.relays.get(relay.key) is relay:
            del self.relays[relay.key]
        self.metrics.stopped.labels(reason).inc()

    def stop(self, relay: RelayedStream, reason: str, *, end: bool, remove: bool) -> None:
        if self.relays.get(relay.key) is relay:
            del self.relays[relay.key]
        stream = relay.stream
        if stream is not None:
            self.by_stream.pop(stream, None)
            self.changed()
            stream.publisher_connected = False
            if end:
                stream.end(time.time())
            if remove and self.store.get(relay.key.tenant, relay.key.stream) is stream:
                self.store.remove(relay.key)
        self.credentials.forget(relay.key.tenant, relay.key.stream)
        self.metrics.stopped.labels(reason).inc()
        self.metrics.active.set(len(self.relays))
        task = asyncio.create_task(relay.close(), name=f"relay-close-{relay.key}")
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle
            self._idle = None
        relays = list(self.relays.values())
        for relay in relays:
            self.stop(relay, "stopped", end=True, remove=False)
        await asyncio.gather(*(r.close() for r in relays), return_exceptions=True)
        for client in (self.client, self.placement_client):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
