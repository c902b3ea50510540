"""WHEP on a real node's HTTP stack, fed live TAP packets: aiortc and Chromium play it.

The node runs in-process and its WHEP fan-out is fed by :class:`LiveTap` (what a
transcode worker sends as TAP frames), so these tests cover the node side alone;
``test_whep_e2e.py`` covers RTMP -> worker -> WHEP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from nodeutil import require_binary
from taputil import LiveTap

from distribute.whep.fanout import TapFanout, ViewerFeed
from media import MediaPacket, StreamKey
from nearcast.config import load
from nearcast.node import Node
from nearcast.whep_probe import probe_whep

KEY = StreamKey("live", "cam")
WHEP_P50_TARGET_MS = 300


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    config = load(
        environ={
            "NEARCAST_RTMP_LISTEN": "127.0.0.1:0",
            "NEARCAST_HTTP_LISTEN": "127.0.0.1:0",
            "NEARCAST_TRANSCODE_CAPACITY_UNITS": "1",
        }
    )
    n = Node(config)
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


@pytest.fixture
async def live(node: Node) -> AsyncIterator[LiveTap]:
    import asyncio

    node.whep.open(KEY)
    tap = LiveTap(asyncio.get_running_loop(), lambda p: node.whep.feed(KEY, p)).start()
    try:
        yield tap
    finally:
        tap.stop()


def _url(node: Node, path: str) -> str:
    return f"http://127.0.0.1:{node.http_port}{path}"


async def test_aiortc_viewer_reads_stamps_below_target(node: Node, live: LiveTap) -> None:
    result = await probe_whep(_url(node, "/live/cam/whep"), duration=4.0)
    s = result.summary()
    assert s["frames"] >= 60, s
    assert s["stamped"] >= 0.9 * s["frames"], s
    assert 0 <= s["latency_p50_ms"] <= WHEP_P50_TARGET_MS, s
    # The probe DELETEs its session on the way out.
    assert node.whep.sessions == {}
    assert all(not f for f in node.whep.fanouts[KEY].feeds)


async def test_signalling_errors(node: Node, live: LiveTap) -> None:
    async with httpx.AsyncClient(base_url=_url(node, ""), timeout=10) as c:
        sdp = {"Content-Type": "application/sdp"}
        r = await c.post("/live/cam/whep", content="hello", headers=sdp)
        assert r.status_code == 400 and "SDP" in r.text
        r = await c.post(
            "/live/cam/whep", content="v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", headers=sdp
        )
        assert r.status_code == 400 and "no video" in r.text
        r = await c.post(
            "/live/cam/whep", content="v=0\r\nm=video 9 RTP/AVP 96\r\nbogus", headers=sdp
        )
        assert r.status_code == 400
        r = await c.post("/live/nope/whep", content="v=0\r\nm=video 9 RTP/AVP 96\r\n", headers=sdp)
        assert r.status_code == 404 and "not live" in r.text
        r = await c.post("/live/cam/whep", content="v=0", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415 and r.headers["accept-post"] == "application/sdp"
        r = await c.options("/live/cam/whep")
        assert r.status_code == 204 and "POST" in r.headers["access-control-allow-methods"]
        r = await c.patch("/live/cam/whep/session/whatever", content="a=end-of-candidates")
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, OPTIONS"
        r = await c.delete("/live/cam/whep/session/whatever")
        assert r.status_code == 404
        # A stream that is not WebRTC-capable does not leak sessions either.
        assert node.whep.sessions == {}


async def test_create_and_delete_session(node: Node, live: LiveTap) -> None:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(base_url=_url(node, ""), timeout=10) as c:
            r = await c.post(
                "/live/cam/whep",
                content=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            )
            assert r.status_code == 201, r.text
            assert r.headers["content-type"].startswith("application/sdp")
            assert "H264/90000" in r.text and "opus/48000" in r.text
            location = r.headers["location"]
            assert location.startswith("/live/cam/whep/session/")
            assert len(node.whep.sessions) == 1
            assert len(node.whep.fanouts[KEY].feeds) == 2
            assert (await c.delete(location)).status_code == 200
            assert node.whep.sessions == {} and not node.whep.fanouts[KEY].feeds
            assert (await c.delete(location)).status_code == 404
    finally:
        await pc.close()


async def test_stream_end_closes_its_sessions(node: Node, live: LiveTap) -> None:
    import asyncio

    from aiortc import RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(base_url=_url(node, ""), timeout=10) as c:
            r = await c.post(
                "/live/cam/whep",
                content=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            )
            assert r.status_code == 201, r.text
        await pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
        node.whep.end(KEY)  # what the node does when the grace period runs out
        for _ in range(100):
            if not node.whep.sessions:
                break
            await asyncio.sleep(0.05)
        assert node.whep.sessions == {} and KEY not in node.whep.fanouts
        async with httpx.AsyncClient(base_url=_url(node, ""), timeout=10) as c:
            r = await c.post(
                "/live/cam/whep",
                content=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            )
            assert r.status_code == 404
    finally:
        await pc.close()


def test_slow_viewer_skips_to_the_next_keyframe() -> None:
    feed = ViewerFeed("video", limit=4)

    def v(i: int, key: bool = False) -> MediaPacket:
        return MediaPacket("video", "h264", i, i, b"x", keyframe=key)

    feed.push(v(0))  # a new viewer waits for a keyframe
    assert len(feed) == 0
    for i in range(1, 5):
        feed.push(v(i, key=i == 1))
    assert len(feed) == 4
    feed.push(v(5))  # full: emptied, and P-frames are dropped until the next IDR
    feed.push(v(6))
    assert len(feed) == 0 and feed.waiting_keyframe
    feed.push(v(7, key=True))
    assert len(feed) == 1 and feed.dropped == 7  # v0, the four queued, v5, v6


async def test_chromium_plays_the_watch_page_over_whep(node: Node, live: LiveTap) -> None:
    from playwright.async_api import async_playwright

    chromium = require_binary("chromium")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = await browser.new_page()
            await page.goto(_url(node, "/live/cam/watch?mode=whep"))
            await page.wait_for_function(
                "document.querySelector('video').currentTime > 0", timeout=30000
            )
            start = await page.evaluate("document.querySelector('video').currentTime")
            await page.wait_for_function(
                f"document.querySelector('video').currentTime > {start + 1.5}"
                " && window.nearcast.stamps >= 20",
                timeout=30000,
            )
            state = await page.evaluate(
                "({errors: window.nearcast.errors, lat: window.nearcast.latencies.slice(),"
                " w: document.querySelector('video').videoWidth,"
                " text: document.getElementById('latency').textContent})"
            )
            assert state["errors"] == [] and state["w"] == 640
            lat = sorted(state["lat"])
            assert 0 <= lat[len(lat) // 2] <= 1000, (
                lat
            )  # readout works; browser adds its playout delay
            assert "latency" in state["text"] and "whep" in state["text"]
            assert len(node.whep.sessions) == 1
        finally:
            await browser.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NEARCAST_WEBRTC_ICE_SERVERS": "[http://x]"}, "'webrtc.ice_servers[0]' must be a stun:"),
        ({"NEARCAST_WEBRTC_MAX_VIEWERS": "0"}, "'webrtc.max_viewers' must be at least 1"),
        ({"NEARCAST_WEBRTC_VIEWER_QUEUE_PACKETS": "4"}, "'webrtc.viewer_queue_packets' must be"),
    ],
)
def test_config_errors_name_the_key(env: dict[str, str], message: str) -> None:
    from settings import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(environ=env)


def test_tap_rendition_falls_back_to_the_lowest_rung() -> None:
    from nearcast.session import tap_rendition
    from transcode.config import TranscodeConfig

    tc = TranscodeConfig()
    assert tap_rendition("360p", tc.ladder) == "360p"
    assert tap_rendition("1080p", tc.ladder) == "360p"
    assert tap_rendition("360p", tc.profile("passthrough").ladder) == "source"


async def test_viewers_share_the_workers_packets_no_per_viewer_encode(
    node: Node, live: LiveTap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two viewers at once, with aiortc's encoders made to fail: they still play, so
    every viewer is sent the worker's H.264 and Opus packets, packetized, never encoded."""
    import asyncio

    import aiortc.codecs.h264 as h264
    import aiortc.codecs.opus as opus

    def no_encode(*_: object, **__: object) -> None:
        raise AssertionError("a per-viewer encode happened")

    for cls, name in ((h264.H264Encoder, "encode"), (h264.H264Encoder, "_encode_frame")):
        monkeypatch.setattr(cls, name, no_encode)
    monkeypatch.setattr(opus.OpusEncoder, "encode", no_encode)
    packed: dict[str, int] = {"h264": 0, "opus": 0}
    for cls, codec in ((h264.H264Encoder, "h264"), (opus.OpusEncoder, "opus")):
        original = cls.pack

        def counting(self: object, packet: object, _o=original, _c=codec) -> object:  # type: ignore[no-untyped-def]
            packed[_c] += 1  # the patched classes are the ones the senders use
            return _o(self, packet)

        monkeypatch.setattr(cls, "pack", counting)
    url = _url(node, "/live/cam/whep")
    results = await asyncio.gather(probe_whep(url, duration=3.0), probe_whep(url, duration=3.0))
    for r in results:
        s = r.summary()
        assert s["frames"] >= 45 and s["stamped"] >= 0.9 * s["frames"], s
    assert packed["h264"] >= 90 and packed["opus"] > 0, packed


