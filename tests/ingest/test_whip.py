"""WHIP ingest end to end: real WebRTC publishers, a real node, HLS read back with FFmpeg.

Publishers: aiortc (H.264 and VP8), FFmpeg's own WHIP muxer (bundled in PyAV, run in a
child process) and headless Chromium on the node's publish page (tests/e2e/test_whip_browser.py).
Each publishes a few seconds; the node must transcode them into the ladder.
"""

from __future__ import annotations

import asyncio
import io
import math
import subprocess
import sys
import time
from collections.abc import Iterator

import av
import httpx
import m3u8
import numpy as np
import pytest
from aiortc import (
    AudioStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from nodeutil import (
    SMALL,
    NodeProcess,
    independent_segments,
    segment_bytes,
    segment_numbers,
    self_signed,
    wait_for,
)
from whiputil import LADDER, check_ladder, ended, ready

from tokens import sign

SECRET = "whip-secret-0123456789"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    log = tmp_path_factory.mktemp("node") / "node.log"
    n = NodeProcess(
        log,
        NEARCAST_TRANSCODE_LADDER=LADDER,
        NEARCAST_HLS_SEGMENT_DURATION="1",
        NEARCAST_HLS_GRACE_PERIOD="1",
        NEARCAST_TRANSCODE_CAPACITY_UNITS="8",  # no start-up calibration encode
        NEARCAST_WHIP_CONNECT_TIMEOUT="5",
        NEARCAST_WHIP_IDLE_TIMEOUT="3",
        NEARCAST_RTMP_TENANTS="[live, secure]",
        NEARCAST_INGEST_AUTH_TENANTS=f"{{secure: {{keys: {{k1: {SECRET}}}}}}}",
        NEARCAST_INGEST_OPERATOR_TOKEN="operator-secret",
        # The module's many publishes all come from loopback.
        NEARCAST_INGEST_MAX_PUBLISH_ATTEMPTS_PER_IP="0",
    )
    yield n
    n.stop()


# -- helpers -----------------------------------------------------------------------------


class MovingPicture(VideoStreamTrack):
    """A 320x240 test picture that changes every frame (a still image compresses to nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.zeros((240, 320, 3), np.uint8)
        x = (self.n * 4) % 320
        img[:, x : x + 40] = (255, 200, 0)
        img[(self.n * 2) % 240 :, :, 2] = 128
        self.n += 1
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class Tone(AudioStreamTrack):
    """A 440 Hz tone, 20 ms frames, 48 kHz stereo (what a microphone track gives aiortc)."""

    def __init__(self) -> None:
        super().__init__()
        self.samples = 0

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()  # paces in real time; silence
        n = frame.samples
        t = (np.arange(n) + self.samples) / frame.sample_rate
        self.samples += n
        tone = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16)
        data = np.repeat(tone, len(frame.layout.channels)).reshape(1, -1)
        out = av.AudioFrame.from_ndarray(data, format="s16", layout=frame.layout.name)
        out.sample_rate, out.pts, out.time_base = frame.sample_rate, frame.pts, frame.time_base
        return out


async def aiortc_publish(url: str, codec: str, seconds: float, *, delete: bool = True) -> str:
    """Publish a synthetic camera + microphone over WHIP with aiortc; returns the session URL."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver(MovingPicture(), direction="sendonly")
    pc.addTransceiver(Tone(), direction="sendonly")
    caps = RTCRtpSender.getCapabilities("video")
    video.setCodecPreferences([c for c in caps.codecs if c.mimeType.lower() == f"video/{codec}"])
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=15) as client:
        r = await client.post(
            url, content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
        )
        assert r.status_code == 201, r.text
        assert r.headers["content-type"].startswith("application/sdp")
        assert r.headers["access-control-allow-origin"] == "*"
        location = str(httpx.URL(url).join(r.headers["location"]))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
        deadline = time.monotonic() + 10
        while pc.connectionState != "connected":
            assert pc.connectionState not in ("failed", "closed"), pc.connectionState
            assert time.monotonic() < deadline, "aiortc publisher did not connect"
            await asyncio.sleep(0.05)
        await asyncio.sleep(seconds)
        if not delete:
            # Vanish: media stops, no DELETE and no DTLS close (aiortc still sends an RTCP
            # BYE, which the node does not rely on: a sleeping laptop sends nothing at all).
            for t in pc.getTransceivers():
                await t.sender.stop()
            return location
        if delete:
            d = await client.delete(location)
            assert d.status_code == 200, d.text
    await pc.close()
    return location


