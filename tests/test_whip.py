"""WHIP ingest end to end: real WebRTC publishers, a real node, HLS read back with FFmpeg.

Publishers: aiortc (H.264 and VP8), FFmpeg's own WHIP muxer (bundled in PyAV, run in a
child process) and headless Chromium on the node's publish page (tests/test_whip_browser.py).
Each publishes a few seconds; the node must transcode them into the ladder.
"""

from __future__ import annotations

import asyncio
import fractions
import io
import math
import multiprocessing
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
from nodeutil import SMALL, NodeProcess, segment_numbers, wait_for

LADDER = "[{name: 240p, width: 426, height: 240, video_bitrate: 400000}, {name: 180p, width: 320, height: 180, video_bitrate: 250000}]"
SIZES = {"240p": (426, 240), "180p": (320, 180)}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    log = tmp_path_factory.mktemp("node") / "node.log"
    n = NodeProcess(
        log,
        NEARCAST_TRANSCODE_LADDER=LADDER,
        NEARCAST_HLS_SEGMENT_DURATION="1",
        NEARCAST_HLS_GRACE_PERIOD="1",
        NEARCAST_WHIP_CONNECT_TIMEOUT="5",
        NEARCAST_WHIP_IDLE_TIMEOUT="3",
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
        if delete:
            d = await client.delete(location)
            assert d.status_code == 200, d.text
    await pc.close()
    return location


def ready(node: NodeProcess, path: str, segments: int) -> bool:
    r = node.get(f"/{path}/index.m3u8")
    if r.status_code != 200:
        return False
    master = m3u8.loads(r.text)
    if {p.uri.split("/")[0] for p in master.playlists} != set(SIZES):
        return False
    for p in master.playlists:
        media = node.get(f"/{path}/{p.uri}")
        if media.status_code != 200 or len(segment_numbers(media.text)) < segments:
            return False
    return True


def check_ladder(node: NodeProcess, path: str, *, audio: bool = True) -> None:
    """Every rendition has a segment FFmpeg decodes at its advertised size, with AAC audio."""
    master = m3u8.loads(node.get(f"/{path}/index.m3u8").text)
    assert len(master.playlists) == len(SIZES)
    for p in master.playlists:
        width, height = p.stream_info.resolution
        assert height <= SIZES[p.uri.split("/")[0]][1]  # never upscaled past the rung
        text = node.get(f"/{path}/{p.uri}").text
        msn = segment_numbers(text)[0]
        r = node.get(f"/{path}/{p.uri.split('/')[0]}/{msn}.ts")
        assert r.status_code == 200
        with av.open(io.BytesIO(r.content), format="mpegts") as c:
            v = c.streams.video[0]
            frames = [f for pkt in c.demux(v) for f in pkt.decode()]
            assert len(frames) >= 10 and (frames[0].width, frames[0].height) == (width, height)
            if audio:
                assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"


def metric(node: NodeProcess, prefix: str) -> float:
    total = 0.0
    for line in node.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            total += float(line.split()[-1])
    return total


def ended(node: NodeProcess, path: str) -> bool:
    r = node.get(f"/{path}/240p/index.m3u8")
    return r.status_code == 200 and "#EXT-X-ENDLIST" in r.text


# -- publishers ------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_aiortc_publisher_is_transcoded(node: NodeProcess, codec: str) -> None:
    path = f"live/aiortc-{codec}"
    frames_before = metric(node, 'ingest_frames_total{kind="video",protocol="whip"}')
    asyncio.run(aiortc_publish(f"{node.http}/{path}/whip", codec, 4.0))
    wait_for(lambda: ready(node, path, 2), 20, f"segments of {path}")
    check_ladder(node, path)
    assert metric(node, 'ingest_frames_total{kind="video",protocol="whip"}') > frames_before + 60
    streams = {s["stream"]: s for s in node.get("/v1/streams").json()["streams"]}
    assert streams[path.split("/")[1]]["source"]["codec"] == codec
    # DELETE ended the publish: after the grace period the playlists end.
    wait_for(lambda: ended(node, path), 15, "EXT-X-ENDLIST after DELETE")
    assert metric(node, 'ingest_sessions{protocol="whip"') == 0
