"""The node's HTTP limits against hostile clients, on raw sockets.

One real node (small timeouts and a small ``limit_concurrency`` through
``NEARCAST_HTTP_*``) is attacked from loopback: an oversized URL (414), too many
or too large headers (431), 300 slowloris connections (408, closed after the
header timeout while ``/healthz`` keeps answering), a body that stops arriving
(408), 100 MB SDP bodies to WHIP and WHEP (413 without the node reading them),
more connections than the limit (503).
A viewer that stops reading a segment larger than every socket buffer is dropped
after the write timeout, on uvicorn serving the media app with the same protocol.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodeutil import NodeProcess, wait_for
from rawhttp import read_response
from servehelp import MediaServer

from distribute.config import HlsConfig, HttpConfig
from media.segments import SegmentFrame
from nearcast.config import ConfigError, load

HEADER_TIMEOUT = 1.0
LIMIT = 360  # over the 300 slowloris connections, plus the test's own client
HUNDRED_MB = 100_000_000


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(
        tmp_path_factory.mktemp("http-limits") / "node.log",
        NEARCAST_TRANSCODE_CAPACITY_UNITS="4",
        NEARCAST_HTTP_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        NEARCAST_HTTP_WRITE_TIMEOUT="1",
        NEARCAST_HTTP_LIMIT_CONCURRENCY=str(LIMIT),
    )
    yield n
    n.stop()


def connect(node: NodeProcess, timeout: float = 5) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", node.http_port), timeout=timeout)
    s.settimeout(timeout)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything the node sends until it closes the connection (a reset ends it too)."""
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def exchange(node: NodeProcess, request: bytes) -> bytes:
    """Send ``request`` (as far as the node takes it) and read the answer until close."""
    with connect(node) as s:
        try:
            s.sendall(request)
        except OSError:  # refused midway: the answer is already queued for us
            pass
        return read_all(s)


def rejected(node: NodeProcess, reason: str) -> float:
    return node.metric("http_rejected_total", reason=reason)


def rss(node: NodeProcess) -> int:
    """The node's resident memory in bytes."""
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def healthy(node: NodeProcess) -> None:
    r = node.get("/healthz")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "path",
    [
        "/live/s/180p/index.m3u8?x=" + "a" * 9000,  # the media fast path
        "/v1/streams?x=" + "a" * 9000,  # an ASGI route
        "/" + "a" * (4 * 1024 * 1024),  # 4 MiB, refused at the first 8 KiB
    ],
)
def test_an_oversized_url_gets_414(node: NodeProcess, path: str) -> None:
    before = rejected(node, "url")
    got = exchange(node, f"GET {path} HTTP/1.1\r\nHost: node\r\n\r\n".encode())
    assert got.startswith(b"HTTP/1.1 414 "), got[:200]
    assert b"http.max_url_bytes" in got
    assert rejected(node, "url") == before + 1
    healthy(node)


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (b"".join(b"x-h%d: v\r\n" % i for i in range(20_000)), b"http.max_headers"),
        (b"cookie: " + b"c" * 40_000 + b"\r\n\r\n", b"http.max_header_bytes"),
        (b"cookie: " + b"c" * 40_000 + b"\r\n", b"http.max_header_bytes"),  # incomplete
        # One 4 MiB line, never complete: refused while it streams in, not buffered whole.
        (b"x-big: " + b"v" * (4 * 1024 * 1024), b"http.max_header_bytes"),
    ],
    ids=["20000-headers", "40k-cookie", "40k-cookie-incomplete", "4MiB-line"],
)
def test_too_many_or_too_large_headers_get_431(
    node: NodeProcess, headers: bytes, why: bytes
) -> None:
    before = rejected(node, "headers")
    got = exchange(node, b"GET /live/s/180p/index.m3u8 HTTP/1.1\r\nHost: node\r\n" + headers)
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    assert why in got
    assert rejected(node, "headers") == before + 1
    healthy(node)


