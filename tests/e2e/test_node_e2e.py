"""The vertical slice end to end: FFmpeg publishes over RTMP, FFmpeg reads HLS.

One real ``nearcast node`` process serves the whole module; the publisher is
FFmpeg's RTMP client (bundled in PyAV), the reader FFmpeg's HLS demuxer.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import av
import m3u8
import pytest
from nodeutil import (
    SMALL,
    SMALL_LADDER,
    SMALL_SIZES,
    NodeProcess,
    Publisher,
    segment_numbers,
    wait_for,
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    log = tmp_path_factory.mktemp("node") / "node.log"
    n = NodeProcess(
        log,
        NEARCAST_TRANSCODE_LADDER=SMALL_LADDER,
        NEARCAST_HLS_GRACE_PERIOD="4",
        NEARCAST_RTMP_HANDSHAKE_TIMEOUT="3",
        # A fixed capacity: calibrated on a busy machine it can be too low for two
        # transcoded streams, which are then passed through and these tests fail.
        NEARCAST_TRANSCODE_CAPACITY_UNITS="4",
    )
    yield n
    n.stop()


@pytest.fixture(scope="module")
def live(node: NodeProcess) -> Iterator[Publisher]:
    pub = Publisher(SMALL, node.rtmp("live/class1"), loop=True)
    wait_for(lambda: _ready(node, "live/class1", 3), 60, "3 segments in every rendition")
    yield pub
    pub.stop()


def _ready(node: NodeProcess, path: str, segments: int) -> bool:
    r = node.get(f"/{path}/index.m3u8")
    if r.status_code != 200:
        return False
    master = m3u8.loads(r.text)
    if len(master.playlists) != 3:
        return False
    for p in master.playlists:
        media = node.get(f"/{path}/{p.uri}")
        if media.status_code != 200 or len(segment_numbers(media.text)) < segments:
            return False
    return True


def _idr(segment: m3u8.Segment) -> bool:
    """An LL-HLS segment whose first part is INDEPENDENT (starts with an IDR)."""
    return bool(segment.parts) and bool(segment.parts[0].independent)


def _msns(node: NodeProcess, path: str) -> list[int]:
    return segment_numbers(node.get(f"/{path}/index.m3u8").text)


def test_master_playlist_attributes(node: NodeProcess, live: Publisher) -> None:
    r = node.get("/live/class1/index.m3u8")
    assert r.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert r.headers["cache-control"] == "max-age=1"
    master = m3u8.loads(r.text)
    assert {p.uri for p in master.playlists} == {f"{n}/index.m3u8" for n in SMALL_SIZES}
    for p in master.playlists:
        si = p.stream_info
        name = p.uri.split("/")[0]
        assert si.resolution == SMALL_SIZES[name]
        assert si.bandwidth > si.average_bandwidth > 0
        assert si.codecs.startswith("avc1.") and si.codecs.endswith(",mp4a.40.2")
        assert si.frame_rate == pytest.approx(30.0)
        assert si.closed_captions == "NONE"  # players need not probe segments for 608/708


def test_ffmpeg_hls_demuxer_decodes_every_variant(node: NodeProcess, live: Publisher) -> None:
    with av.open(f"{node.http}/live/class1/index.m3u8", timeout=(10, 10)) as c:
        videos = [s for s in c.streams.video]
        assert sorted((s.codec_context.width, s.codec_context.height) for s in videos) == sorted(
            SMALL_SIZES.values()
        )
        seen: dict[int, tuple[int, int]] = {}
        for packet in c.demux(videos):
            for frame in packet.decode():
                seen[packet.stream.index] = (frame.width, frame.height)
            if len(seen) == len(videos):
                break
    assert sorted(seen.values()) == sorted(SMALL_SIZES.values())


def test_segments_aligned_across_renditions(node: NodeProcess, live: Publisher) -> None:
    def independent() -> list[int] | None:
        """Segments every rendition lists that start with an IDR: LL-HLS lists the first
        worker segment as a three-part lead and the rest, which starts mid-GOP."""
        lists = {n: node.get(f"/live/class1/{n}/index.m3u8").text for n in SMALL_SIZES}
        starts = [
            {int(x.uri.split(".")[0]) for x in m3u8.loads(t).segments if x.uri and _idr(x)}
            for t in lists.values()
        ]
        common = sorted(set.intersection(*starts))
        return common if len(common) >= 2 else None

    msns = wait_for(independent, 30, "two whole segments in every rendition")
    lists = {n: node.get(f"/live/class1/{n}/index.m3u8").text for n in SMALL_SIZES}
    for text in lists.values():
        media = m3u8.loads(text)
        for seg in media.segments:
            assert round(seg.duration) <= media.target_duration
    for msn in msns[-2:]:
        starts = []
        for name in SMALL_SIZES:
            # CMAF (the default delivery): the segment decodes behind its init segment.
            init = m3u8.loads(lists[name]).segment_map[-1].uri
            r = node.get(f"/live/class1/{name}/{msn}.m4s")
            assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
            data = node.get(f"/live/class1/{name}/{init}").content + r.content
            with av.open(io.BytesIO(data), format="mp4") as c:
                v = c.streams.video[0]
                first = next(p for p in c.demux(v) if p.size)
                assert first.is_keyframe, f"{name} segment {msn} does not start with an IDR"
                starts.append(float(first.pts * v.time_base))
        assert max(starts) - min(starts) <= 1 / 30 + 1e-6, f"segment {msn} starts differ: {starts}"


def test_streams_api_health_and_metrics(node: NodeProcess, live: Publisher) -> None:
    assert node.get("/healthz").json() == {"status": "ok"}
    assert node.get("/readyz").json()["ready"] is True
    streams = node.get("/v1/streams").json()["streams"]
    s = next(x for x in streams if x["stream"] == "class1")
    assert s["tenant"] == "live"
    assert s["source"]["width"] == 640 and s["source"]["codec"] == "h264"
    assert s["source"]["fps"] == pytest.approx(30.0)
    assert s["source"]["bitrate"] > 0
    assert s["uptime"] > 0
    assert {r["name"] for r in s["renditions"]} == set(SMALL_SIZES)
    metrics = node.get("/metrics").text
    for name in (
        "ingest_sessions",
        "ingest_bytes_total",
        "transcode_workers",
        "hls_requests_total",
    ):
        assert name in metrics
    page = node.get("/")
    assert page.status_code == 200 and "hls.min.js" in page.text
    assert node.get("/static/hls.min.js").status_code == 200


def _raw(node: NodeProcess, payload: bytes) -> bytes:
    """Send bytes, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", node.rtmp_port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def _handshake() -> bytes:
    return b"\x03" + bytes(1536) + bytes(1536)


