"""Playback tokens: the guard refuses every wrong token and carries a good one through playlists."""

from __future__ import annotations

import os
import subprocess
import sys

import av
import httpx
import m3u8
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nodeutil import SMALL, SMALL_LADDER, NodeProcess, Publisher, wait_for
from prometheus_client import CollectorRegistry

from distribute.access import PlaybackGuard, PlaybackMetrics, TokenCheck, rewrite_playlist
from tokens import sign

NOW = 1_800_000_000
KEYS = {"k1": "school-secret-0123456789", "k0": "older-secret-0123456789"}
OTHER = {"x1": "other-tenant-secret-0123"}

LLHLS = """#EXTM3U
#EXT-X-VERSION:9
#EXT-X-TARGETDURATION:2
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.0
#EXT-X-PART-INF:PART-TARGET=0.333
#EXT-X-MEDIA-SEQUENCE:10
#EXT-X-MAP:URI="init.mp4"
#EXTINF:2.0,
10.m4s
#EXT-X-PART:DURATION=0.333,URI="11.0.m4s",INDEPENDENT=YES
#EXT-X-PRELOAD-HINT:TYPE=PART,URI="11.1.m4s"
#EXT-X-RENDITION-REPORT:URI="../240p/index.m3u8",LAST-MSN=11,LAST-PART=0
"""

MASTER = """#EXTM3U
#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360
360p/index.m3u8
"""


def play(
    key: str,
    tenant: str = "school",
    stream: str = "maths",
    expires: int = NOW + 60,
    action: str = "play",
    keys: dict[str, str] = KEYS,
) -> str:
    return sign(keys[key], key, action, tenant, stream, expires)


async def _inner(scope, receive, send):  # type: ignore[no-untyped-def]
    body = (
        MASTER.encode()
        if scope["path"].endswith("index.m3u8") and scope["path"].count("/") == 3
        else (LLHLS.encode() if scope["path"].endswith(".m3u8") else b"\x47" * 188)
    )
    ctype = b"application/vnd.apple.mpegurl" if scope["path"].endswith(".m3u8") else b"video/mp4"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _guard() -> tuple[PlaybackGuard, CollectorRegistry]:
    registry = CollectorRegistry()
    keys = {"school": KEYS, "other": OTHER}
    tokens = TokenCheck(keys.get, clock=lambda: NOW)
    return PlaybackGuard(_inner, tokens, PlaybackMetrics(registry)), registry


async def _get(path: str, query: str = "", headers: list | None = None) -> tuple[int, dict, bytes]:
    guard, _ = _guard()
    sent: list[dict] = []

    async def send(m):  # type: ignore[no-untyped-def]
        sent.append(m)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query.encode(),
        "headers": headers or [],
        "client": ("127.0.0.1", 5000),
    }
    await guard(scope, None, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


async def test_open_tenant_passes_untouched() -> None:
    status, _, body = await _get("/live/class/index.m3u8")
    assert status == 200 and b"token" not in body


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing"),
        ("garbage", "malformed"),
        (play("k1", expires=NOW - 1), "expired"),
        (play("k1")[:-4] + "AAAA", "forged"),
        (play("k1", stream="history"), "wrong_stream"),
        (play("k1", action="publish"), "wrong_action"),
        (play("x1", tenant="school", keys=OTHER), "unknown_key"),
    ],
)
async def test_every_wrong_token_is_refused(
    token: str | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    query = f"token={token}" if token else ""
    for path in (
        "/school/maths/index.m3u8",
        "/school/maths/360p/index.m3u8",
        "/school/maths/360p/11.0.m4s",
    ):
        caplog.clear()
        with caplog.at_level("WARNING", logger="distribute.access"):
            status, headers, body = await _get(path, query)
        assert status == 403, (path, reason)
        assert f"({reason})".encode() in body
        assert headers[b"cache-control"] == b"no-store"
        # A player on another origin can read the refusal; the log says why.
        assert headers[b"access-control-allow-origin"] == b"*"
        assert any(
            f"({reason})" in r.getMessage() and "school/maths" in r.getMessage()
            for r in caplog.records
        ), caplog.text


async def test_a_token_of_another_tenant_with_the_same_key_is_refused() -> None:
    """Tenants sharing a key id and secret: the tenant inside the token decides."""
    shared = {"school": KEYS, "other": KEYS}
    tokens = TokenCheck(shared.get, clock=lambda: NOW)
    guard = PlaybackGuard(_inner, tokens, PlaybackMetrics(CollectorRegistry()))
    token = play("k1", tenant="other")
    for path, want in (("/school/maths/360p/10.m4s", 403), ("/other/maths/360p/10.m4s", 200)):
        sent: list[dict] = []

        async def send(m, sent=sent):  # type: ignore[no-untyped-def]
            sent.append(m)

        scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "query_string": f"token={token}".encode(),
            "headers": [],
            "client": ("127.0.0.1", 5000),
        }
        await guard(scope, None, send)
        assert sent[0]["status"] == want, path
        if want == 403:
            assert b"(wrong_stream)" in sent[1]["body"] and b"other/maths" in sent[1]["body"]


