"""The fast path's memo: a request read again is answered without the parser, and only
while its answer is still the store's.

The memo is keyed by the raw bytes of one read that held exactly one request head
(:func:`distribute.fastpath.whole_request`). The property test holds that rule to
httptools, the parser the memo skips: whatever bytes it accepts, httptools parses as
one complete request and nothing else. The other tests talk HTTP/1.1 on raw
keep-alive sockets to uvicorn serving a :class:`MediaApp` with the node's protocol,
and change the store between two reads of the same bytes.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from nodeutil import wait_for
from rawhttp import Responses
from servehelp import LL_HLS, MediaServer, feed_init, feed_part, feed_segment

from distribute.access import TokenCheck
from distribute.fastpath import MEMO_ENTRIES, whole_request

KEYS = {"k1": "memo-test-secret-0123456789"}


class Server:
    def __init__(self, tokens: TokenCheck | None = None) -> None:
        self.media = MediaServer(LL_HLS, tokens=tokens)
        self.stream = self.media.open()
        feed_init(self.media, self.stream)
        for index in range(2):
            feed_segment(self.media, self.stream, index)
        feed_part(self.media, self.stream, 2, 0)

    @property
    def memo(self) -> dict[bytes, Any]:
        return self.media.server.config.http_protocol_class.memo  # type: ignore[no-any-return]

    def count(self, kind: str) -> int:
        return int(self.media.metrics.counts.get((kind, 200), 0))


@pytest.fixture()
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.media.stop()


class Client:
    """A keep-alive connection to the server, read one response at a time."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.media.port), timeout=5)
        self.sock.settimeout(5)
        self.responses = Responses(self.sock)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)


def connect(server: Server) -> Client:
    return Client(server)


