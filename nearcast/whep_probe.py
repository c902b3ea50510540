"""The WHEP probe: an aiortc viewer; a frame is shown when it is decoded."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from urllib.parse import urljoin

import httpx

from media.clock import read_stamp
from nearcast.playout import Playout, ProbeError, ProbeResult
from nearcast.stamp_decoder import luma


async def probe_whep(url: str, duration: float, *, startup_timeout: float = 15.0) -> ProbeResult:
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    result = ProbeResult(url, "whep")
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    tracks: asyncio.Queue[Any] = asyncio.Queue()
    drains: list[asyncio.Task[None]] = []

    def on_track(track: Any) -> None:
        if track.kind == "video":
            tracks.put_nowait(track)
        else:  # counted whenever it comes, before or after the video
            drains.append(asyncio.ensure_future(_count_audio(track, result)))

    pc.on("track", on_track)
    location: str | None = None
    async with httpx.AsyncClient(timeout=15.0) as client:
        try:
            await pc.setLocalDescription(await pc.createOffer())
            started = time.time()
            try:
                r = await client.post(
                    url,
                    content=pc.localDescription.sdp,
                    headers={"Content-Type": "application/sdp"},
                )
            except httpx.HTTPError as exc:
                raise ProbeError(f"{url}: {exc!r}") from None
            if r.status_code != 201:
                raise ProbeError(f"{url}: HTTP {r.status_code} {r.text.strip()[:200]}")
            if "location" in r.headers:
                location = urljoin(url, r.headers["location"])
            await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
            video = await asyncio.wait_for(tracks.get(), startup_timeout)
            playout = Playout(result, started, realtime_gaps=True)
            deadline = time.monotonic() + duration
            first_deadline = time.monotonic() + startup_timeout
            while time.monotonic() < deadline:
                limit = (first_deadline if result.frames == 0 else deadline) - time.monotonic()
                try:
                    frame = await asyncio.wait_for(video.recv(), max(0.05, limit))
                except TimeoutError:
                    if result.frames == 0:
                        raise ProbeError(
                            f"{url}: no video frame within {startup_timeout:.0f} s"
                        ) from None
                    break
                except MediaStreamError:
                    break
                arrival = time.time()
                result.resolution = f"{frame.width}x{frame.height}"
                playout.frame(arrival, None, read_stamp(luma(frame)))
            result.seconds = time.time() - started
        finally:
            for task in drains:
                task.cancel()
            if location:
                with contextlib.suppress(httpx.HTTPError):
                    await client.delete(location)
            await pc.close()
    return result


async def _count_audio(track: Any, result: ProbeResult) -> None:
    """Decode the audio track beside the video: WHEP viewers must hear the class too."""
    with contextlib.suppress(Exception):
        while True:
            frame = await track.recv()
            result.audio_frames += 1
            result.audio_rate = int(frame.sample_rate)
