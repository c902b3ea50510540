"""A node's HTTP app, as assembled: what an anonymous caller gets, and what a token opens.

The node is built in-process (not started): its ``http_app`` is the ASGI stack the
HTTP and HTTPS listeners serve (playback guard, media router, API).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from media import StreamKey
from nearcast.config import load
from nearcast.node import Node
from tokens import sign

OPERATOR = "operator-token-0123456789"
METRICS = "metrics-token-0123456789"
SCHOOL_KEY = "school-play-secret-0123456789"
MASTER = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\n360p/index.m3u8\n"
MEDIA = (
    "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n"
    '#EXT-X-MAP:URI="init-0.mp4"\n#EXTINF:2.000,\n000001-2000.m4s\n#EXT-X-ENDLIST\n'
)
SEGMENT = b"\x00\x00\x00\x10moof" + b"\x00" * 2000


def _record(root: Path, tenant: str, stream: str) -> None:
    """A finished recording as distribute.record lays it out on disk."""
    d = root / tenant / stream
    (d / "360p").mkdir(parents=True)
    (d / "index.m3u8").write_text(MASTER)
    (d / "360p" / "index.m3u8").write_text(MEDIA)
    (d / "360p" / "init-0.mp4").write_bytes(b"\x00\x00\x00\x08ftyp")
    (d / "360p" / "000001-2000.m4s").write_bytes(SEGMENT)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[Node, httpx.AsyncClient]]:
    _record(tmp_path, "school", "maths")
    _record(tmp_path, "live", "open")
    config = load(
        environ={
            "NEARCAST_RTMP_TENANTS": "[live, school]",
            "NEARCAST_INGEST_OPERATOR_TOKEN": OPERATOR,
            "NEARCAST_HTTP_METRICS_TOKEN": METRICS,
            "NEARCAST_RECORD_DIR": str(tmp_path),
            "NEARCAST_RECORD_TENANTS": "{live: all, school: all}",
            "NEARCAST_PLAYBACK_TENANTS": f"{{school: {{keys: {{k1: {SCHOOL_KEY}}}}}}}",
            "NEARCAST_TRANSCODE_CAPACITY_UNITS": "8",
        }
    )
    n = Node(config)
    n.store.open(StreamKey("school", "maths"))
    n.store.open(StreamKey("live", "open"))
    transport = httpx.ASGITransport(app=n.http_app, client=("198.51.100.9", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        yield n, client
    if n.recorder is not None:
        n.recorder.close()


def _play(stream: str = "maths", tenant: str = "school") -> str:
    return sign(SCHOOL_KEY, "k1", "play", tenant, stream, int(time.time()) + 300)


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_listing_hides_the_guarded_tenant_from_anonymous_callers(
    node: tuple[Node, httpx.AsyncClient],
) -> None:
    _n, c = node
    anonymous = (await c.get("/v1/streams")).json()["streams"]
    assert [(s["tenant"], s["stream"]) for s in anonymous] == [("live", "open")]
    assert all("ingest" not in s for s in anonymous)
    assert (await c.get("/v1/streams/school/maths")).status_code == 404
    full = (await c.get("/v1/streams", headers=_bearer(OPERATOR))).json()["streams"]
    assert {(s["tenant"], s["stream"]) for s in full} == {("live", "open"), ("school", "maths")}
    assert all("ingest" in s for s in full)  # null: nobody publishes


async def test_metrics_need_the_metrics_token(node: tuple[Node, httpx.AsyncClient]) -> None:
    _n, c = node
    assert (await c.get("/metrics")).status_code == 401
    r = await c.get("/metrics", headers=_bearer(METRICS))
    assert r.status_code == 200 and "ingest_rejected_total" in r.text


@pytest.mark.parametrize(
    "path",
    [
        "vod/index.m3u8",
        "vod/360p/index.m3u8",
        "vod/360p/init-0.mp4",
        "vod/360p/000001-2000.m4s",
    ],
)
async def test_guarded_tenants_recording_needs_a_playback_token(
    node: tuple[Node, httpx.AsyncClient], path: str
) -> None:
    _n, c = node
    for query, reason in (
        ("", "missing"),
        (f"?token={_play('history')}", "wrong_stream"),
        ("?token=garbage", "malformed"),
    ):
        r = await c.get(f"/school/maths/{path}{query}")
        assert r.status_code == 403, (path, query, r.text)
        assert f"({reason})" in r.text
        assert b"moof" not in r.content and "EXTM3U" not in r.text
    token = _play()
    r = await c.get(f"/school/maths/{path}?token={token}")
    assert r.status_code == 200
    if path.endswith(".m3u8"):
        # Every URI in it carries the token, so a player follows the links.
        uris = [ln for ln in r.text.splitlines() if ln and not ln.startswith("#")]
        assert uris and all(u.endswith(f"?token={token}") for u in uris)
    # A range request for the segment is checked the same way.
    ranged = await c.get(f"/school/maths/{path}", headers={"range": "bytes=0-3"})
    assert ranged.status_code == 403


async def test_open_tenants_recording_plays_without_a_token(
    node: tuple[Node, httpx.AsyncClient],
) -> None:
    _n, c = node
    r = await c.get("/live/open/vod/360p/000001-2000.m4s")
    assert r.status_code == 200 and r.content == SEGMENT
