"""Profile selection and admission control on a real node.

A node with room for one and a half transcodes of its default ladder: the first
stream gets the whole ladder, the next the part of it that fits, the third the
source passthrough (or is refused, per policy); ``?profile=`` and per-tenant
profiles pick named ladders.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import m3u8
import pytest
import yaml
from nodeutil import LECTURE, SMALL, SMALL_LADDER, NodeProcess, Publisher, segment_numbers, wait_for

from transcode.capacity import ladder_units
from transcode.config import Rendition

UNITS = ladder_units([Rendition(**r) for r in yaml.safe_load(SMALL_LADDER)])


def _variants(node: NodeProcess, path: str) -> list[m3u8.Playlist] | None:
    r = node.get(f"/{path}/index.m3u8")
    if r.status_code != 200:
        return None
    playlists = m3u8.loads(r.text).playlists
    for p in playlists:
        media = node.get(f"/{path}/{p.uri}")
        if media.status_code != 200 or not segment_numbers(media.text):
            return None
    return list(playlists)


def _stream(node: NodeProcess, path: str) -> dict:
    tenant, name = path.split("/")
    for s in node.get("/v1/streams").json()["streams"]:
        if s["tenant"] == tenant and s["stream"] == name:
            return s
    raise AssertionError(f"{path} not in /v1/streams")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(
        tmp_path_factory.mktemp("admission") / "node.log",
        NEARCAST_TRANSCODE_LADDER=SMALL_LADDER,
        NEARCAST_TRANSCODE_CAPACITY_UNITS=str(UNITS * 1.5),
        # No reserve: each stream takes the largest part that fits, so the steps are exact.
        NEARCAST_TRANSCODE_ADMISSION_RESERVE="0",
        NEARCAST_TRANSCODE_TENANT_PROFILES="{school: source_plus}",
        NEARCAST_RTMP_TENANTS="[live, school]",
        NEARCAST_HLS_GRACE_PERIOD="0",
    )
    yield n
    n.stop()


def test_over_capacity_streams_get_the_part_of_the_ladder_that_fits(node: NodeProcess) -> None:
    """1.5 ladders of room: the whole ladder, then its lower rungs plus the source, then
    the source alone once not even the smallest rung fits."""
    first = Publisher(SMALL, node.rtmp("live/first"), loop=True)
    publishers = [first]
    try:
        ladder = wait_for(lambda: _variants(node, "live/first"), 60, "the first stream's ladder")
        assert len(ladder) == 3
        assert _stream(node, "live/first")["profile"] == "default"
        assert _stream(node, "live/first")["left_out"] == []
        trimmed_before = node.metric("transcode_degradations_total", step="trimmed")
        publishers.append(Publisher(SMALL, node.rtmp("live/second"), loop=True))
        second = wait_for(lambda: _variants(node, "live/second"), 60, "the second stream")
        # 360p does not fit in the half ladder left: 240p and 180p do, with the source on top.
        assert sorted(p.uri for p in second) == [
            "180p/index.m3u8",
            "240p/index.m3u8",
            "source/index.m3u8",
        ]
        left = _stream(node, "live/second")["left_out"]
        assert [x["rendition"] for x in left] == ["360p"]
        assert "transcode units" in left[0]["reason"]
        master = node.get("/live/second/index.m3u8").text
        assert "# rendition 360p left out: 360p needs" in master
        assert node.metric("transcode_degradations_total", step="trimmed") == trimmed_before + 1
        passthrough_before = node.metric("transcode_degradations_total", step="passthrough")
        publishers.append(Publisher(SMALL, node.rtmp("live/third"), loop=True))
        third = wait_for(lambda: _variants(node, "live/third"), 60, "the third stream")
        # Beyond capacity: one variant, the source re-packaged at its own size.
        assert [p.uri for p in third] == ["source/index.m3u8"]
        assert third[0].stream_info.resolution == (640, 360)
        assert _stream(node, "live/third")["profile"] == "passthrough"
        assert {x["rendition"] for x in _stream(node, "live/third")["left_out"]} == {
            "360p",
            "240p",
            "180p",
        }
        after = node.metric("transcode_degradations_total", step="passthrough")
        assert after == passthrough_before + 1
        used = UNITS + ladder_units([Rendition(**r) for r in yaml.safe_load(SMALL_LADDER)][1:])
        assert node.metric("transcode_used_units") == pytest.approx(used, rel=1e-3)
    finally:
        for pub in publishers:
            pub.stop()


def test_profile_from_stream_key_and_tenant(node: NodeProcess) -> None:
    by_key = Publisher(SMALL, node.rtmp("live/keyed?profile=passthrough"), loop=True)
    by_tenant = Publisher(LECTURE, node.rtmp("school/maths"), loop=True)
    try:
        keyed = wait_for(lambda: _variants(node, "live/keyed"), 60, "?profile=passthrough")
        assert [p.uri for p in keyed] == ["source/index.m3u8"]
        school = wait_for(lambda: _variants(node, "school/maths"), 60, "the tenant's profile")
        # source_plus: the 720p source untouched, plus a 360p rung.
        sizes = {p.uri.split("/")[0]: p.stream_info.resolution for p in school}
        assert sizes == {"source": (1280, 720), "360p": (640, 360)}
        assert _stream(node, "school/maths")["profile"] == "source_plus"
    finally:
        by_key.stop()
        by_tenant.stop()


def test_unknown_profile_is_refused(node: NodeProcess) -> None:
    before = node.metric("ingest_rejected_total", reason="profile")
    pub = Publisher(SMALL, node.rtmp("live/bad?profile=nosuch"), loop=False)
    pub.wait(30)
    assert pub.error is not None
    wait_for(
        lambda: node.metric("ingest_rejected_total", reason="profile") > before, 10, "the refusal"
    )
    assert "nosuch" in node.log()


def test_refuse_policy_turns_the_publish_away(tmp_path: Path) -> None:
    n = NodeProcess(
        tmp_path / "node.log",
        NEARCAST_TRANSCODE_LADDER=SMALL_LADDER,
        # Room for less than the smallest rung (180p is 15% of the ladder).
        NEARCAST_TRANSCODE_CAPACITY_UNITS=str(UNITS / 10),
        NEARCAST_TRANSCODE_OVERFLOW="refuse",
    )
    try:
        pub = Publisher(SMALL, n.rtmp("live/full"), loop=False)
        pub.wait(30)
        assert pub.error is not None
        wait_for(
            lambda: n.metric("ingest_rejected_total", reason="capacity") == 1, 10, "the refusal"
        )
        assert "no transcode capacity" in n.log()
        assert n.get("/live/full/index.m3u8").status_code == 404
    finally:
        n.stop()