async def test_other_tenants_token_never_opens_this_tenant() -> None:
    token = play("x1", tenant="other", stream="maths", keys=OTHER)
    status, _, body = await _get("/school/maths/360p/10.m4s", f"token={token}")
    assert status == 403 and b"unknown_key" in body
    status, _, _ = await _get("/other/maths/360p/10.m4s", f"token={token}")
    assert status == 200


async def test_rotated_keys_are_both_valid_and_bearer_works() -> None:
    for key in ("k0", "k1"):
        assert (await _get("/school/maths/360p/10.m4s", f"token={play(key)}"))[0] == 200
    bearer = [(b"authorization", b"Bearer " + play("k1").encode())]
    assert (await _get("/school/maths/360p/10.m4s", headers=bearer))[0] == 200


async def test_token_is_carried_into_every_uri() -> None:
    token = play("k1")
    status, headers, body = await _get("/school/maths/index.m3u8", f"token={token}")
    assert status == 200 and int(headers[b"content-length"]) == len(body)
    master = m3u8.loads(body.decode())
    assert master.playlists[0].uri == f"360p/index.m3u8?token={token}"
    status, _, body = await _get("/school/maths/360p/index.m3u8", f"token={token}&_HLS_msn=11")
    media = m3u8.loads(body.decode())
    assert media.segment_map[0].uri == f"init.mp4?token={token}"
    assert media.segments[0].uri == f"10.m4s?token={token}"
    text = body.decode()
    for uri in ("11.0.m4s", "11.1.m4s", "../240p/index.m3u8"):
        assert f'URI="{uri}?token={token}"' in text


@given(st.lists(st.text(alphabet="abc./?=&_-0123456789", min_size=1, max_size=12), max_size=8))
def test_rewrite_reaches_every_uri_line(uris: list[str]) -> None:
    body = "#EXTM3U\n" + "".join(f"#EXTINF:2,\n{u}\n" for u in uris)
    out = rewrite_playlist(body.encode(), "T").decode().splitlines()
    for line in out:
        if line and not line.startswith("#"):
            assert "token=" in line


# -- a real node, real players --------------------------------------------------------------

