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
from typing import Any

from distribute.http import MediaApp

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools missing: uvicorn's h11 protocol, no fast path
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

STATUS_200 = b"HTTP/1.1 200 OK\r\n"


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


def media_protocol(media: MediaApp) -> type[asyncio.Protocol] | str:
    """The protocol class to give ``uvicorn.Config(http=...)`` for a node serving ``media``."""
    if HttpToolsProtocol is None:
        return "auto"

    class MediaHttpProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        _date_src: Any = None
        _date_block = b""

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
                hit = media.fast(self.url, self.headers)
                if hit is not None:
                    block, body, _status = hit
                    defaults = self.server_state.default_headers
                    cls = type(self)
                    if defaults is not cls._date_src:
                        cls._date_src = defaults
                        cls._date_block = b"".join(k + b": " + v + b"\r\n" for k, v in defaults)
                    head = b"".join(
                        (STATUS_200, cls._date_block, block, b"content-length: %d\r\n\r\n" % len(body))
                    )
                    # One write (one send syscall) per response: small bodies are
                    # copied behind the head, large ones go out as one vectored write.
                    if len(body) <= 65536:
                        self.transport.write(head + body)
                    else:
                        self.transport.writelines((head, body))
                    self.cycle = _ANSWERED
                    self.on_response_complete()
                    return
            super().on_headers_complete()

    return MediaHttpProtocol
