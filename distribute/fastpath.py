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

Keep-alive, pipelining, flow control and timeouts stay uvicorn's: a fast
response completes its cycle through ``on_response_complete`` like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from distribute.http import Hold, MediaApp
from distribute.responses import TIMED_OUT, header_lines

log = logging.getLogger(__name__)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools missing: uvicorn's h11 protocol, no fast path
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

STATUS_200 = b"HTTP/1.1 200 OK\r\n"
SEND_BUFFER = 4 * 1024 * 1024
STATUS_404 = b"HTTP/1.1 404 Not Found\r\n"
STATUS_503 = b"HTTP/1.1 503 Service Unavailable\r\n"


class _NoEvent:
    def set(self) -> None:
        pass


class _Answered:
    """The cycle of a request the fast path answered: complete, nothing to wait for."""

    response_complete = True
    disconnected = False
    keep_alive = True
    message_event = _NoEvent()


_ANSWERED = _Answered()


class _Held:
    """The cycle of a request waiting in a rendition's waiter list."""

    __slots__ = ("response_complete", "more_body", "body", "disconnected")
    keep_alive = True
    message_event = _NoEvent()

    def __init__(self) -> None:
        self.response_complete = False
        self.disconnected = False
        self.more_body = True
        self.body = bytearray()


def media_protocol(media: MediaApp) -> type[asyncio.Protocol] | str:
    """The protocol class to give ``uvicorn.Config(http=...)`` for a node serving ``media``."""
    if HttpToolsProtocol is None:
        return "auto"

    error_block = (
        b"content-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n"
        + header_lines(media.respond.cors)
    )

    class MediaHttpProtocol(HttpToolsProtocol):
        _date_src: Any = None
        _date_block = b""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # A whole segment fits the kernel's send buffer: one send() per
                # response instead of the event loop refilling a small buffer.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

        def on_headers_complete(self) -> None:
            parser = self.parser
            cycle = self.cycle
            if (
                (cycle is None or cycle.response_complete)
                and not self.pipeline
                and parser.get_method() == b"GET"
                and parser.get_http_version() == "1.1"
                and parser.should_keep_alive()
                and not parser.should_upgrade()
                and not self.flow.write_paused
            ):
                try:
                    hit = media.fast(self.url, self.headers)
                except Exception:
                    log.exception("media fast path failed; answering through ASGI")
                    hit = None
                if type(hit) is tuple:
                    self._write(STATUS_200, hit[0], hit[1], False)
                    self.cycle = _ANSWERED  # type: ignore[assignment]
                    self.on_response_complete()
                    return
                if hit is not None:
                    self._hold(hit)  # type: ignore[arg-type]
                    return
            super().on_headers_complete()

        def _write(self, status: bytes, block: bytes, body: bytes, chunked: bool) -> None:
            defaults = self.server_state.default_headers
            cls = type(self)
            if defaults is not cls._date_src:
                cls._date_src = defaults
                cls._date_block = header_lines(defaults)
            if chunked:
                # Sent the moment it exists, as it is produced: chunked transfer.
                head = b"".join(
                    (status, cls._date_block, block, b"transfer-encoding: chunked\r\n\r\n")
                )
                self.transport.writelines((head, b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n"))
                return
            head = b"".join(
                (status, cls._date_block, block, b"content-length: %d\r\n\r\n" % len(body))
            )
            # One write (one send syscall) per response: small bodies are copied
            # behind the head, large ones go out as one vectored write.
            if len(body) <= 65536:
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