def test_slowloris_connections_are_closed_after_the_header_timeout(node: NodeProcess) -> None:
    """300 connections each send a partial request, then a byte of URL or a header line
    every 0.2 s:
    all get 408 and are closed after about the header timeout, and /healthz answers
    promptly throughout."""
    before = rejected(node, "header_timeout")
    socks = [connect(node) for _ in range(300)]
    for i, s in enumerate(socks):
        s.setblocking(False)
        # Half drip their URL, half their header lines.
        s.send(b"GET /healthz?a" if i % 2 else b"GET /healthz HTTP/1.1\r\nHost: n\r\n")
    start = time.monotonic()
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    answers: dict[socket.socket, bytes] = {s: b"" for s in socks}
    closed: set[socket.socket] = set()
    slowest = 0.0
    next_drip = start
    while len(closed) < len(socks) and time.monotonic() - start < 4 * HEADER_TIMEOUT + 3:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj  # type: ignore[assignment]
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                chunk = b""
            answers[s] += chunk
            if not chunk:
                sel.unregister(s)
                closed.add(s)
        now = time.monotonic()
        if now >= next_drip:
            next_drip = now + 0.2
            for i, s in enumerate(socks):
                if s not in closed:
                    try:
                        s.send(b"a" if i % 2 else b"x: y\r\n")
                    except OSError:
                        pass
            t0 = time.monotonic()
            healthy(node)
            slowest = max(slowest, time.monotonic() - t0)
    elapsed = time.monotonic() - start
    for s in socks:
        s.close()
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} slowloris connections left"
    assert elapsed < 3 * HEADER_TIMEOUT + 2
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers.values() if a)
    assert sum(1 for a in answers.values() if a.startswith(b"HTTP/1.1 408 ")) >= 250
    assert slowest < 1.0, f"/healthz took {slowest:.2f} s under slowloris"
    assert rejected(node, "header_timeout") >= before + len(socks)


def test_a_body_that_stops_arriving_gets_408(node: NodeProcess) -> None:
    """A slow POST: headers, a few bytes of the promised body, then nothing."""
    before = rejected(node, "body_timeout")
    with connect(node) as s:
        s.sendall(
            b"POST /live/s/whip HTTP/1.1\r\nHost: node\r\nContent-Type: application/sdp\r\n"
            b"Content-Length: 1000\r\n\r\nv=0\r\n"
        )
        start = time.monotonic()
        got = read_all(s)
        elapsed = time.monotonic() - start
    assert got.startswith(b"HTTP/1.1 408 "), got[:200]
    assert HEADER_TIMEOUT <= elapsed < 2 * HEADER_TIMEOUT + 1, elapsed
    assert rejected(node, "body_timeout") == before + 1
    healthy(node)


@pytest.mark.parametrize("path", ["/live/s/whip", "/live/s/whep"])
def test_a_100_mb_sdp_body_is_refused_with_413_unread(node: NodeProcess, path: str) -> None:
    """Refused on its Content-Length: the answer comes before a byte of the body is sent,
    and the node's memory does not grow while the client tries to send it anyway."""
    before_rss = rss(node)
    before = rejected(node, "body")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: node\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {HUNDRED_MB}\r\n\r\n"
    ).encode()
    with connect(node) as s:
        s.sendall(head)
        first = read_response(s)  # before any body byte
        assert first.startswith(b"HTTP/1.1 413 "), first[:200]
        assert b"http.max_body_bytes" in first
        sent = 0
        chunk = b"a=x\r\n" * 200_000  # 1 MB of SDP lines
        with pytest.raises(OSError):
            while sent < HUNDRED_MB:
                sent += s.send(chunk)
        assert sent < HUNDRED_MB // 4, f"the node took {sent} bytes of a refused body"
    assert rejected(node, "body") == before + 1
    assert rss(node) - before_rss < 16 * 1024 * 1024
    healthy(node)


