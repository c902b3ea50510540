"""uvicorn's httptools protocol with a fast path for media hits.

Every ASGI request costs uvicorn a scope dict, a request/response cycle object,
an asyncio task and a regex check of every response header: about three times
what the media lookup itself costs. A playlist, part or segment that exists
right now (the bulk of LL-HLS traffic) needs none of that: this protocol asks
:meth:`MediaApp.fast` at the end of the request headers and, on a hit, writes
the status line, uvicorn's own Date/Server headers, the pre-built header block
and the body straight to the transport. Everything else (a blocking reload that
must wait, Range, HEAD, OPTIONS, errors, the control API) goes down the normal
ASGI path, to the same :class:`MediaApp`, unchanged.

Keep-alive, pipelining and flow control stay uvicorn's: a fast response
completes its cycle through ``on_response_complete`` like any other.

Most of what is left is the parser's callbacks and the lookup, and most media
requests are bytes the node has read before: every viewer of a class asks for the
same part, with the same headers, within a few milliseconds. So a read that is one
whole request head and nothing else (:func:`whole_request`), answered by the fast
path, is remembered the second time it comes, and read again where a request may
begin it is answered from that memo without parsing it or looking anything up:
:meth:`MediaApp.replay` only checks that the answer is still the store's (the same
playlist bytes, part, segment or init segment; the stream neither ended nor
replaced; the tenant still needs no token) and counts the request as :meth:`fast`
would (``hls_requests_total``, the viewer estimate, the part-delivery histogram,
the relay's use). That takes the fast path's own CPU per hit from about 5 us to
about 1 us (``python -m bench.fastpath``). A memo that no longer holds is dropped
and the request parsed as before; requests with tokens are never remembered.

Every request on the port passes through this protocol, so the limits of the
``http:`` section live here, for the media path and the ASGI routes alike
(nginx's answers, then the connection is closed):

- a URL longer than ``max_url_bytes``: 414; more than ``max_headers`` header
  lines or ``max_header_bytes`` of them: 431 (checked as the bytes arrive, so a
  4 MiB header line is never buffered whole);
- a request line and headers not complete ``header_timeout`` seconds after the
  connection or the request's first byte (slowloris), or a request body with
  no byte for that long (slow POST): 408 (a keep-alive connection between
  requests is uvicorn's ``timeout_keep_alive``);
- a Content-Length over ``max_body_bytes``: 413 before a byte of the body is
  read (but a GET's, which nothing reads, is only cut at the cap: no header scan
  per media hit); a streamed body is cut at that size. A route that answers
  before its body is in (WHIP's smaller ``max_offer_bytes``) leaves the rest
  to be read and dropped, as uvicorn does, up to that size;
- a response that makes no progress for ``write_timeout`` seconds because the
  client stopped reading: the connection is dropped and its buffers freed;
- ``limit_concurrency`` connections or requests in progress: 503.

The two timeouts cost no timer per request: one timer per server, re-armed
while connections exist, sweeps them (STYLE: the adapter re-arms a single
timer); a request only stores the sweep's clock reading. What the limits add
to a media hit is a few integer checks (under a microsecond on the ~8 us the
protocol spends per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from distribute.config import HttpConfig
from distribute.http import Hold, MediaApp, Memo
from distribute.responses import TIMED_OUT, header_lines

log = logging.getLogger(__name__)

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools missing: uvicorn's h11 protocol, no fast path
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

STATUS_200 = b"HTTP/1.1 200 OK\r\n"
SEND_BUFFER = 4 * 1024 * 1024
STATUS_404 = b"HTTP/1.1 404 Not Found\r\n"
STATUS_503 = b"HTTP/1.1 503 Service Unavailable\r\n"
STATUS_408 = b"HTTP/1.1 408 Request Timeout\r\n"
STATUS_413 = b"HTTP/1.1 413 Content Too Large\r\n"
STATUS_414 = b"HTTP/1.1 414 URI Too Long\r\n"
STATUS_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
# Slack over max_header_bytes for the request line's method and version, when a request
# head is measured in raw bytes received.
HEAD_SLACK = 64
# The memo of answered requests (see whole_request): a request read a second time is
# remembered. At most this many (and as many read once), keyed by request heads of at
# most MEMO_HEAD_BYTES, holding at most MEMO_BODY_BYTES of bodies (shared with the store
# while it keeps them); when full, it starts again empty.
MEMO_ENTRIES = 4096
MEMO_HEAD_BYTES = 4096
MEMO_BODY_BYTES = 64 * 1024 * 1024
_BODY_HEADERS = (b"content-length", b"transfer-encoding")
# One write (one send syscall) per response: a body up to this size is copied behind
# the head, a larger one (a part is tens of KiB) goes out as one vectored write,
# without a copy of the body in user space.
SMALL_BODY = 16384


def _head(status: bytes, date: bytes, block: bytes, body: bytes) -> bytes:
    """A response's status line and headers, for a body sent with a Content-Length."""
    return b"".join((status, date, block, b"content-length: %d\r\n\r\n" % len(body)))


