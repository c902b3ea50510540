"""Property tests of the media path's request parsing (Hypothesis).

Whatever URL and headers a client sends, :meth:`MediaApp.fast` answers None (the
ASGI path decides), a 200 it can send now, or a :class:`Hold`, and never raises;
the ASGI path answers it with a status below 500. The forms players really send
(segments, parts, init segments, blocking reloads with ``_HLS_msn``/``_HLS_part``/
``_HLS_skip``, ``Range``, ``?token=``) parse as they must. The pieces under them
(``parse_range``, the stream-name rule, token verification) take any input too.
"""

from __future__ import annotations

import asyncio
import base64
import time
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from distribute.access import PlaybackGuard, PlaybackMetrics, TokenCheck
from distribute.config import HlsConfig
from distribute.hls.store import SEQUENCE_EPOCH, Store
from distribute.hls.stream import LiveStream
from distribute.http import Hold, MediaApp
from distribute.media_metrics import MediaMetrics
from distribute.responses import BadRange, parse_range
from media import StreamKey
from media.names import stream_name_problem
from media.segments import InitFrame, PartFrame, SegmentFrame
from tokens import TokenError, sign, verify

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = {"k1": "fuzz-secret-0123456789"}
PARTS = 3  # parts per segment
SEGMENTS = 4  # complete segments 0..3; segment 4 has its first part only
INFO = {
    "source": {"width": 640, "height": 360, "fps": 30.0},
    "audio": True,
    "renditions": [
        {
            "name": n,
            "width": w,
            "height": h,
            "fps": 30.0,
            "video_bitrate": 500_000,
            "maxrate": 500_000,
            "audio_bitrate": 128000,
        }
        for n, w, h in (("360p", 640, 360), ("180p", 320, 180))
    ],
}


def part_data(index: int, part: int) -> bytes:
    return b"part %d.%d " % (index, part) * 10


def seg_data(index: int) -> bytes:
    return b"".join(part_data(index, p) for p in range(PARTS))


def _feed(s: LiveStream, parts: bool) -> None:
    s.begin_generation()
    s.set_renditions(INFO)
    for name in s.renditions:
        s.add_init(InitFrame(name, "avc1.64001f,mp4a.40.2", b"init " + name.encode()))
    for index in range(SEGMENTS + 1):
        for part in range(PARTS if index < SEGMENTS else 1):
            for name in s.renditions:
                if parts:
                    s.add_part(
                        PartFrame(
                            name,
                            index,
                            part,
                            2.0 * index + part / 3,
                            1 / 3,
                            part == 0,
                            part_data(index, part),
                        )
                    )
        if index < SEGMENTS:
            for name in s.renditions:
                s.add_segment(SegmentFrame(name, index, 2.0 * index, 2.0, "avc1", seg_data(index)))


@cache
def served() -> tuple[MediaApp, Any]:
    """A media app over four streams: live/ll (LL-HLS, live), live/ended (LL-HLS, ended),
    tv/ts (MPEG-TS) and paid/ll (LL-HLS, tokens required); and the ASGI stack a node
    puts in front of it (the playback guard)."""
    config = HlsConfig(
        segment_format="fmp4",
        low_latency=True,
        part_duration=0.334,
        segment_duration=2.0,
        tenants={"tv": "ts"},
    )
    store = Store(config)
    for tenant, name in (("live", "ll"), ("live", "ended"), ("tv", "ts"), ("paid", "ll")):
        s = store.open(StreamKey(tenant, name), now=SEQUENCE_EPOCH)
        _feed(s, parts=tenant != "tv")
    ended = store.get("live", "ended")
    assert ended is not None
    ended.end(time.time())
    registry = CollectorRegistry()

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found\n"})

    app = MediaApp(store, fallback, MediaMetrics(registry))
    tokens = TokenCheck({"paid": KEYS}.get)
    app.tokens = tokens
    return app, PlaybackGuard(app, tokens, PlaybackMetrics(registry))


def token(stream: str = "ll", tenant: str = "paid") -> str:
    return sign(KEYS["k1"], "k1", "play", tenant, stream, int(time.time()) + 600)