def test_every_viewer_is_handed_the_same_packet_object() -> None:
    fanout = TapFanout("live/cam", queue_limit=2)
    video = [fanout.attach("video") for _ in range(3)]
    audio = fanout.attach("audio")
    assert fanout.publish(MediaPacket("video", "h264", 0, 0, b"idr", keyframe=True)) == 0
    fanout.publish(MediaPacket("audio", "opus", 0, 0, b"opus"))
    got = [f._queue[0] for f in video]
    assert all(p is got[0] for p in got) and bytes(got[0]) == b"idr"
    assert got[0].pts == 0 and got[0].is_keyframe and bytes(audio._queue[0]) == b"opus"
    # What the slow viewers dropped is what publish reports (and the metric counts).
    fanout.publish(MediaPacket("video", "h264", 33, 33, b"p"))
    assert fanout.publish(MediaPacket("video", "h264", 66, 66, b"p")) == 3 * 2 + 3
    assert sum(f.dropped for f in video) == 9


async def test_concurrent_offers_never_pass_max_viewers() -> None:
    """Every offer awaits ICE gathering before its session counts; the slot is reserved
    before that, so ten offers at once against a limit of three make three sessions."""
    import asyncio

    from aiortc import RTCPeerConnection

    from distribute.whep.config import WebRtcConfig
    from distribute.whep.exceptions import BadOffer, TooManyViewers
    from distribute.whep.server import WhepServer

    server = WhepServer(WebRtcConfig(max_viewers=3))
    server.open(KEY)
    viewers = [RTCPeerConnection() for _ in range(10)]
    try:
        for pc in viewers:
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
        results = await asyncio.gather(
            *(server.create(KEY, pc.localDescription.sdp) for pc in viewers),
            return_exceptions=True,
        )
        created = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, TooManyViewers)]
        assert (len(created), len(refused)) == (3, 7), results
        assert len(server.sessions) == 3 and server._reserved == 0
        # A deleted session, and an offer that fails, give their slots back.
        await server.delete(KEY, created[0][0].id)
        with pytest.raises(BadOffer):
            await server.create(KEY, "v=0\r\nm=video 9 RTP/AVP 96\r\nbogus")
        assert len(server.sessions) == 2 and server._reserved == 0
        await server.create(KEY, viewers[9].localDescription.sdp)
        assert len(server.sessions) == 3
    finally:
        await server.close()
        for pc in viewers:
            await pc.close()