def whole_request(raw: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """Is ``raw``, one read from a socket, exactly one request head and nothing else,
    with every line ended by CRLF and no body to follow? ``headers`` are that request's,
    as the parser gave them (names lower-case). Then the same bytes, read again where a
    request may begin, are the same request: the fast path may answer them from its memo
    without the parser (pure; the property tests hold it to httptools)."""
    end = len(raw) - 4
    if (
        end < 14  # "GET / HTTP/1.1"
        or raw.find(b"\r\n\r\n") != end
        or raw.count(b"\n") != raw.count(b"\r\n")
        or raw.count(b"\r") != raw.count(b"\r\n")
    ):
        return False
    return not any(k in _BODY_HEADERS for k, _ in headers)


class _Refused(Exception):
    """Raised in a parser callback after a refusal is written: stops the parser."""


class _NoEvent:
    def set(self) -> None:
        pass


class _Answered:
    """The cycle of a request the fast path answered: complete, nothing to wait for."""

    response_complete = True
    response_started = True
    disconnected = False
    keep_alive = True
    message_event = _NoEvent()


_ANSWERED = _Answered()


class _Held:
    """The cycle of a request waiting in a rendition's waiter list."""

    # keep_alive is written by uvicorn's shutdown() on a connection still waiting.
    __slots__ = ("response_complete", "more_body", "body", "disconnected", "keep_alive")
    response_started = False
    message_event = _NoEvent()

    def __init__(self) -> None:
        self.response_complete = False
        self.disconnected = False
        self.more_body = True
        self.body = bytearray()
        self.keep_alive = True


def media_protocol(
    media: MediaApp, limits: HttpConfig | None = None
) -> type[asyncio.Protocol] | str:
    """The protocol class to give ``uvicorn.Config(http=...)`` for a node serving ``media``,
    enforcing ``limits`` (the ``http:`` section) on every request."""
    if HttpToolsProtocol is None:
        return "auto"
    cfg = limits or HttpConfig()
    max_url = cfg.max_url_bytes
    max_header_bytes = cfg.max_header_bytes
    max_headers = cfg.max_headers
    max_body = cfg.max_body_bytes
    # A request head in raw bytes, less its URL: the headers and their ": " and CRLFs.
    max_head = max_header_bytes + HEAD_SLACK + 4 * max_headers
    header_timeout = cfg.header_timeout
    write_timeout = cfg.write_timeout
    # Timeouts are checked this often: a quarter of the shorter one, at most once a second.
    period = max(0.05, min(1.0, header_timeout / 4, write_timeout / 4, cfg.keep_alive_timeout / 4))
    late_head = header_timeout + period
    limit = cfg.limit_concurrency
    rejected = media.metrics.rejected

    error_block = (
        b"content-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n"
        + header_lines(media.respond.cors)
    )
    refusal_block = error_block + b"connection: close\r\n"
    too_long = f"the request URL is longer than {max_url} bytes (http.max_url_bytes)\n".encode()
    too_many = f"more than {max_headers} request headers (http.max_headers)\n".encode()
    too_big = (
        f"the request headers are larger than {max_header_bytes} bytes (http.max_header_bytes)\n"
    ).encode()
    too_slow = (
        f"the request headers did not arrive within {header_timeout:g} s (http.header_timeout)\n"
    ).encode()
    too_slow_body = (
        f"no request body byte arrived for {header_timeout:g} s (http.header_timeout)\n"
    ).encode()
    too_large = (
        f"the request body is larger than {max_body} bytes (http.max_body_bytes)\n"
    ).encode()
    busy = b"too many connections, try again later (http.limit_concurrency)\n"
    # Request bytes the fast path answered -> what it answered (see whole_request), and
    # the request bytes it has read once.
    memos: dict[bytes, Memo] = {}
    seen: dict[bytes, None] = {}

    class MediaHttpProtocol(HttpToolsProtocol):
        # The memo, for tests and benchmarks to look at (the methods use the closure's).
        memo = memos
        _date_src: Any = None
        _date_block = b""
        url = b""  # uvicorn sets it from the first request on
        # Every open connection, for the sweep; the sweep's timer and clock reading.
        _live: set[MediaHttpProtocol] = set()
        _sweeper: asyncio.TimerHandle | None = None
        _now = 0.0
        # Per connection: reading a request head since _head_since (0: not reading one),
        # _head_bytes received while reading it (whole reads: it may include a body); body
        # bytes of the current request and when the last came (0: none expected); the
        # write buffer size and when it last changed.
        _in_head = True
        # Between requests (False) or within one, as the parser saw it; the read being fed.
        _mid = False
        _raw = b""
        # Bytes of bodies the memo holds.
        _memo_bytes = 0
        _head_since = 0.0
        _head_bytes = 0
        _body_bytes = 0
        _body_since = 0.0
        _stall_size = 0
        _stall_since = 0.0
        # Since when the connection waits for its next request (0: it is not waiting):
        # the sweep applies the keep-alive timeout, not a timer armed per response.
        _idle_since = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # A whole segment fits the kernel's send buffer: one send() per
                # response instead of the event loop refilling a small buffer.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            cls = type(self)
            if cls._sweeper is None:
                cls._now = self.loop.time()
                cls._sweeper = self.loop.call_later(period, cls._sweep, self.loop)
            self._head_since = cls._now
            cls._live.add(self)

        def connection_lost(self, exc: Exception | None) -> None:
            type(self)._live.discard(self)
            super().connection_lost(exc)

        @classmethod
        def _sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
            """Close connections past the header timeout or the write timeout."""
            now = cls._now = loop.time()
            for conn in list(cls._live):
                transport = conn.transport
                since = conn._head_since
                # ``since`` is a sweep's reading, up to a period before the head began: a
                # client gets at least header_timeout, at most 1.5 times that.
                if since and now - since >= late_head and not transport.is_closing():
                    conn._refuse(STATUS_408, too_slow, "header_timeout")
                    continue
                since = conn._body_since
                if (
                    since
                    and now - since >= late_head
                    and not conn.flow.read_paused  # the app, not the client, is behind
                    and not transport.is_closing()
                ):
                    conn._refuse(STATUS_408, too_slow_body, "body_timeout")
                    continue
                since = conn._idle_since
                if since and now - since >= conn.timeout_keep_alive:
                    if not transport.is_closing():
                        transport.close()
                    continue
                # A closing transport still waits to flush its buffer: checked too.
                size = transport.get_write_buffer_size()
                if not size:
                    conn._stall_size = 0
                elif size != conn._stall_size:
                    conn._stall_size, conn._stall_since = size, now
                elif now - conn._stall_since >= write_timeout:
                    rejected["write_timeout"] += 1
                    log.info(
                        "HTTP client %s read nothing for %g s; dropped with %d bytes unsent",
                        conn.client,
                        write_timeout,
                        size,
                    )
                    transport.abort()
            cls._sweeper = loop.call_later(period, cls._sweep, loop) if cls._live else None

        def _refuse(self, status: bytes, body: bytes, reason: str) -> None:
            """Answer ``status`` (unless a response is under way) and close the connection."""
            rejected[reason] += 1
            in_body = self._body_since
            self._head_since = self._body_since = 0.0
            cycle = self.cycle
            if in_body and cycle is not None and cycle.response_complete:
                # A body still coming after its request was answered (a route refused it
                # on its own, smaller limit): no second answer, the connection just ends.
                self.transport.close()
                return
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the app's receive() sees the disconnect
                cycle.message_event.set()
                if cycle.response_started:
                    self.transport.close()
                    return
            self._write(status, refusal_block, body, False)
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            memo = memos.get(data)
            if memo is not None and self._replay(memo, data):
                return
            self._raw = data
            if self._in_head:
                self._head_bytes += len(data)
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError:
                if self.transport.is_closing():
                    return  # refused in a callback (_Refused): answered already
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
                return
            # httptools buffers a header line until it ends: bound what a head may take
            # (a 4 MiB header line arrives as several reads, each counted here).
            n = self._head_bytes
            if n > max_head and self._in_head and n - len(self.url) > max_head:
                if not self.transport.is_closing():
                    self._refuse(STATUS_431, too_big, "headers")

        def _replay(self, memo: Memo, data: bytes) -> bool:
            """Answer ``data``, a request the fast path answered before, from its memo:
            where a new request may begin, and while the memo's answer still holds."""
            cycle = self.cycle
            if (
                self._mid
                or (cycle is not None and not cycle.response_complete)
                or self.pipeline
                or self.flow.write_paused
                or self.transport.is_closing()
                or self._busy()
            ):
                return False
            try:
                again = media.replay(memo, self.client)
            except Exception:
                log.exception("media fast path failed; answering through ASGI")
                again = False
            if not again:
                memos.pop(data, None)
                return False
            self._head_since = 0.0
            body = memo.body
            if memo.wired is not self.server_state.default_headers:
                # uvicorn renews its Date header once a second: the response's bytes with it.
                head = _head(STATUS_200, self._date(), memo.block, body)
                memo.wire = head + body if len(body) <= SMALL_BODY else head
                memo.wired = self.server_state.default_headers
            if len(body) <= SMALL_BODY:
                self.transport.write(memo.wire)
            else:
                self.transport.writelines((memo.wire, body))
            # on_response_complete, less what the checks above rule out.
            self.cycle = _ANSWERED  # type: ignore[assignment]
            self.server_state.total_requests += 1
            self._idle_since = self._now
            return True

        def _remember(self, raw: bytes, memo: Memo) -> None:
            cls = type(self)
            size = len(memo.body)
            if len(memos) >= MEMO_ENTRIES or cls._memo_bytes + size > MEMO_BODY_BYTES:
                memos.clear()
                cls._memo_bytes = 0
            memos[raw] = memo
            cls._memo_bytes += size

        def on_message_begin(self) -> None:
            self._mid = True
            # uvicorn's, less its ASGI scope: only a request the fast path leaves to the
            # app needs one (_asgi builds it), and most requests are media hits.
            self.url = b""
            self.expect_100_continue = False
            self.headers = []
            self._body_bytes = 0
            self._idle_since = 0.0
            if not self._head_since:
                self._head_since = self._now

        def _asgi(self) -> None:
            """Hand the request to uvicorn's ASGI cycle, with the scope it would have built."""
            self.scope = {  # type: ignore[typeddict-item]
                "type": "http",
                "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
                "http_version": "1.1",
                "server": self.server,
                "client": self.client,
                "scheme": self.scheme,  # type: ignore[typeddict-item]
                "root_path": self.root_path,
                "headers": self.headers,
                "state": self.app_state.copy(),
            }
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            # uvicorn's, less the keep-alive timer it arms per response: the sweep
            # closes a connection idle for timeout_keep_alive (within a sweep period).
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self._unset_keepalive_if_required()
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._idle_since = self._now

        def on_url(self, url: bytes) -> None:
            self.url += url
            if len(self.url) > max_url:
                self._refuse(STATUS_414, too_long, "url")
                raise _Refused

        def on_header(self, name: bytes, value: bytes) -> None:
            headers = self.headers
            if len(headers) >= max_headers:
                self._refuse(STATUS_431, too_many, "headers")
                raise _Refused
            name = name.lower()
            if name == b"expect" and value.lower() == b"100-continue":
                self.expect_100_continue = True
            headers.append((name, value))

        def on_body(self, body: bytes) -> None:
            self._body_since = self._now
            n = self._body_bytes = self._body_bytes + len(body)
            if n > max_body:
                self._refuse(STATUS_413, too_large, "body")
                raise _Refused
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._mid = False
            self._in_head = True
            self._head_bytes = 0
            self._body_since = 0.0
            # uvicorn's, inlined (this runs for every request), in its order: an upgrade
            # has no cycle.
            if self.parser.should_upgrade() and self._should_upgrade():
                return
            cycle = self.cycle
            if cycle.response_complete:
                return
            cycle.more_body = False
            cycle.message_event.set()

        def on_headers_complete(self) -> None:
            if self._head_bytes - len(self.url) > max_head:
                # Only a head that came in large reads can be over: measured exactly.
                if sum(len(k) + len(v) for k, v in self.headers) > max_header_bytes:
                    self._refuse(STATUS_431, too_big, "headers")
                    raise _Refused
            raw = self._raw
            # The head began with this read: nothing before it in the read, no part of it
            # in an earlier one.
            whole = self._head_bytes == len(raw) <= MEMO_HEAD_BYTES
            self._in_head = False
            self._head_since = 0.0
            self._head_bytes = 0
            # uvicorn's own check (limit_concurrency), made before the fast path too.
            if self._busy():
                self._refuse(STATUS_503, busy, "concurrency")
                raise _Refused
            parser = self.parser
            method = parser.get_method()
            if method != b"GET":
                # Refused on its Content-Length: not a byte of the body is read. (A GET's
                # body, which nothing reads, is only cut at the cap: no scan per media hit.)
                for k, v in self.headers:
                    if k == b"content-length" and (len(v) > 18 or int(v or b"0") > max_body):
                        self._refuse(STATUS_413, too_large, "body")
                        raise _Refused
                # Its body may follow: timed from now (on_message_complete clears it).
                self._body_since = self._now
            cycle = self.cycle
            if (
                (cycle is None or cycle.response_complete)
                and not self.pipeline
                and method == b"GET"
                and parser.get_http_version() == "1.1"
                and parser.should_keep_alive()
                and not parser.should_upgrade()
                and not self.flow.write_paused
            ):
                kept: list[Memo] | None = None
                if whole:
                    if raw in seen:  # asked before: worth a memo, if answered now
                        kept = []
                    else:  # most requests a player makes once are never asked again
                        if len(seen) >= MEMO_ENTRIES:
                            seen.clear()
                        seen[raw] = None
                try:
                    hit = media.fast(self.url, self.headers, self.client, kept)
                except Exception:
                    log.exception("media fast path failed; answering through ASGI")
                    hit = None
                if type(hit) is tuple:
                    if kept and whole_request(raw, self.headers):
                        self._remember(raw, kept[0])
                    self._write(STATUS_200, hit[0], hit[1], False)
                    self.cycle = _ANSWERED  # type: ignore[assignment]
                    self.on_response_complete()
                    return
                if hit is not None:
                    self._hold(hit)  # type: ignore[arg-type]
                    return
            self._asgi()

        def _busy(self) -> bool:
            """uvicorn's ``limit_concurrency`` check: connections or requests at the limit."""
            return bool(limit) and (len(self.connections) >= limit or len(self.tasks) >= limit)

        def _date(self) -> bytes:
            """uvicorn's Date and Server headers as header lines, made once per second."""
            defaults = self.server_state.default_headers
            cls = type(self)
            if defaults is not cls._date_src:
                cls._date_src = defaults
                cls._date_block = header_lines(defaults)
            return cls._date_block

        def _write(self, status: bytes, block: bytes, body: bytes, chunked: bool) -> None:
            date = self._date()
            if chunked:
                # Sent the moment it exists, as it is produced: chunked transfer.
                head = b"".join((status, date, block, b"transfer-encoding: chunked\r\n\r\n"))
                self.transport.writelines((head, b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n"))
                return
            head = _head(status, date, block, body)
            if len(body) <= SMALL_BODY:
                self.transport.write(head + body)
            else:
                self.transport.writelines((head, body))

        def _hold(self, hold: Hold) -> None:
            """Wait in the rendition's waiter list: no task, answered from the store's notify."""
            cycle = _Held()
            self.cycle = cycle  # type: ignore[assignment]
            metrics = media.metrics
            metrics.held.inc()
            transport = self.transport
            timer: asyncio.TimerHandle | None = None

            def release() -> None:
                metrics.held.dec()
                if timer is not None:
                    timer.cancel()

            def finish() -> None:
                cycle.response_complete = True
                if not transport.is_closing():
                    self.on_response_complete()

            def fire() -> bool:
                if transport.is_closing():
                    metrics.held.dec()
                    if timer is not None:
                        timer.cancel()
                    return True
                if not hold.ready():
                    return False
                release()
                got = hold.answer()
                if got is None:
                    line, body = STATUS_404, hold.missing
                    self._write(line, error_block, body, False)
                    metrics.count(hold.kind, 404)
                else:
                    self._write(STATUS_200, got[0], got[1], hold.chunked)
                    metrics.count(hold.kind, 200)
                    metrics.sent += len(got[1])
                finish()
                return True

            def expire() -> None:
                nonlocal timer
                timer = None
                try:
                    hold.track.waiters.remove(fire)
                except ValueError:
                    return  # answered meanwhile
                release()
                if transport.is_closing():
                    return
                line, body = STATUS_503, TIMED_OUT
                self._write(line, error_block, body, False)
                metrics.count(hold.kind, 503)
                finish()

            if fire():
                return
            hold.track.waiters.append(fire)
            timer = self.loop.call_later(hold.timeout, expire)

    return MediaHttpProtocol