NODE_KEYS = (
    "{live: {keys: {k1: live-secret-0123456789}}, other: {keys: {x1: other-secret-0123456789}}}"
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    n = NodeProcess(
        tmp_path_factory.mktemp("playback") / "node.log",
        NEARCAST_TRANSCODE_LADDER=SMALL_LADDER,
        NEARCAST_TRANSCODE_CAPACITY_UNITS="8",
        NEARCAST_RTMP_TENANTS="[live, other]",
        NEARCAST_PLAYBACK_TENANTS=NODE_KEYS,
    )
    pub = Publisher(SMALL, n.rtmp("live/cls"), loop=True)
    url = _play_url(n, "live", "cls")
    wait_for(lambda: _segments(url) >= 2, 60, "two segments in every variant")
    yield n
    pub.stop()
    n.stop()


def _segments(url: str) -> int:
    """Fewest segments listed by any variant of the (signed) multivariant playlist."""
    r = httpx.get(url, timeout=10)
    if r.status_code != 200:
        return 0
    base = url.split("/index.m3u8")[0]
    variants = m3u8.loads(r.text).playlists
    counts = [
        len(m3u8.loads(httpx.get(f"{base}/{p.uri}", timeout=10).text).segments) for p in variants
    ]
    return min(counts, default=0)


def _play_url(n: NodeProcess, tenant: str, stream: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "nearcast", "token", tenant, stream, "--play", "--ttl", "600"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={
            **os.environ,
            "NEARCAST_PLAYBACK_TENANTS": NODE_KEYS,
            "NEARCAST_RTMP_TENANTS": "[live, other]",
            "NEARCAST_HTTP_LISTEN": f"127.0.0.1:{n.http_port}",
        },
    )
    url = out.stdout.strip()
    assert url.startswith(f"{n.http}/{tenant}/{stream}/index.m3u8?token=")
    return url


def test_ffmpeg_plays_with_the_cli_token_and_every_uri_carries_it(node: NodeProcess) -> None:
    url = _play_url(node, "live", "cls")
    with av.open(url, timeout=(10, 10)) as c:
        video = c.streams.video[0]
        frames = 0
        for _frame in c.decode(video):
            frames += 1
            if frames >= 10:
                break
    assert frames == 10
    token = url.split("token=")[1]
    master = m3u8.loads(httpx.get(url, timeout=10).text)
    for p in master.playlists:
        assert p.uri.endswith(f"?token={token}")
        media = m3u8.loads(httpx.get(f"{node.http}/live/cls/{p.uri}", timeout=10).text)
        # The newest whole segment (an LL-HLS playlist ends with the parts of the next);
        # every part and the init segment carry the token too.
        seg = [s.uri for s in media.segments if s.uri][-1]
        assert seg.endswith(f"?token={token}")
        parts = [x.uri for s in media.segments for x in s.parts]
        assert parts and all(u.endswith(f"?token={token}") for u in parts)
        assert all(m.uri.endswith(f"?token={token}") for m in media.segment_map)
        r = httpx.get(f"{node.http}/live/cls/{p.uri.split('/')[0]}/{seg}", timeout=10)
        assert r.status_code == 200 and len(r.content) > 1000


def test_media_without_or_with_a_foreign_token_is_403(node: NodeProcess) -> None:
    media = m3u8.loads(httpx.get(_play_url(node, "live", "cls"), timeout=10).text)
    variant = media.playlists[0].uri.split("?")[0]
    seg_list = httpx.get(f"{node.http}/live/cls/{media.playlists[0].uri}", timeout=10).text
    seg = [s.uri for s in m3u8.loads(seg_list).segments if s.uri][-1].split("?")[0]
    foreign = _play_url(node, "other", "cls").split("token=")[1]
    wrong_stream = _play_url(node, "live", "other").split("token=")[1]
    for path in ("index.m3u8", variant, f"{variant.split('/')[0]}/{seg}"):
        for query, reason in (
            ("", "missing"),
            (f"?token={foreign}", "unknown_key"),
            (f"?token={wrong_stream}", "wrong_stream"),
        ):
            r = httpx.get(f"{node.http}/live/cls/{path}{query}", timeout=10)
            assert r.status_code == 403, (path, query)
            assert f"({reason})" in r.text
    assert "playback_rejected_total" in node.get("/metrics").text
    # The watch page itself is static and open; the API is not a media path.
    assert node.get("/live/cls/watch").status_code == 200
    assert node.get("/v1/streams").status_code == 200