def response(client: Client) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response: status, headers (names lower-case), body."""
    head, body = client.responses.read()
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


def get(path: str, ua: bytes = b"memo-test") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: node\r\nUser-Agent: %s\r\n\r\n" % (path.encode(), ua)


def ask(sock: Client, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    sock.sendall(request)
    return response(sock)


def remembered(server: Server, sock: Client, request: bytes) -> bytes:
    """Ask ``request`` until the memo holds it (the second time); the body answered."""
    body = b""
    for _ in range(2):
        status, _, body = ask(sock, request)
        assert status == 200, request
    assert request in server.memo, request
    return body


def test_the_same_request_again_is_answered_from_the_memo_byte_for_byte(server: Server) -> None:
    for path, kind in (
        ("/live/s/360p/1.m4s", "segment"),
        ("/live/s/360p/2.0.m4s", "part"),
        ("/live/s/360p/init-1.mp4", "init"),
        ("/live/s/360p/index.m3u8", "playlist"),
        ("/live/s/360p/index.m3u8?_HLS_msn=2&_HLS_part=0", "playlist"),
        ("/live/s/index.m3u8", "master"),
    ):
        with connect(server) as sock:
            first = ask(sock, get(path))
            assert first[0] == 200, path
            assert get(path) not in server.memo, "remembered the second time"
            remembered(server, sock, get(path))
            before = server.count(kind)
            for _ in range(3):
                again = ask(sock, get(path))
                assert again[0] == 200
                assert again[2] == first[2], path
                drop = (b"date",)
                assert {k: v for k, v in again[1].items() if k not in drop} == {
                    k: v for k, v in first[1].items() if k not in drop
                }, path
            assert server.count(kind) == before + 3, "each replay is counted"


def test_a_replayed_playlist_request_is_a_viewer_sighting(server: Server) -> None:
    viewers = server.media.metrics.viewers
    with connect(server) as sock:
        remembered(server, sock, get("/live/s/360p/index.m3u8", ua=b"player-a"))
        server.media.call(viewers.seen.clear)
        assert ask(sock, get("/live/s/360p/index.m3u8", ua=b"player-a"))[0] == 200
        keys = server.media.call(lambda: list(viewers.seen))
    assert keys == [("127.0.0.1", b"player-a", b"live", b"s")]


def test_a_replayed_kept_part_feeds_the_part_delivery_histogram(server: Server) -> None:
    hist = server.media.metrics.part_plain
    with connect(server) as sock:
        remembered(server, sock, get("/live/s/360p/2.0.m4s"))
        before = sum(hist.counts)
        ask(sock, get("/live/s/360p/2.0.m4s"))
    assert sum(hist.counts) == before + 1


def test_a_changed_playlist_is_answered_new_not_from_the_memo(server: Server) -> None:
    path = "/live/s/360p/index.m3u8"
    with connect(server) as sock:
        old = remembered(server, sock, get(path))
        feed_part(server.media, server.stream, 2, 1)
        new = ask(sock, get(path))[2]
    assert new.count(b"#EXT-X-PART:") == old.count(b"#EXT-X-PART:") + 1


def test_an_evicted_segment_is_not_answered_from_the_memo(server: Server) -> None:
    path = "/live/s/360p/0.m4s"
    with connect(server) as sock:
        remembered(server, sock, get(path))
        index = 2
        track = server.stream.renditions["360p"]
        while server.media.call(lambda: 0 in track.by_msn):
            feed_segment(server.media, server.stream, index)
            index += 1
            assert index < 50, "segment 0 is never evicted"
        status, _, body = ask(sock, get(path))
    assert status == 404, body


def test_a_removed_stream_is_not_answered_from_the_memo(server: Server) -> None:
    path = "/live/s/360p/1.m4s"
    with connect(server) as sock:
        remembered(server, sock, get(path))
        server.media.call(lambda: server.media.store.remove(server.stream.key))
        status, _, _ = ask(sock, get(path))
    assert status == 404


def test_an_ended_stream_answers_its_ended_playlist(server: Server) -> None:
    path = "/live/s/360p/index.m3u8"
    with connect(server) as sock:
        remembered(server, sock, get(path))
        _, live_headers, _ = ask(sock, get(path))
        server.media.call(lambda: server.stream.end(0.0))
        _, headers, body = ask(sock, get(path))
    assert b"#EXT-X-ENDLIST" in body
    assert headers[b"cache-control"] != live_headers[b"cache-control"]


def test_a_tenant_that_starts_requiring_tokens_is_not_answered_from_the_memo() -> None:
    keys: dict[str, dict[str, str]] = {}
    server = Server(tokens=TokenCheck(keys.get))
    try:
        path = "/live/s/360p/1.m4s"
        with connect(server) as sock:
            remembered(server, sock, get(path))
            server.media.call(lambda: keys.update(live=KEYS))
            status, _, _ = ask(sock, get(path))
        assert status in (401, 403), status
    finally:
        server.media.stop()


def test_pipelined_or_split_requests_are_answered_in_order_and_not_memoized(
    server: Server,
) -> None:
    a, b = get("/live/s/360p/1.m4s"), get("/live/s/360p/0.m4s")
    with connect(server) as sock:
        sock.sendall(a + b)
        first, second = response(sock), response(sock)
        assert (first[0], second[0]) == (200, 200)
        assert first[2] != second[2]
        assert a + b not in server.memo
        split = get("/live/s/180p/1.m4s")
        sock.sendall(split[:20])
        sock.sendall(split[20:])  # may arrive as one read or two
        assert response(sock)[0] == 200


def test_memoized_bytes_in_the_middle_of_a_request_are_not_replayed(server: Server) -> None:
    path = "/live/s/360p/1.m4s"
    with connect(server) as sock:
        remembered(server, sock, get(path))
    with connect(server) as sock:
        # A request line left open, then bytes that alone would be a memoized request:
        # the parser reads one request "GET /live/s/180p/GET ...", not the memo's.
        sock.sendall(b"GET /live/s/180p/")
        conns = server.media.server.server_state.connections
        wait_for(lambda: any(c._mid for c in list(conns)), 5, "the first read to be parsed")
        status, _, _ = ask(sock, get(path))
    assert status != 200


# -- the memo's key rule against httptools ------------------------------------------------


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Requests as players send them, and the same with one thing wrong or missing."""
    clean = draw(st.booleans())  # mostly well-formed: then only one flaw, if any

    def pick(good: list[bytes], bad: list[bytes]) -> bytes:
        return draw(st.sampled_from(good if clean and draw(st.integers(0, 9)) else good + bad))

    method = pick([b"GET"], [b"HEAD", b"POST", b"get"])
    url = pick([b"/live/s/360p/1.m4s", b"/a?b=c", b"/"], [b"/x y", b"/\x00", b""])
    version = pick([b"HTTP/1.1"], [b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1 "])
    crlf = [b"\r\n"]
    raw = method + b" " + url + b" " + version + pick(crlf, [b"\n", b"\r"])
    for _ in range(draw(st.integers(0, 4))):
        name = pick(
            [b"Host", b"User-Agent", b"Accept", b"X-A"],
            [b"Range", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Bad Name", b""],
        )
        value = pick([b"node", b"*/*", b"keep-alive"], [b"0", b"5", b"chunked", b"close", b"\x00"])
        if not clean:
            value = draw(st.one_of(st.just(value), st.binary(max_size=12)))
        raw += name + b":" + pick([b" "], [b"", b"\t"]) + value + pick(crlf, [b"\n", b"\r"])
    raw += pick(crlf, [b"\n", b"\r", b""])
    raw += pick([b""], [b"hello", b"GET / HTTP/1.1\r\n\r\n", b"GET /", b"\r\n"])
    if clean and draw(st.integers(0, 9)):
        return raw
    return raw[: draw(st.integers(0, len(raw)))]


class _Recorder:
    parser: Any = None
    fast = False

    def __init__(self) -> None:
        self.begun = 0
        self.completed = 0
        self.headers_complete = 0
        self.urls: list[bytes] = []
        self.headers: list[list[tuple[bytes, bytes]]] = []

    def on_message_begin(self) -> None:
        self.begun += 1
        self.urls.append(b"")
        self.headers.append([])

    def on_url(self, url: bytes) -> None:
        self.urls[-1] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[-1].append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.headers_complete += 1
        # What the fast path asks the parser before it answers (and remembers) a request.
        p = self.parser
        self.fast = (
            p.get_method() == b"GET"
            and p.get_http_version() == "1.1"
            and p.should_keep_alive()
            and not p.should_upgrade()
        )

    def on_message_complete(self) -> None:
        self.completed += 1


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_requests())
@example(b"GET / HTTP/1.1\r\nHost: node\r\n\r\n")
@example(b"GET / HTTP/1.1\nHost: node\n\nGET /x HTTP/1.1\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
def test_a_memo_key_is_exactly_one_request_head_to_httptools(raw: bytes) -> None:
    rec = _Recorder()
    parser = rec.parser = httptools.HttpRequestParser(rec)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserError:
        failed = True
    else:
        failed = False
    if not rec.headers_complete or not rec.fast:
        return  # the fast path never answers such a read: there is no request to remember
    if not whole_request(raw, rec.headers[0]):
        event("refused")
        return
    event("accepted")
    # Accepted: one request, complete, nothing before or after it, the parser ready.
    assert not failed
    assert (rec.begun, rec.headers_complete, rec.completed) == (1, 1, 1)
    assert re.fullmatch(rb"[A-Z]+ \S+ HTTP/1\.[01]\r\n(?:[^\r\n]*\r\n)*\r\n", raw, re.S)
    parser.feed_data(b"GET /next HTTP/1.1\r\nHost: node\r\n\r\n")
    assert rec.urls[1:] == [b"/next"] and rec.completed == 2


def test_the_memo_empties_when_full(server: Server) -> None:
    with connect(server) as sock:
        for i in range(MEMO_ENTRIES + 3):
            for _ in range(2):
                assert ask(sock, get(f"/live/s/360p/1.m4s?n={i}"))[0] == 200
    assert 0 < len(server.memo) <= MEMO_ENTRIES
