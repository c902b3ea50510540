"""A live source of TAP packets, as a transcode worker sends them for WebRTC viewers.

Encodes a stamped test picture in real time on a thread (libx264 without
B-frames, Annex-B with SPS/PPS on every IDR, ms timestamps; Opus 48 kHz audio)
and hands each packet to ``deliver`` on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np

from media import MediaPacket
from media.clock import stamp_yuv420p


class LiveTap:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[MediaPacket], None],
        *,
        width: int = 640,
        height: int = 360,
        fps: int = 30,
        gop: int = 30,
    ) -> None:
        self.loop = loop
        self.deliver = deliver
        self.width, self.height, self.fps, self.gop = width, height, fps, gop
        self.stop_event = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, name="live-tap", daemon=True)

    def start(self) -> LiveTap:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)

    def _send(self, packet: MediaPacket) -> None:
        self.sent += 1
        self.loop.call_soon_threadsafe(self.deliver, packet)

    def _run(self) -> None:
        venc = av.CodecContext.create("libx264", "w")
        assert isinstance(venc, av.VideoCodecContext)
        venc.width, venc.height, venc.pix_fmt = self.width, self.height, "yuv420p"
        venc.time_base = Fraction(1, 1000)
        venc.framerate = Fraction(self.fps)
        venc.bit_rate = 600_000
        venc.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "x264-params": f"keyint={self.gop}:min-keyint={self.gop}:scenecut=0:bframes=0",
        }
        aenc = av.CodecContext.create("libopus", "w")
        assert isinstance(aenc, av.AudioCodecContext)
        aenc.sample_rate = 48000
        aenc.layout = "stereo"
        aenc.format = "s16"
        aenc.bit_rate = 64000
        aenc.time_base = Fraction(1, 48000)
        base = np.zeros((self.height * 3 // 2, self.width), np.uint8)
        base[: self.height] = np.linspace(40, 200, self.width, dtype=np.uint8)[None, :]
        base[self.height :] = 128
        start = time.monotonic()
        samples = 0
        i = 0
        while not self.stop_event.is_set():
            due = start + i / self.fps
            if self.stop_event.wait(max(0.0, due - time.monotonic())):
                break
            planes = base.copy()
            x = (i * 8) % (self.width - 40)
            planes[self.height // 2 : self.height // 2 + 40, x : x + 40] = 235
            stamp_yuv420p(planes, int(time.time() * 1000))
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = int(i * 1000 / self.fps)
            frame.time_base = Fraction(1, 1000)
            for p in venc.encode(frame):
                ms = int(p.pts)
                self._send(MediaPacket("video", "h264", ms, ms, bytes(p), keyframe=p.is_keyframe))
            # Audio up to now, in 20 ms Opus frames.
            while samples < (i + 1) * 48000 // self.fps:
                t = (samples + np.arange(960)) / 48000
                tone = (np.sin(2 * np.pi * 440 * t) * 3000).astype(np.int16)
                af = av.AudioFrame.from_ndarray(
                    np.repeat(tone, 2)[None, :], format="s16", layout="stereo"
                )
                af.sample_rate = 48000
                af.pts = samples
                af.time_base = Fraction(1, 48000)
                samples += 960
                for p in aenc.encode(af):
                    ms = int(p.pts * 1000 // 48000)
                    self._send(MediaPacket("audio", "opus", ms, ms, bytes(p), keyframe=True))
            i += 1


def encode_tap(
    seconds: float, *, width: int = 160, height: int = 96, fps: int = 30, gop: int = 30
) -> list[MediaPacket]:
    """``seconds`` of TAP packets as a worker sends them, encoded as fast as possible:
    x264 without B-frames (an IDR every ``gop`` frames) and 20 ms Opus, in the order a
    worker interleaves them."""
    venc = av.CodecContext.create("libx264", "w")
    assert isinstance(venc, av.VideoCodecContext)
    venc.width, venc.height, venc.pix_fmt = width, height, "yuv420p"
    venc.time_base = Fraction(1, 1000)
    venc.framerate = Fraction(fps)
    venc.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0",
    }
    aenc = av.CodecContext.create("libopus", "w")
    assert isinstance(aenc, av.AudioCodecContext)
    aenc.sample_rate = 48000
    aenc.layout = "stereo"
    aenc.format = "s16"
    aenc.bit_rate = 64000
    aenc.time_base = Fraction(1, 48000)
    out: list[MediaPacket] = []

    def video(packets: list[av.Packet]) -> None:
        for p in packets:
            assert p.pts is not None and p.dts is not None
            out.append(
                MediaPacket("video", "h264", int(p.pts), int(p.dts), bytes(p), p.is_keyframe)
            )

    samples = 0
    for i in range(round(seconds * fps)):
        planes = np.full((height * 3 // 2, width), 128, np.uint8)
        planes[:height] = (np.arange(width, dtype=np.int32)[None, :] + i * 5) % 200 + 20
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts = round(i * 1000 / fps)
        frame.time_base = Fraction(1, 1000)
        video(venc.encode(frame))
        while samples < (i + 1) * 48000 // fps:
            t = (samples + np.arange(960)) / 48000
            tone = (np.sin(2 * np.pi * 440 * t) * 3000).astype(np.int16)
            af = av.AudioFrame.from_ndarray(
                np.repeat(tone, 2)[None, :], format="s16", layout="stereo"
            )
            af.sample_rate = 48000
            af.pts = samples
            af.time_base = Fraction(1, 48000)
            samples += 960
            for p in aenc.encode(af):
                assert p.pts is not None
                ms = int(p.pts * 1000 // 48000)
                out.append(MediaPacket("audio", "opus", ms, ms, bytes(p), keyframe=True))
    video(venc.encode(None))
    return out
