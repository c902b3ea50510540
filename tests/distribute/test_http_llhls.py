"""The media path over real HTTP: uvicorn serving MediaApp, httpx and raw sockets as clients."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import av
import httpx
import m3u8
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nodeutil import wait_for
from servehelp import LL_HLS, MediaServer, feed_init, feed_part, feed_segment

from bench.cmaf import cmaf
from distribute.config import HlsConfig
from distribute.responses import BadRange, parse_range
from media.segments import SegmentFrame

CMAF = cmaf()


@pytest.fixture
def server() -> Iterator[MediaServer]:
    srv = MediaServer(LL_HLS)
    try:
        yield srv
    finally:
        srv.stop()


def test_blocking_reload_is_held_until_the_part_exists(server: MediaServer) -> None:
    s = server.open()
    feed_init(server, s)
    feed_part(server, s, 0, 0)
    base = f"{server.url}/live/s/360p/index.m3u8"
    with ThreadPoolExecutor(4) as pool, httpx.Client(timeout=10) as client:
        held = pool.submit(client.get, base, params={"_HLS_msn": 0, "_HLS_part": 1})
        whole = pool.submit(httpx.get, base, params={"_HLS_msn": 0}, timeout=10)
        wait_for(lambda: server.held() == 2, 5, "two requests held")
        assert not held.done()
        feed_part(server, s, 0, 1)
        r = held.result(5)
        assert r.status_code == 200
        assert r.headers["cache-control"] == "public, max-age=2"
        pl = m3u8.loads(r.text)
        assert pl.preload_hint.uri == "0.2.m4s"
        assert not whole.done()  # segment 0 is not complete yet
        feed_segment(server, s, 0)
        r = whole.result(5)
        assert "\n0.m4s\n" in r.text
    # Already there: answered at once; plain reload of an LL playlist is not cached.
    r = httpx.get(base, params={"_HLS_msn": 0, "_HLS_part": 0})
    assert r.status_code == 200
    assert httpx.get(base).headers["cache-control"] == "no-cache"


def test_blocking_reload_errors(server: MediaServer) -> None:
    s = server.open()
    feed_init(server, s)
    feed_segment(server, s, 0)
    base = f"{server.url}/live/s/360p/index.m3u8"
    assert httpx.get(base, params={"_HLS_msn": 4}).status_code == 400  # > last (1) + 2
    assert httpx.get(base, params={"_HLS_part": 1}).status_code == 400  # part without msn
    assert httpx.get(base, params={"_HLS_msn": "x"}).status_code == 400


def test_blocking_reload_times_out_with_503() -> None:
    srv = MediaServer(
        HlsConfig(segment_format="fmp4", low_latency=True, segment_duration=0.5, part_duration=0.25)
    )
    try:
        s = srv.open()
        feed_init(srv, s)
        feed_segment(srv, s, 0)
        r = httpx.get(f"{srv.url}/live/s/360p/index.m3u8", params={"_HLS_msn": 2}, timeout=10)
        assert r.status_code == 503 and r.elapsed.total_seconds() >= 1.4  # 3 target durations
        assert srv.held() == 0
    finally:
        srv.stop()


def test_preload_hinted_part_is_held_and_sent_chunked(server: MediaServer) -> None:
    s = server.open()
    feed_init(server, s)
    feed_part(server, s, 0, 0)
    hint = m3u8.loads(server.call(lambda: s.renditions["360p"].playlist).decode()).preload_hint.uri
    assert hint == "0.1.m4s"
    with ThreadPoolExecutor(2) as pool:
        fut = pool.submit(httpx.get, f"{server.url}/live/s/360p/{hint}", timeout=10)
        wait_for(lambda: server.held() == 1, 5, "the part request held")
        feed_part(server, s, 0, 1)
        r = fut.result(5)
    assert r.status_code == 200
    assert r.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.headers
    assert r.content == CMAF.segments[0][1].data
    assert r.headers["content-type"] == "video/mp4"
    # A part that will never be produced (its segment completed without it) is a 404.
    feed_part(server, s, 0, 2)  # completes the 3-part lead segment, MSN 0
    feed_part(server, s, 0, 3)  # MSN 1, part 0
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(httpx.get, f"{server.url}/live/s/360p/1.3.m4s", timeout=10)
        wait_for(lambda: server.held() == 1, 5, "the part request held")
        frags = CMAF.segments[0]
        for p in (4, 5):
            feed_part(server, s, 0, p)
        data = b"".join(f.data for f in frags)
        server.call(lambda: s.add_segment(SegmentFrame("360p", 0, 0.0, 2.0, CMAF.codecs, data)))
        assert fut.result(5).status_code == 404
    # Far ahead of the live edge: not held.
    assert httpx.get(f"{server.url}/live/s/360p/5.0.m4s").status_code == 404


def test_range_cache_and_cors(server: MediaServer) -> None:
    s = server.open()
    feed_init(server, s)
    feed_segment(server, s, 0)
    url = f"{server.url}/live/s/360p/0.m4s"
    full = httpx.get(url)
    assert full.status_code == 200 and full.headers["accept-ranges"] == "bytes"
    assert full.headers["cache-control"] == "public, max-age=31536000, immutable"
    size = len(full.content)
    r = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == full.content[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{size}"
    r = httpx.get(url, headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == full.content[-5:]
    r = httpx.get(url, headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
    r = httpx.get(f"{server.url}/live/s/360p/init-1.mp4", headers={"Range": "bytes=0-7"})
    assert r.status_code == 206 and r.content == CMAF.init[:8]
    r = httpx.get(f"{server.url}/live/s/360p/0.2.m4s", headers={"Range": "bytes=4-"})
    assert r.status_code == 206 and r.content == CMAF.segments[0][2].data[4:]
    assert r.headers["cache-control"] == "public, max-age=6"
    r = httpx.options(
        url,
        headers={
            "Origin": "https://school.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "GET" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "range"
    assert httpx.post(url).status_code == 405
    assert httpx.head(url).headers["content-length"] == str(size)


def test_parse_range() -> None:
    assert parse_range(b"bytes=0-0", 10) == (0, 0)
    assert parse_range(b"bytes=5-100", 10) == (5, 9)
    assert parse_range(b"bytes=-100", 10) == (0, 9)
    assert parse_range(b"bytes=1-2,4-5", 10) is None  # several ranges: the whole body
    assert parse_range(b"items=1-2", 10) is None
    assert parse_range(b"bytes=5-2", 10) is None
    with pytest.raises(BadRange):
        parse_range(b"bytes=10-", 10)
    with pytest.raises(BadRange):
        parse_range(b"bytes=-0", 10)


def test_keep_alive_across_responses(server: MediaServer) -> None:
    """One TCP connection carries 200, 206, 404 and 400 responses: nothing closes it."""
    s = server.open()
    feed_init(server, s)
    feed_segment(server, s, 0)
    paths = [
        ("/live/s/360p/index.m3u8", ""),
        ("/live/s/360p/0.m4s", "Range: bytes=0-9\r\n"),
        ("/live/s/360p/77.m4s", ""),
        ("/live/s/360p/index.m3u8?_HLS_part=1", ""),
        ("/live/s/index.m3u8", ""),
    ]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        f = sock.makefile("rb")
        for path, extra in paths:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
            status = f.readline()
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                k, _, v = line.decode().partition(":")
                assert k.lower() != "connection" or v.strip().lower() != "close"
                if k.lower() == "content-length":
                    length = int(v)
            f.read(length)
            assert status.split()[1] in (b"200", b"206", b"404", b"400")


def test_ffmpeg_reads_the_fmp4_ll_variant(server: MediaServer) -> None:
    s = server.open()
    feed_init(server, s)
    for i in range(3):
        feed_segment(server, s, i)
    server.call(lambda: s.end(0.0))
    with av.open(f"{server.url}/live/s/index.m3u8", timeout=(10, 10)) as c:
        video = next(st for st in c.streams if st.type == "video")
        frames = sum(1 for _ in c.decode(video))
    assert frames >= 170  # 6 s at 30 fps, both variants demuxed, one decoded


def test_first_playlist_waits_only_for_the_three_part_lead(server: MediaServer) -> None:
    """No EXTINF yet: a playlist request is held until the lead segment (3 parts) exists,
    not until a whole segment does; the store's playlist text is valid before that too."""
    s = server.open()
    feed_init(server, s)
    feed_part(server, s, 0, 0)
    pl = m3u8.loads(server.call(lambda: s.renditions["360p"].playlist).decode())
    assert pl.media_sequence == 0 and pl.segment_map[0].uri == "init-1.mp4"
    assert [p.uri for seg in pl.segments for p in seg.parts] == ["0.0.m4s"]
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(httpx.get, f"{server.url}/live/s/360p/index.m3u8", timeout=10)
        wait_for(lambda: server.held() == 1, 5, "the first playlist request held")
        feed_part(server, s, 0, 1)
        assert not fut.done()
        feed_part(server, s, 0, 2)
        r = fut.result(5)
    pl = m3u8.loads(r.text)
    assert [x.uri for x in pl.segments if x.uri] == ["0.m4s"] and pl.preload_hint.uri == "1.0.m4s"
    assert httpx.get(f"{server.url}/live/s/360p/0.0.m4s").content == CMAF.segments[0][0].data