def check_fast(url: bytes, headers: list[tuple[bytes, bytes]]) -> object:
    app, _ = served()
    got = app.fast(url, headers)
    if got is None or isinstance(got, Hold):
        return got
    assert isinstance(got, tuple) and len(got) == 2
    block, body = got
    assert isinstance(block, bytes) and block.endswith(b"\r\n")
    assert isinstance(body, bytes) and body
    return got


# -- any input --------------------------------------------------------------------------

PIECES = st.sampled_from(
    [
        b"",
        b"live",
        b"tv",
        b"paid",
        b"ll",
        b"ts",
        b"ended",
        b"360p",
        b"180p",
        b"vod",
        b"v1",
        b"static",
        b"whip",
        b"whep",
        b"index.m3u8",
        b"0.m4s",
        b"1.2.m4s",
        b"4.0.m4s",
        b"4.1.m4s",
        b"5.0.m4s",
        b"-1.m4s",
        b"x.m4s",
        b"1..m4s",
        b"0.ts",
        b"99.ts",
        b".ts",
        b"init-0.mp4",
        b"init-.mp4",
        b"init-x.mp4",
        b"%2e%2e",
        b"\xff",
        b"..",
        b"a b",
    ]
)
QUERY_KEYS = st.sampled_from(
    [b"_HLS_msn", b"_HLS_part", b"_HLS_skip", b"token", b"x", b"", b"_hls_msn"]
)
QUERY_VALUES = st.one_of(
    st.integers(-5, 10**30).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"YES", b"v2", b"NO", b" 3", b"1_0", b"+2", b"0x10", b"\xff", b"1e3"]),
    st.binary(max_size=20),
    st.builds(lambda: token().encode()),
)
QUERIES = st.lists(
    st.tuples(QUERY_KEYS, QUERY_VALUES).map(lambda kv: kv[0] + b"=" + kv[1]), max_size=5
).map(b"&".join)
# Media-shaped paths (/{tenant}/{stream}[/{rendition}]/{file}), often valid, and anything.
MEDIA_PATHS = st.tuples(
    st.sampled_from([b"live", b"tv", b"paid", b"x"]),
    st.sampled_from([b"ll", b"ended", b"ts", b"nope"]),
    st.one_of(
        st.sampled_from([[b"360p"], [b"180p"]]),
        st.lists(st.sampled_from([b"360p", b"180p", b"vod", b"9p"]), max_size=2),
    ),
    st.one_of(
        st.sampled_from(
            [b"index.m3u8", b"0.m4s", b"3.m4s", b"3.1.m4s", b"4.0.m4s", b"4.1.m4s", b"4.2.m4s"]
            + [b"5.0.m4s", b"0.ts", b"3.ts", b"init-1.mp4", b"init-0.mp4"]
        ),
        PIECES,
    ),
).map(lambda t: b"/" + b"/".join([t[0], t[1], *t[2], t[3]]))
PATHS = st.one_of(
    MEDIA_PATHS,
    st.lists(st.one_of(PIECES, st.binary(max_size=12)), min_size=0, max_size=7).map(
        lambda ps: b"/" + b"/".join(ps)
    ),
)
URLS = st.one_of(
    st.binary(max_size=200),
    st.tuples(PATHS, st.one_of(st.none(), QUERIES)).map(
        lambda pq: pq[0] if pq[1] is None else pq[0] + b"?" + pq[1]
    ),
)
HEADER_NAMES = st.sampled_from([b"range", b"host", b"authorization", b"x", b"cookie"])
HEADERS = st.lists(
    st.tuples(st.one_of(HEADER_NAMES, st.binary(max_size=10)), st.binary(max_size=40)),
    max_size=6,
)