# -- publishers ------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_aiortc_publisher_is_transcoded(node: NodeProcess, codec: str) -> None:
    path = f"live/aiortc-{codec}"
    frames_before = node.metric("ingest_frames_total", kind="video", protocol="whip")
    audio_before = node.metric("ingest_frames_total", kind="audio", protocol="whip")
    bytes_before = node.metric("ingest_bytes_total", protocol="whip")
    # The VP8 publisher vanishes without a DELETE (a closed laptop): the node must notice.
    vanish = codec == "vp8"
    location = asyncio.run(
        aiortc_publish(f"{node.http}/{path}/whip", codec, 4.0, delete=not vanish)
    )
    wait_for(lambda: ready(node, path, 2), 20, f"segments of {path}")
    check_ladder(node, path)
    assert node.metric("ingest_frames_total", kind="video", protocol="whip") > frames_before + 60
    assert node.metric("ingest_frames_total", kind="audio", protocol="whip") > audio_before + 100
    assert node.metric("ingest_bytes_total", protocol="whip") > bytes_before + 20_000
    streams = {s["stream"]: s for s in node.get("/v1/streams").json()["streams"]}
    assert streams[path.split("/")[1]]["source"]["codec"] == codec
    # DELETE, or the vanished peer, ended the publish: after the grace period the playlists end.
    wait_for(lambda: ended(node, path), 15, "EXT-X-ENDLIST after the publisher left")
    assert node.metric("ingest_sessions", protocol="whip") == 0
    session = location.rsplit("/", 1)[1]
    ends = [ln for ln in node.log().splitlines() if f"session {session} " in ln and "ended:" in ln]
    assert ends, node.log()
    assert ("no media for 3 s" if vanish else "DELETE by the client") in ends[0], ends


# FFmpeg's WHIP muxer, fed by re-encoding the sample the way a WebRTC sender must: H.264
# constrained baseline without B-frames (global header: the muxer reads SPS/PPS from
# extradata) and Opus. Runs in its own process: PyAV holds the GIL during network I/O.
FFMPEG_WHIP = r"""
import sys, time, av
from av.codec.context import Flags
url, source, seconds, cert, key = sys.argv[1:6]
seconds = float(seconds)
options = {"handshake_timeout": "10000", "cert_file": cert, "key_file": key}
if len(sys.argv) > 6:
    options["authorization"] = sys.argv[6]
with av.open(source) as src:
    vin, ain = src.streams.video[0], src.streams.audio[0]
    out = av.open(url, "w", format="whip", options=options)
    v = out.add_stream("libx264", rate=30, options={
        "preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "g": "60", "bf": "0"})
    v.width, v.height, v.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
    v.codec_context.flags |= Flags.global_header
    a = out.add_stream("libopus", rate=48000, layout="stereo")
    a.bit_rate = 64000
    a.codec_context.flags |= Flags.global_header
    t0 = time.monotonic()
    for frame in src.decode(vin, ain):
        t = float(frame.pts * frame.time_base)
        if t > seconds:
            break
        ahead = t - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
        if isinstance(frame, av.VideoFrame):
            frame.pict_type = av.video.frame.PictureType.NONE
            out.mux(v.encode(frame))
        else:
            frame.pts = None
            out.mux(a.encode(frame))
    out.mux(v.encode())
    out.close()  # sends the DELETE
print("published", seconds)
"""