@given(st.binary(max_size=40), st.integers(min_value=0, max_value=1000))
def test_parse_range_never_crashes_and_stays_in_bounds(header: bytes, size: int) -> None:
    try:
        r = parse_range(header, size)
    except BadRange:
        return
    if r is not None:
        first, last = r
        assert 0 <= first <= last < size


@given(st.integers(0, 500), st.integers(0, 500), st.integers(1, 500))
def test_parse_range_matches_slicing(first: int, last: int, size: int) -> None:
    header = f"bytes={first}-{last}".encode()
    body = bytes(range(256)) * 2
    body = body[:size]
    try:
        r = parse_range(header, size)
    except BadRange:
        assert first >= size
        return
    if last < first:
        assert r is None
    else:
        assert r is not None and body[r[0] : r[1] + 1] == body[first : last + 1]


def _raw(port: int, request: bytes) -> tuple[bytes, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        f = sock.makefile("rb")
        status = f.readline()
        headers: dict[str, str] = {}
        while (line := f.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        body = f.read(int(headers.get("content-length", "0")))
        return status, headers, body


def test_fast_path_and_asgi_path_answer_alike(server: MediaServer) -> None:
    """HTTP/1.1 GETs take the fast path, HTTP/1.0 ones the ASGI path: same answer."""
    s = server.open()
    feed_init(server, s)
    feed_segment(server, s, 0)
    feed_part(server, s, 1, 0)
    for path in (
        "/live/s/index.m3u8",
        "/live/s/360p/index.m3u8",
        "/live/s/360p/0.m4s",
        "/live/s/360p/1.0.m4s",
        "/live/s/360p/index.m3u8?_HLS_msn=0&_HLS_part=2",
    ):
        fast = _raw(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        slow = _raw(server.port, f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        assert fast[0].split()[1] == slow[0].split()[1] == b"200", path
        assert fast[2] == slow[2], path
        for h in ("content-type", "cache-control", "access-control-allow-origin", "content-length"):
            assert fast[1].get(h) == slow[1].get(h), (path, h)


def test_held_request_whose_client_leaves_is_dropped(server: MediaServer) -> None:
    s = server.open()
    feed_init(server, s)
    feed_part(server, s, 0, 0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"GET /live/s/360p/index.m3u8?_HLS_msn=0&_HLS_part=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        wait_for(lambda: server.held() == 1, 5, "the request held")
    feed_part(server, s, 0, 1)  # the waiter finds its connection closed
    wait_for(lambda: server.held() == 0, 5, "the held request released")
    assert server.call(lambda: len(s.renditions["360p"].waiters)) == 0
    assert httpx.get(f"{server.url}/live/s/360p/0.1.m4s").status_code == 200


def test_a_stream_that_ends_before_its_first_segment_is_404_on_both_paths(
    server: MediaServer,
) -> None:
    s = server.open()
    feed_init(server, s)
    url = f"{server.url}/live/s/360p/index.m3u8"
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.get, url, timeout=10)
        blocking = pool.submit(httpx.get, url, params={"_HLS_msn": 0, "_HLS_part": 0}, timeout=10)
        wait_for(lambda: server.held() == 2, 10, "both requests held")
        server.call(lambda: s.end(0.0))
        answers = [first.result(10), blocking.result(10)]
    # The fast path answers held requests; HEAD goes down the ASGI path: same answer.
    answers.append(httpx.head(url, timeout=10))
    for r in answers:
        assert r.status_code == 404
    assert [r.text for r in answers[:2]] == ["no segment yet\n"] * 2


def test_delta_update_requested_over_http_is_parsed(server: MediaServer) -> None:
    """``_HLS_skip=YES`` through the server, on both paths (fast and held): the answer
    is a delta update (EXT-X-SKIP) that a playlist parser reads, naming the same media
    as the full playlist minus the skipped segments."""
    import dataclasses

    srv = MediaServer(dataclasses.replace(LL_HLS, window=12))
    try:
        s = srv.open()
        feed_init(srv, s)
        for i in range(12):
            feed_segment(srv, s, i)
        base = f"{srv.url}/live/s/360p/index.m3u8"
        with httpx.Client(timeout=10) as client:
            full = m3u8.loads(client.get(base).text)
            r = client.get(base, params={"_HLS_skip": "YES"})
            assert r.status_code == 200
            delta = m3u8.loads(r.text)
            assert "#EXT-X-SKIP:SKIPPED-SEGMENTS=" in r.text
            assert delta.skip.skipped_segments == 6
            assert delta.media_sequence == full.media_sequence
            kept = [x.uri for x in delta.segments if x.uri]
            assert kept == [x.uri for x in full.segments if x.uri][6:]
            # A blocking reload with a delta: held, then answered as a delta too.
            # The part the playlist hints at next (the LL-HLS lead segment shifts numbers).
            msn = int(full.preload_hint.uri.split(".")[0])
            with ThreadPoolExecutor(1) as pool:
                held = pool.submit(
                    client.get, base, params={"_HLS_msn": msn, "_HLS_part": 0, "_HLS_skip": "YES"}
                )
                wait_for(lambda: srv.held() == 1, 5, "the delta request held")
                feed_part(srv, s, 12, 0)
                r = held.result(5)
            assert r.status_code == 200 and "#EXT-X-SKIP:" in r.text
            assert m3u8.loads(r.text).skip.skipped_segments >= 6
    finally:
        srv.stop()


def test_parts_of_a_stored_segment_stay_servable_after_the_parts_are_evicted(
    server: MediaServer,
) -> None:
    """A player that fell behind asks for parts listed seconds ago: once the parts
    themselves are evicted, they are cut from their segment, byte for byte, on the fast
    path and the ASGI path (a Range request) alike."""
    s = server.open()
    feed_init(server, s)
    feed_segment(server, s, 0)
    feed_segment(server, s, 1)
    base = f"{server.url}/live/s/360p"
    pl = m3u8.loads(httpx.get(f"{base}/index.m3u8").text)
    listed = [p.uri for seg in pl.segments for p in seg.parts]
    assert listed
    before = {uri: httpx.get(f"{base}/{uri}").content for uri in listed}
    for index in range(2, 8):
        feed_segment(server, s, index)
    track = s.renditions["360p"]
    keys = {tuple(int(x) for x in uri[: -len(".m4s")].split(".")) for uri in listed}
    assert not keys & set(server.call(lambda: set(track.parts))), "parts still kept"
    for uri, data in before.items():
        fast = httpx.get(f"{base}/{uri}")
        assert fast.status_code == 200 and fast.content == data, uri
        ranged = httpx.get(f"{base}/{uri}", headers={"Range": "bytes=0-"})
        assert ranged.status_code == 206 and ranged.content == data, uri
    # A part index past the segment's last part is still unknown.
    msn = max(k[0] for k in keys)
    assert httpx.get(f"{base}/{msn}.99.m4s").status_code == 404