@pytest.mark.parametrize(
    ("path", "why"),
    [("/live/s/whip", b"SDP offer is larger"), ("/live/s/whep", b"offer larger")],
)
def test_an_offer_over_the_route_limit_gets_the_routes_413_and_keep_alive(
    node: NodeProcess, path: str, why: bytes
) -> None:
    """Under http.max_body_bytes but over the route's own limit (64 KiB): the route
    answers 413 from Content-Length, the body is read and dropped, and the
    connection serves the next request."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: node\r\nContent-Type: application/sdp\r\n"
        "Content-Length: 500000\r\n\r\n"
    ).encode()
    with connect(node) as s:
        s.sendall(head)
        got = read_response(s)
        assert got.startswith(b"HTTP/1.1 413 "), got[:200]
        assert why in got
        s.sendall(b"a" * 500_000 + b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        got = read_response(s)
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b'{"status":"ok"}'), got


def test_a_body_past_the_cap_after_an_early_answer_ends_the_connection(
    node: NodeProcess,
) -> None:
    """The route answers (415) without reading; the chunked body goes on past
    http.max_body_bytes: no second answer, the connection just ends."""
    before = rejected(node, "body")
    piece = b"x" * 1_000_000
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    with connect(node) as s:
        s.sendall(
            b"POST /live/s/whip HTTP/1.1\r\nHost: node\r\nContent-Type: text/plain\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        with pytest.raises(OSError):
            while sent < HUNDRED_MB:
                sent += s.send(chunk)
        got = read_all(s)
    assert sent < HUNDRED_MB // 4
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", got) in ([b"415"], []), got[:300]
    assert rejected(node, "body") == before + 1


@pytest.mark.parametrize("path", ["/live/s/whip", "/live/s/whep"])
def test_a_100_mb_chunked_sdp_body_is_cut_at_the_cap(node: NodeProcess, path: str) -> None:
    """No Content-Length: the body streams in and is cut at http.max_body_bytes."""
    before_rss = rss(node)
    before = rejected(node, "body")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: node\r\nContent-Type: application/sdp\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"a=x\r\n" * 200_000
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sent = 0
    with connect(node) as s:
        s.sendall(head)
        with pytest.raises(OSError):
            while sent < HUNDRED_MB:
                sent += s.send(chunk)
        got = read_all(s)
    assert sent < HUNDRED_MB // 4, f"the node took {sent} bytes of an oversized body"
    assert not got or got.startswith(b"HTTP/1.1 413 "), got[:200]
    assert rejected(node, "body") == before + 1
    assert rss(node) - before_rss < 16 * 1024 * 1024
    healthy(node)


def test_beyond_limit_concurrency_requests_get_503(node: NodeProcess) -> None:
    """Keep-alive connections fill the limit; the next request is refused and closed."""
    node.client.close()  # its own keep-alive connection would count towards the limit
    held: list[socket.socket] = []
    refused = b""
    try:
        for _ in range(LIMIT + 5):
            s = connect(node)
            held.append(s)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
            got = read_response(s)
            if not got.startswith(b"HTTP/1.1 200 "):
                refused = got + read_all(s)
                break
        assert refused.startswith(b"HTTP/1.1 503 "), refused[:200]
        assert b"http.limit_concurrency" in refused
        assert LIMIT - 2 <= len(held) - 1 < LIMIT
    finally:
        for s in held:
            s.close()
    node.client = type(node.client)(base_url=node.http, timeout=10)
    wait_for(lambda: node.get("/healthz").status_code == 200, 10, "the node answering again")
    assert rejected(node, "concurrency") >= 1


def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(
    node: NodeProcess,
) -> None:
    """1,000 pipelined requests for a 26 KB document and not a byte read: once the
    socket buffers are full the node's responses stall, and after the write timeout
    the connection is dropped (the route's task and its buffers with it)."""
    before = rejected(node, "write_timeout")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", node.http_port))
    with sock:
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: node\r\n\r\n" * 1000)
        wait_for(
            lambda: rejected(node, "write_timeout") == before + 1,
            10,
            "the stalled client to be dropped",
            interval=0.1,
        )
        got = read_all(sock)
    assert len(got) < 1000 * 20_000, "every response was delivered: nothing stalled"
    healthy(node)


def test_a_viewer_that_stops_reading_a_big_segment_is_dropped() -> None:
    """A segment larger than both socket buffers: what the kernel cannot take waits in
    the transport; after the write timeout without progress the connection is dropped
    and the buffer freed."""
    size = 24 * 1024 * 1024
    server = MediaServer(
        HlsConfig(segment_format="fmp4", low_latency=False, max_segment_bytes=size + 1),
        http=HttpConfig(write_timeout=1.0, header_timeout=5.0),
    )
    try:
        s = server.open()
        big = bytes(size)
        server.call(lambda: s.add_segment(SegmentFrame("360p", 0, 0.0, 2.0, "avc1", big)))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        with sock:
            sock.sendall(b"GET /live/s/360p/0.m4s HTTP/1.1\r\nHost: node\r\n\r\n")
            start = time.monotonic()

            def dropped() -> bool:
                return server.metrics.rejected["write_timeout"] == 1

            wait_for(dropped, 10, "the stalled viewer to be dropped", interval=0.05)
            elapsed = time.monotonic() - start
            assert 0.9 < elapsed < 4, elapsed
            got = read_all(sock)
        assert len(got) < size, "the whole segment was delivered: nothing stalled"
        conns = server.server.server_state.connections
        wait_for(lambda: not conns, 5, "the connection to be gone")
    finally:
        server.stop()


def test_normal_requests_pass_the_limits(node: NodeProcess) -> None:
    """A player's requests, pipelined keep-alive and with a small body, are answered."""
    with connect(node) as s:
        s.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: n\r\nUser-Agent: x\r\n\r\n"
            b"GET /live/nope/180p/index.m3u8 HTTP/1.1\r\nHost: n\r\n\r\n"
            b"POST /live/s/whep HTTP/1.1\r\nHost: n\r\nContent-Type: application/sdp\r\n"
            b"Content-Length: 5\r\nConnection: close\r\n\r\nv=0\r\n"
        )
        got = read_all(s)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", got) == [b"200", b"404", b"404"], got[:500]