@pytest.fixture(scope="module")
def dtls_identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A P-256 certificate for FFmpeg's DTLS.

    FFmpeg 8.1 built with GnuTLS (as PyAV bundles it) generates a secp224r1 certificate,
    a curve OpenSSL 4 no longer accepts for TLS, so aiortc (and any OpenSSL-based WebRTC
    stack) refuses the handshake with "wrong curve". RFC 8827 §6.5 makes P-256 the curve
    every WebRTC endpoint must support; the muxer's cert_file/key_file options take it.
    """
    return self_signed(tmp_path_factory.mktemp("dtls"), "ffmpeg-whip")


def test_ffmpeg_whip_muxer_is_transcoded(node: NodeProcess, dtls_identity: tuple[str, str]) -> None:
    path = "live/ffmpeg"
    proc = subprocess.run(
        [sys.executable, "-c", FFMPEG_WHIP, f"{node.http}/{path}/whip", SMALL, "4", *dtls_identity],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wait_for(lambda: ready(node, path, 2), 20, f"segments of {path}")
    check_ladder(node, path)
    # The muxer's close sent DELETE: the stream ends after the grace period.
    wait_for(lambda: ended(node, path), 15, "EXT-X-ENDLIST after the muxer closed")
    assert "ended: DELETE by the client" in node.log()


def test_passthrough_asks_for_a_keyframe_every_segment(node: NodeProcess) -> None:
    """The source rung cuts only on the publisher's keyframes; aiortc's x264 makes one in 250
    frames unless asked, so segments of about 1 s prove the node's PLIs got through."""
    path = "live/aiortc-copy"
    asyncio.run(aiortc_publish(f"{node.http}/{path}/whip?profile=passthrough", "h264", 4.5))
    playlist = wait_for(
        lambda: (
            (t := node.get(f"/{path}/source/index.m3u8").text)
            and len(segment_numbers(t)) >= 3
            and t
        ),
        20,
        "three passthrough segments",
    )
    durations = [seg.duration for seg in m3u8.loads(playlist).segments]
    assert max(durations[:-1]) < 2.5, durations
    msn = independent_segments(playlist)[-1]
    data, fmt = segment_bytes(node, f"{path}/source", msn)
    with av.open(io.BytesIO(data), format=fmt) as c:
        first = next(p for p in c.demux(c.streams.video[0]) if p.size)
        assert first.is_keyframe
        assert c.streams.video[0].codec_context.width == 320


SDP_TYPE = {"Content-Type": "application/sdp"}


# -- refusals ----------------------------------------------------------------------------


