"""A real uvicorn serving :class:`MediaApp` over a store the test feeds, in a thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import uvicorn
from prometheus_client import CollectorRegistry

from bench.cmaf import cmaf
from distribute.access import PlaybackGuard, PlaybackMetrics, TokenCheck
from distribute.api import find_hlsjs
from distribute.config import HlsConfig, HttpConfig
from distribute.fastpath import media_protocol
from distribute.hls.store import SEQUENCE_EPOCH, Store
from distribute.hls.stream import LiveStream
from distribute.http import MediaApp
from distribute.media_metrics import MediaMetrics
from media import StreamKey
from media.segments import InitFrame, PartFrame, SegmentFrame

T = TypeVar("T")

INFO = {
    "source": {"width": 640, "height": 360, "fps": 30.0},
    "audio": True,
    "renditions": [
        {
            "name": n,
            "width": w,
            "height": h,
            "fps": 30.0,
            "video_bitrate": b,
            "maxrate": b,
            "audio_bitrate": 128000,
        }
        for n, w, h, b in (("360p", 640, 360, 700_000), ("180p", 320, 180, 200_000))
    ],
}


async def _static(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Fallback app: hls.js and test pages registered in ``PAGES``; 404 otherwise."""
    path = scope.get("path", "")
    body, ctype, status = b"not found\n", b"text/plain", 404
    if path == "/static/hls.min.js":
        js = find_hlsjs()
        if js is not None:
            body, ctype, status = js.read_bytes(), b"text/javascript", 200
    elif path in PAGES:
        body, ctype, status = PAGES[path], b"text/html", 200
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


PAGES: dict[str, bytes] = {}


# The LL-HLS settings the store/HTTP tests serve bench.cmaf's 1/3 s parts with, with a
# 3-part lead at the start of each run (hls.lead_parts, off in a node by default).
LL_HLS = HlsConfig(
    segment_format="fmp4",
    low_latency=True,
    part_duration=0.334,
    segment_duration=2.0,
    lead_parts=3,
)


class MediaServer:
    """``tokens`` wires playback tokens as a node does: the media app's fast path
    checks them, and a :class:`PlaybackGuard` (counted in ``guarded``) takes the rest."""

    def __init__(
        self,
        config: HlsConfig,
        vod: Any = None,
        tokens: TokenCheck | None = None,
        http: HttpConfig | None = None,
    ) -> None:
        self.store = Store(config)
        registry = CollectorRegistry()
        self.metrics = MediaMetrics(registry)
        self.app = MediaApp(self.store, _static, self.metrics, "*", vod=vod)
        self.guarded = 0
        asgi: Any = self.app
        if tokens is not None:
            self.app.tokens = tokens
            guard = PlaybackGuard(self.app, tokens, PlaybackMetrics(registry))

            async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
                self.guarded += 1
                await guard(scope, receive, send)

            asgi = counted
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                asgi,
                http=media_protocol(self.app, http),
                timeout_keep_alive=http.keep_alive_timeout if http else 5,
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        self.loop = asyncio.new_event_loop()
        self._sock = sock
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(sockets=[self._sock]))

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop (where the store lives) and return its result."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def open(self, name: str = "s", tenant: str = "live") -> LiveStream:
        def make() -> LiveStream:
            # Opened at the sequence epoch: numbered from 0, for readable URLs in tests.
            s = self.store.open(StreamKey(tenant, name), now=SEQUENCE_EPOCH)
            s.begin_generation()
            s.set_renditions(INFO)
            return s

        return self.call(make)

    def held(self) -> float:
        return self.metrics.held._value.get()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self._sock.close()


def feed_init(srv: MediaServer, s: LiveStream) -> None:
    for name in s.renditions:
        srv.call(lambda n=name: s.add_init(InitFrame(n, cmaf().codecs, cmaf().init)))


def feed_part(
    srv: MediaServer,
    s: LiveStream,
    index: int,
    part: int,
    names: tuple[str, ...] = ("360p", "180p"),
) -> None:
    f = cmaf().segments[index % len(cmaf().segments)][part]
    for n in names:
        srv.call(
            lambda n=n: s.add_part(
                PartFrame(n, index, part, f.start, f.duration, f.independent, f.data)
            )
        )


def feed_segment(
    srv: MediaServer, s: LiveStream, index: int, names: tuple[str, ...] = ("360p", "180p")
) -> None:
    frags = cmaf().segments[index % len(cmaf().segments)]
    for p in range(len(frags)):
        feed_part(srv, s, index, p, names)
    data = b"".join(f.data for f in frags)
    dur = sum(f.duration for f in frags)
    for n in names:
        srv.call(
            lambda n=n: s.add_segment(
                SegmentFrame(n, index, frags[0].start, dur, cmaf().codecs, data)
            )
        )