def test_a_websocket_upgrade_still_reaches_uvicorn(node: NodeProcess) -> None:
    """The protocol's own callbacks keep uvicorn's upgrade path (the node has no
    WebSocket route, so the handshake is refused with 403, not a parse error's 400)."""
    got = exchange(
        node,
        b"GET /ws HTTP/1.1\r\nHost: node\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert got.startswith(b"HTTP/1.1 403 "), got[:200]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NEARCAST_HTTP_HEADER_TIMEOUT": "0"}, "'http.header_timeout' must be greater than zero"),
        ({"NEARCAST_HTTP_MAX_URL_BYTES": "100"}, "'http.max_url_bytes' must be at least 1024"),
        ({"NEARCAST_HTTP_LIMIT_CONCURRENCY": "-1"}, "'http.limit_concurrency' must not be"),
    ],
)
def test_limit_errors_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(environ=env)


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout() -> None:
    """The sweep, not a timer per response, closes a connection that sends no next
    request within http.keep_alive_timeout; one that keeps asking stays open."""
    server = MediaServer(
        HlsConfig(segment_format="fmp4", low_latency=False),
        http=HttpConfig(keep_alive_timeout=1),
    )
    try:
        request = b"GET /live/s/index.m3u8 HTTP/1.1\r\nHost: node\r\n\r\n"
        idle, busy = socket.socket(), socket.socket()
        for sock in (idle, busy):
            sock.settimeout(5)
            sock.connect(("127.0.0.1", server.port))
        with idle, busy:
            idle.sendall(request)
            answered = time.monotonic()
            assert read_response(idle).startswith(b"HTTP/1.1 404")
            # Asking every 0.4 s for 2.4 s: never idle for a whole second.
            for _ in range(6):
                busy.sendall(request)
                assert read_response(busy).startswith(b"HTTP/1.1 404")
                wait = time.monotonic() + 0.4
                while time.monotonic() < wait:
                    time.sleep(0.05)
            assert idle.recv(65536) == b"", "the idle connection is still open"
            closed_after = time.monotonic() - answered
            assert 0.9 < closed_after < 3.5, closed_after
            busy.sendall(request)
            assert read_response(busy).startswith(b"HTTP/1.1 404"), "the busy one was closed"
    finally:
        server.stop()