async def _offer(codec: str = "h264") -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(MovingPicture(), direction="sendonly")
    pc.addTransceiver(Tone(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def test_unknown_tenant_is_refused_like_rtmp(node: NodeProcess) -> None:
    before = node.metric("ingest_rejected_total", reason="tenant")
    r = node.client.post(
        "/nosuch/class/whip",
        content=asyncio.run(_offer()),
        headers={"Content-Type": "application/sdp"},
    )
    assert r.status_code == 404
    assert "tenant 'nosuch' is not configured" in r.text
    assert r.headers["access-control-allow-origin"] == "*"
    assert node.metric("ingest_rejected_total", reason="tenant") == before + 1


def test_bad_offers_get_clear_errors(node: NodeProcess) -> None:
    url = "/live/bad/whip"
    sdp = {"Content-Type": "application/sdp"}
    r = node.client.post(url, content="hello", headers=sdp)
    assert r.status_code == 400 and "does not start with 'v=0'" in r.text
    r = node.client.post(
        url, content="v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96\r\n", headers=sdp
    )
    assert r.status_code == 400 and "SDP offer" in r.text
    r = node.client.post(url, content=asyncio.run(_offer()), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.headers["accept-post"] == "application/sdp"
    # Only VP9 video offered: refused with the codecs named.
    offer = asyncio.run(_offer())
    lines = [
        ln
        for ln in offer.split("\r\n")
        if not ln.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"))
    ]
    vp9 = "\r\n".join(
        ln.replace("a=mid:0", "a=mid:0\r\na=rtpmap:98 VP9/90000")
        if ln.startswith("a=mid:0")
        else ln
        for ln in lines
    )
    vp9 = vp9.replace("a=mid:1", "a=mid:1\r\na=rtpmap:111 opus/48000/2")
    r = node.client.post(url, content=vp9, headers=sdp)
    assert r.status_code == 400 and "no acceptable video codec" in r.text and "VP9" in r.text, (
        r.text
    )
    assert node.get("/v1/streams/live/bad").status_code == 404  # nothing was opened


def test_cors_preflight_patch_and_methods(node: NodeProcess) -> None:
    r = node.client.options(
        "/live/cors/whip",
        headers={
            "Origin": "https://school.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "location" in r.headers["access-control-expose-headers"].lower()
    assert node.client.get("/live/cors/whip").status_code == 405
    assert node.client.patch("/live/cors/whip/nosuch").status_code == 404
    assert node.client.delete("/live/cors/whip/nosuch").status_code == 404


def test_patch_is_405_with_allow_and_session_ends_by_timeout(node: NodeProcess) -> None:
    """A session whose publisher never connects: PATCH gets 405, the node frees the stream."""
    r = node.client.post(
        "/live/patch/whip",
        content=asyncio.run(_offer()),
        headers={"Content-Type": "application/sdp"},
    )
    assert r.status_code == 201
    location = r.headers["location"]
    assert location.startswith("/live/patch/whip/")
    p = node.client.patch(
        location,
        content="a=ice-ufrag:x\r\n",
        headers={"Content-Type": "application/trickle-ice-sdpfrag"},
    )
    assert p.status_code == 405
    assert set(p.headers["allow"].replace(" ", "").split(",")) == {"DELETE", "OPTIONS"}
    o = node.client.options(location)
    assert o.status_code == 204 and "DELETE" in o.headers["access-control-allow-methods"]
    assert node.metric("ingest_sessions", protocol="whip", tenant="live") == 1
    again = node.client.post("/live/patch/whip", content=asyncio.run(_offer()), headers=SDP_TYPE)
    assert again.status_code == 409 and "already being published" in again.text
    # No ICE ever arrives (the offer's peer is gone): dropped after connect_timeout.
    wait_for(lambda: node.client.delete(location).status_code == 404, 15, "the session to time out")
    assert node.metric("ingest_sessions", protocol="whip", tenant="live") == 0


def test_publish_page_is_served(node: NodeProcess) -> None:
    r = node.get("/live/page/publish")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "application/sdp" in r.text and "getUserMedia" in r.text and "<script src" not in r.text


def test_publish_token_as_bearer_then_operator_kick(node: NodeProcess) -> None:
    """The same token check as RTMP: missing -> 401, forged -> 403, valid -> 201; kick ends it."""
    offer = asyncio.run(_offer())
    url = "/secure/cls/whip"
    sdp = {"Content-Type": "application/sdp"}
    r = node.client.post(url, content=offer, headers=sdp)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert "token" in r.text
    good = sign(SECRET, "k1", "publish", "secure", "cls", int(time.time()) + 60)
    forged = sign(
        "not-the-secret-0123456789", "k1", "publish", "secure", "cls", int(time.time()) + 60
    )
    r = node.client.post(url, content=offer, headers={**sdp, "Authorization": f"Bearer {forged}"})
    assert r.status_code == 403 and "signature does not match" in r.text
    assert node.metric("ingest_rejected_total", reason="token_forged") >= 1
    r = node.client.post(url, content=offer, headers={**sdp, "Authorization": f"Bearer {good}"})
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    kick = "/v1/streams/secure/cls/kick"
    assert node.client.post(kick).status_code == 401
    r = node.client.post(kick, headers={"Authorization": "Bearer operator-secret"})
    assert r.status_code == 200, r.text
    wait_for(
        lambda: node.client.delete(location).status_code == 404, 10, "the kicked session to end"
    )