@FUZZ
@given(URLS, HEADERS)
@example(b"/live/\xff/360p/0.m4s", [])
@example(b"/\xff\xfe/ll/index.m3u8", [])
@example(b"/paid/\xff/360p/index.m3u8?token=x", [])
@example(b"/live/ll/360p/index.m3u8?_HLS_msn=" + b"9" * 5000, [])
def test_fast_never_raises(url: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    got = check_fast(url, headers)
    event("none" if got is None else "hold" if isinstance(got, Hold) else "200")


@cache
def loop() -> asyncio.AbstractEventLoop:
    """One event loop for every ASGI call: a rendition's asyncio.Event binds to the first
    loop that waits on it, as in a node, which has one."""
    return asyncio.new_event_loop()


def asgi(
    method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes]:
    """The ASGI path's answer (status, body), as uvicorn would call it."""
    _, guard = served()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "headers": headers,
    }

    async def run() -> None:
        # A live stream's blocking reload may be held (up to 3 target durations):
        # held is an answer too, so it is given a moment and then let go.
        try:
            await asyncio.wait_for(guard(scope, receive, send), 0.05)
        except TimeoutError:
            sent.append({"type": "http.response.start", "status": 0})

    loop().run_until_complete(run())
    start = sent[0]
    assert start["type"] == "http.response.start"
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], body


@FUZZ
@given(
    st.sampled_from(["GET", "HEAD", "OPTIONS", "POST", "DELETE"]),
    PATHS.map(lambda p: p.decode("latin-1")),
    st.one_of(QUERIES, st.binary(max_size=40)),
    HEADERS,
)
def test_the_asgi_path_answers_below_500(
    method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [(k.lower(), v) for k, v in headers]
    status, _ = asgi(method, path, query, headers)
    event(f"status {status}")
    assert status < 500, (method, path, query, headers)


# -- valid forms parse as they must ------------------------------------------------------


@FUZZ
@given(st.sampled_from(["360p", "180p"]), st.integers(0, SEGMENTS - 1))
def test_a_listed_segment_is_its_bytes(rendition: str, msn: int) -> None:
    block, body = check_fast(f"/live/ll/{rendition}/{msn}.m4s".encode(), [])  # type: ignore[misc]
    assert body == seg_data(msn) and b"video/mp4" in block
    block, body = check_fast(f"/tv/ts/{rendition}/{msn}.ts".encode(), [])  # type: ignore[misc]
    assert body == seg_data(msn) and b"video/mp2t" in block


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        (b"/live/ll/index.m3u8", "master"),
        (b"/live/ll/360p/index.m3u8", "playlist"),
        (b"/live/ll/360p/init-1.mp4", "init"),
        (b"/live/ended/180p/index.m3u8", "playlist"),
    ],
)
def test_the_other_forms_are_answered(url: bytes, kind: str) -> None:
    app, _ = served()
    s = app.store.get(*url.decode().split("/")[1:3])
    assert s is not None
    track = s.renditions["180p" if b"180p" in url else "360p"]
    want = {"master": s.master, "playlist": track.playlist, "init": track.inits.get(1)}[kind]
    got = check_fast(url, [])
    assert isinstance(got, tuple) and got[1] == want


def kept_parts() -> list[tuple[str, int, int]]:
    """(rendition, msn, part) of every part the store still holds (about 3 segments' worth)."""
    app, _ = served()
    s = app.store.get("live", "ll")
    assert s is not None
    return sorted((n, *k) for n, t in s.renditions.items() for k in t.parts)


@FUZZ
@given(st.deferred(lambda: st.sampled_from(kept_parts())))
def test_a_listed_part_is_its_bytes(at: tuple[str, int, int]) -> None:
    rendition, msn, part = at
    got = check_fast(f"/live/ll/{rendition}/{msn}.{part}.m4s".encode(), [])
    assert isinstance(got, tuple) and got[1] == part_data(msn, part)


@FUZZ
@given(st.integers(0, SEGMENTS + 1), st.one_of(st.none(), st.integers(0, PARTS + 2)))
def test_blocking_reloads_answer_or_hold(msn: int, part: int | None) -> None:
    """Reached: the playlist now; the hinted part or one just ahead: a Hold; beyond
    what can come (§6.2.5.2): the ASGI path's 400."""
    app, _ = served()
    s = app.store.get("live", "ll")
    assert s is not None
    track = s.renditions["360p"]
    q = f"_HLS_msn={msn}" + ("" if part is None else f"&_HLS_part={part}")
    got = check_fast(f"/live/ll/360p/index.m3u8?{q}".encode(), [])
    if track.reached(msn, part):
        assert isinstance(got, tuple) and got[1] == track.playlist
        assert b"max-age=2" in got[0]
    else:
        assert got is None or isinstance(got, Hold)
    skipped = check_fast(f"/live/ll/360p/index.m3u8?{q}&_HLS_skip=YES".encode(), [])
    if track.reached(msn, part):
        assert isinstance(skipped, tuple) and skipped[1] == track.playlist_skip