# A truncated chunk: a type-0 header announcing a 100-byte command, then EOF.
TRUNCATED = _handshake() + bytes([0x03, 0, 0, 0, 0, 0, 100, 0x14, 0, 0, 0, 0]) + b"\x02\x00"


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 20, "protocol"),
        ("wrong version", b"\x06" + bytes(3072), "protocol"),
        ("truncated chunk", TRUNCATED, None),
    ],
)
def test_bad_connections_are_closed_and_counted(
    node: NodeProcess, live: Publisher, name: str, payload: bytes, reason: str | None
) -> None:
    before_msn = max(_msns(node, "live/class1/360p"))
    before = node.metric("ingest_rejected_total", reason=reason) if reason else 0.0
    _raw(node, payload)  # returns only once the node has closed the connection
    if reason:
        wait_for(
            lambda: node.metric("ingest_rejected_total", reason=reason) > before,
            10,
            f"rejected{{reason={reason}}}",
        )
    # The good stream is untouched: it keeps publishing and producing segments.
    assert live.alive() and live.error is None
    wait_for(lambda: max(_msns(node, "live/class1/360p")) > before_msn, 15, "a new segment")


def test_unknown_tenant_is_refused(node: NodeProcess, live: Publisher) -> None:
    before = node.metric("ingest_rejected_total", reason="tenant")
    pub = Publisher(SMALL, node.rtmp("nosuch/class1"), loop=False)
    pub.wait(20)
    assert pub.error is not None
    wait_for(
        lambda: node.metric("ingest_rejected_total", reason="tenant") > before,
        10,
        "rejected{reason=tenant}",
    )
    assert "nosuch" in node.log() and live.alive()


def test_two_publishers_at_once(node: NodeProcess, live: Publisher) -> None:
    other = Publisher(SMALL, node.rtmp("live/class2"), loop=True)
    try:
        wait_for(lambda: _ready(node, "live/class2", 2), 60, "the second stream")
        a0, b0 = max(_msns(node, "live/class1/360p")), max(_msns(node, "live/class2/360p"))
        wait_for(
            lambda: (
                max(_msns(node, "live/class1/360p")) > a0
                and max(_msns(node, "live/class2/360p")) > b0
            ),
            20,
            "both streams to advance",
        )
    finally:
        other.stop()


def test_reconnect_within_grace_continues_with_discontinuity(node: NodeProcess) -> None:
    first = Publisher(SMALL, node.rtmp("live/rc"), loop=False)
    first.wait(30)
    before = _msns(node, "live/rc/360p")
    assert before and "#EXT-X-ENDLIST" not in node.get("/live/rc/360p/index.m3u8").text
    second = Publisher(SMALL, node.rtmp("live/rc"), loop=False)
    second.wait(30)
    text = wait_for(
        lambda: (
            len(segment_numbers(t := node.get("/live/rc/360p/index.m3u8").text)) > len(before) and t
        ),
        15,
        "segments of the second publish",
    )
    assert "#EXT-X-DISCONTINUITY" in text
    after = segment_numbers(text)
    # The same playlist: its numbering continues where the first publish stopped.
    new = [m for m in after if m > before[-1]]
    assert after == sorted(after) and new and new[0] == before[-1] + 1, (before, after)
    # No publisher within the grace period (4 s here): the playlist ends.
    wait_for(lambda: "#EXT-X-ENDLIST" in node.get("/live/rc/360p/index.m3u8").text, 15, "ENDLIST")


def test_sigterm_stops_node_and_workers(tmp_path: Path) -> None:
    n = NodeProcess(tmp_path / "node.log", NEARCAST_TRANSCODE_LADDER=SMALL_LADDER)
    pub = Publisher(SMALL, n.rtmp("live/bye"), loop=True)
    try:
        wait_for(lambda: n.children(), 30, "a transcode worker")
        workers = n.children()
    finally:
        code = n.stop()
        pub.stop()
    assert code == 0, n.log()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the node"
