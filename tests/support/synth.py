"""Synthetic publisher streams for transcode tests: tiny, fast, with known timing.

Video is a dark frame with a white flash on chosen frames; audio is silence with
a 1 kHz beep starting on the same instants. Packets come out as the RTMP ingest
delivers them (configs first, millisecond timestamps, interleaved by DTS).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np

from media import MediaPacket

W, H = 64, 36


def video_packets(
    frames: Iterable[tuple[int, bool]], fps: float = 30.0, gop: int = 60
) -> tuple[bytes, list[MediaPacket]]:
    """``(pts_ms, flash)`` per frame -> avcC and AVCC packets (x264 ultrafast, no B-frames)."""
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    enc.time_base = Fraction(1, 1000)
    enc.framerate = Fraction(fps).limit_denominator(1001)
    enc.flags |= av.codec.context.Flags.global_header
    enc.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "x264-params": f"keyint={gop}:annexb=0",
    }
    dark = av.VideoFrame.from_ndarray(np.full((H, W, 3), 20, np.uint8), format="rgb24").reformat(
        format="yuv420p"
    )
    white = av.VideoFrame.from_ndarray(np.full((H, W, 3), 235, np.uint8), format="rgb24").reformat(
        format="yuv420p"
    )
    out: list[MediaPacket] = []

    def emit(packets: Iterable[av.Packet]) -> None:
        for p in packets:
            out.append(
                MediaPacket("video", "h264", int(p.pts), int(p.dts), bytes(p), p.is_keyframe)
            )

    for pts, flash in frames:
        f = white if flash else dark
        f.pts = pts
        emit(enc.encode(f))
    emit(enc.encode(None))
    return bytes(enc.extradata or b""), out


def audio_packets(
    seconds: float, beeps: Iterable[int], beep_samples: int, rate: int = 16000
) -> tuple[bytes, list[MediaPacket]]:
    """Mono AAC: silence, and a 1 kHz beep of ``beep_samples`` at each sample index in ``beeps``."""
    enc = av.CodecContext.create("aac", "w")
    assert isinstance(enc, av.AudioCodecContext)
    enc.sample_rate, enc.layout, enc.format = rate, "mono", "fltp"
    enc.bit_rate = 32000
    enc.time_base = Fraction(1, rate)
    enc.open()
    n_total = int(seconds * rate)
    pcm = np.zeros(n_total, np.float32)
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(beep_samples) / rate)).astype(np.float32)
    for s in beeps:
        seg = pcm[s : s + beep_samples]
        seg[:] = tone[: len(seg)]
    out: list[MediaPacket] = []
    size = enc.frame_size or 1024
    for k in range(0, n_total - size + 1, size):
        f = av.AudioFrame.from_ndarray(pcm[None, k : k + size], format="fltp", layout="mono")
        f.sample_rate, f.pts, f.time_base = rate, k, Fraction(1, rate)
        for p in enc.encode(f):
            ms = math.floor(p.pts * 1000 / rate)
            out.append(MediaPacket("audio", "aac", ms, ms, bytes(p), True))
    for p in enc.encode(None):
        ms = math.floor(p.pts * 1000 / rate)
        out.append(MediaPacket("audio", "aac", ms, ms, bytes(p), True))
    return bytes(enc.extradata or b""), out


def interleave(
    vcfg: bytes, video: list[MediaPacket], acfg: bytes | None, audio: list[MediaPacket]
) -> list[MediaPacket]:
    head = [MediaPacket("video", "h264", 0, 0, vcfg, config=True)]
    if acfg is not None:
        head.append(MediaPacket("audio", "aac", 0, 0, acfg, config=True))
    merged = sorted(
        [(p.dts, 0, i, p) for i, p in enumerate(video)]
        + [(p.dts, 1, i, p) for i, p in enumerate(audio)],
        key=lambda x: (x[0], x[1], x[2]),
    )
    return head + [x[3] for x in merged]
