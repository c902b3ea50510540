"""The WebRTC tap pulled as CMAF, end to end on one node.

RTMP publish (``publish --clock``) -> worker TAP packets -> the node's hidden
``webrtc`` LL-HLS rendition -> fetched over HTTP here (init, then parts through
blocking playlist reloads, as a relay pulls it) -> :class:`CmafWhepSource` -> a
second :class:`WhepServer` in this process -> an aiortc WHEP viewer, which must
decode video and audio and read the publisher's clock stamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from nodeutil import SMALL, Publisher, segment_numbers

from distribute.whep.cmaf_source import TAP_RENDITION, CmafWhepSource
from distribute.whep.config import WebRtcConfig
from distribute.whep.http import whep_router
from distribute.whep.server import WhepServer
from media import StreamKey
from nearcast.config import load
from nearcast.node import Node
from nearcast.whep_probe import probe_whep

KEY = StreamKey("live", "relayed")
LADDER = "[{name: 240p, width: 426, height: 240, video_bitrate: 400000}]"
_PART = re.compile(r'#EXT-X-PART:.*URI="([^"]+)"(.*)')
_HINT = re.compile(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="(\d+)\.(\d+)\.m4s"')
_MAP = re.compile(r'#EXT-X-MAP:URI="([^"]+)"')
# tests/e2e/test_whep_e2e.py's bound for the origin's own WHEP viewers, plus a second.
E2E_P50_BOUND_MS = 3500


@pytest.fixture
async def origin() -> AsyncIterator[Node]:
    config = load(
        environ={
            "NEARCAST_RTMP_LISTEN": "127.0.0.1:0",
            "NEARCAST_HTTP_LISTEN": "127.0.0.1:0",
            "NEARCAST_TRANSCODE_CAPACITY_UNITS": "8",
            "NEARCAST_TRANSCODE_LADDER": LADDER,
            "NEARCAST_WEBRTC_RENDITION": "240p",
            "NEARCAST_HLS_SEGMENT_DURATION": "1",
        }
    )
    node = Node(config)
    await node.start()
    publisher = Publisher(SMALL, f"rtmp://127.0.0.1:{node.rtmp_port}/{KEY}", clock=True)
    try:
        yield node
    finally:
        publisher.stop()
        await node.stop()


@pytest.fixture
async def relay_whep() -> AsyncIterator[tuple[WhepServer, str]]:
    """A second WHEP server, as a relay node would run one, behind real HTTP."""
    server = WhepServer(WebRtcConfig())
    app = FastAPI()
    app.include_router(whep_router(server))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    http = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(http.serve(sockets=[sock]))
    try:
        yield server, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await server.close()
        http.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        sock.close()


async def _pull(client: httpx.AsyncClient, source: CmafWhepSource, stop: asyncio.Event) -> None:
    """An LL-HLS pull of the webrtc rendition from its newest independent part on."""
    base = f"/{KEY}/{TAP_RENDITION}/"
    fed: str | None = None
    query = ""
    while not stop.is_set():
        r = await client.get(base + "index.m3u8" + query)
        assert r.status_code == 200, r.text
        text = r.text
        parts = [(m.group(1), "INDEPENDENT=YES" in m.group(2)) for m in _PART.finditer(text)]
        uris = [u for u, _ in parts]
        if fed is None:
            start = max(i for i, (_, independent) in enumerate(parts) if independent)
            maps = _MAP.findall(text)
            source.init((await client.get(base + maps[-1])).content)
        else:
            start = uris.index(fed) + 1
        for uri in uris[start:]:
            part = await client.get(base + uri)
            assert part.status_code == 200, uri
            source.fragment(part.content)
            fed = uri
        hint = _HINT.search(text)
        assert hint is not None, text
        query = f"?_HLS_msn={hint.group(1)}&_HLS_part={hint.group(2)}"


async def test_aiortc_viewer_decodes_the_tap_pulled_as_cmaf(
    origin: Node, relay_whep: tuple[WhepServer, str]
) -> None:
    server, url = relay_whep
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{origin.http_port}", timeout=10
    ) as client:

        async def listed() -> bool:
            r = await client.get(f"/{KEY}/{TAP_RENDITION}/index.m3u8")
            return r.status_code == 200 and "INDEPENDENT=YES" in r.text

        await wait_for_async(listed, 30, "the webrtc rendition's first independent part")
        master = (await client.get(f"/{KEY}/index.m3u8")).text
        assert "240p/index.m3u8" in master and TAP_RENDITION not in master
        source = CmafWhepSource(server, KEY)
        stop = asyncio.Event()
        pull = asyncio.create_task(_pull(client, source, stop))
        try:
            result = await probe_whep(f"{url}/{KEY}/whep", duration=3.0)
        finally:
            stop.set()
            pull.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pull
            source.close()
        # Segment numbers follow the tap rung's own (its IDRs are on the segment grid).
        tap_rung = segment_numbers((await client.get(f"/{KEY}/240p/index.m3u8")).text)
        relayed = segment_numbers((await client.get(f"/{KEY}/{TAP_RENDITION}/index.m3u8")).text)
    assert abs(tap_rung[-1] - relayed[-1]) <= 1 and len(set(tap_rung) & set(relayed)) >= 3
    s = result.summary()
    # The tap rung's own pictures, decoded, and the stream's Opus beside them. A viewer
    # starts at the next IDR (up to one 1 s segment), so 3 s hold at least 2 s of video.
    assert s["resolution"] == "426x240", s
    assert s["frames"] >= 30 and s["stalls"] == 0, s
    assert s["audio_frames"] >= 50 and s["audio_rate"] == 48000, s
    # Publisher's wall clock to the relayed picture: the origin's WHEP path plus one
    # LL-HLS part, the pull and the pacing (about one part); bounded for a loaded machine.
    assert s["stamped"] >= 0.9 * s["frames"], s
    assert 0 <= s["latency_p50_ms"] <= E2E_P50_BOUND_MS, s
    assert source.restarts == 0 and source.published > 100


async def wait_for_async(probe: Callable[[], Awaitable[bool]], limit: float, what: str) -> None:
    """Poll ``probe`` until it is true, or fail after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if await probe():
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}")