@FUZZ
@given(st.text(max_size=30))
def test_any_range_header_sends_the_request_to_the_asgi_path(value: str) -> None:
    assert check_fast(b"/live/ll/360p/0.m4s", [(b"range", value.encode())]) is None


@FUZZ
@given(st.binary(max_size=40), st.integers(0, 10_000))
def test_parse_range_takes_any_header(header: bytes, size: int) -> None:
    try:
        got = parse_range(header, size)
    except BadRange:
        return
    if got is not None:
        first, last = got
        assert 0 <= first <= last < size


@FUZZ
@given(st.integers(0, 20_000), st.integers(0, 20_000), st.integers(1, 10_000))
def test_parse_range_valid_forms(first: int, last: int, size: int) -> None:
    spec = f"bytes={first}-{last}".encode()
    if first >= size:
        with pytest.raises(BadRange):
            parse_range(spec, size)
    elif last < first:
        assert parse_range(spec, size) is None
    else:
        assert parse_range(spec, size) == (first, min(last, size - 1))
    suffix = parse_range(f"bytes=-{last + 1}".encode(), size)
    assert suffix == (max(0, size - last - 1), size - 1)
    if first < size:
        assert parse_range(f"bytes={first}-".encode(), size) == (first, size - 1)


@FUZZ
@given(st.text(max_size=200))
def test_the_stream_name_rule_takes_any_text(name: str) -> None:
    problem = stream_name_problem(name)
    assert problem is None or isinstance(problem, str)


@FUZZ
@given(
    st.one_of(
        st.text(max_size=300),
        st.builds(lambda b, m: b + "." + m, st.text(max_size=200), st.text(max_size=50)),
        st.binary(max_size=300).map(
            lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode() + ".AA"
        ),
    )
)
@example(base64.urlsafe_b64encode(b"[" * 1500).rstrip(b"=").decode() + ".AA")
@example(base64.urlsafe_b64encode(b'{"v":' * 400).rstrip(b"=").decode() + ".AA")
def test_token_verification_takes_any_text(text: str) -> None:
    """Any text is a valid token or a TokenError, never another exception."""
    try:
        verify(text, KEYS, "play", "paid", "ll", time.time())
    except TokenError:
        pass
    app, _ = served()
    assert app.tokens is not None and not app.tokens.valid(text, "paid", "ll")


@FUZZ
@given(st.sampled_from(["360p", "180p"]), st.integers(0, SEGMENTS - 1))
def test_a_verified_token_is_answered_and_a_bad_one_goes_to_asgi(rendition: str, msn: int) -> None:
    good = token().encode()
    got = check_fast(f"/paid/ll/{rendition}/{msn}.m4s?token=".encode() + good, [])
    assert isinstance(got, tuple) and got[1] == seg_data(msn)
    bad = token(stream="other").encode()
    assert check_fast(f"/paid/ll/{rendition}/{msn}.m4s?token=".encode() + bad, []) is None
    status, _ = asgi("GET", f"/paid/ll/{rendition}/{msn}.m4s", b"token=" + bad, [])
    assert status == 403


@pytest.mark.parametrize("nest", [b"[", b'{"v":'])
def test_a_deeply_nested_token_is_malformed_not_a_crash(nest: bytes) -> None:
    """Hypothesis raises the recursion limit while it runs, so this one runs without it:
    claims nested past Python's limit once escaped verify as RecursionError (a 500 from
    the playback guard, a logged traceback on the fast path)."""
    text = base64.urlsafe_b64encode(nest * (1500 // len(nest))).rstrip(b"=").decode() + ".AA"
    with pytest.raises(TokenError, match="cannot be decoded"):
        verify(text, KEYS, "play", "paid", "ll", time.time())
    status, body = asgi("GET", "/paid/ll/360p/index.m3u8", b"token=" + text.encode(), [])
    assert status == 403 and b"malformed" in body
    assert check_fast(b"/paid/ll/360p/index.m3u8?token=" + text.encode(), []) is None
