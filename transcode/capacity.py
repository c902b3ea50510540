"""Admission control: what a node can transcode in real time, in ladder units.

One ladder unit is the default 720p30 ladder (720p + 480p + 360p) kept in real
time. A stream's cost is the pixel rate its rungs encode, relative to that
ladder; a ``copy`` rung costs nothing. Capacity is measured at start-up by a
short calibration encode (``python -m transcode.calibrate`` runs it on its
own), or set in config.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from media import MediaPacket, StreamKey
from transcode.config import Rendition, TranscodeConfig
from transcode.output import Output
from transcode.pipeline import Pipeline
from transcode.spec import Spec

REFERENCE_PIXEL_RATE = (1280 * 720 + 854 * 480 + 640 * 360) * 30.0
# Keep 10% of the measured speed in reserve: a live stream at exactly 1.0x
# has no room for a scene change.
HEADROOM = 0.9


def ladder_units(ladder: list[Rendition], fps: float = 30.0) -> float:
    rate = sum(r.width * r.height * (r.fps or fps) for r in ladder if r.codec != "copy")
    return rate / REFERENCE_PIXEL_RATE


class Capacity:
    """Ladder units reserved per live stream, against the node's total (pure)."""

    def __init__(self, total: float) -> None:
        self.total = total  # 0 = not measured yet: admit everything
        self.used: dict[StreamKey, float] = {}

    @property
    def in_use(self) -> float:
        return sum(self.used.values())

    def fits(self, units: float) -> bool:
        return self.total <= 0 or units == 0 or self.in_use + units <= self.total + 1e-9

    def reserve(self, key: StreamKey, units: float) -> None:
        self.used[key] = units

    def release(self, key: StreamKey) -> None:
        self.used.pop(key, None)


def _synthetic_clip(seconds: float) -> list[MediaPacket]:
    """A 720p30 H.264 clip with motion everywhere (harder than a lecture), made quickly."""
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = 1280, 720, "yuv420p"
    enc.time_base = Fraction(1, 1000)
    enc.framerate = Fraction(30)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    enc.open()
    # Smooth gradients, a moving box and light texture: closer to a camera than
    # noise (which no encoder compresses) and harder than a static slide.
    y, x = np.mgrid[0:720, 0:1280]
    texture = (np.random.default_rng(7).integers(0, 24, (720, 1280))).astype(np.int32)
    packets: list[MediaPacket] = []
    for i in range(int(seconds * 30)):
        luma = ((x + 4 * i) % 256 + (y // 3)) // 2 + texture
        bx = (i * 17) % (1280 - 200)
        luma[200:400, bx : bx + 200] = 235 - (i * 3) % 60
        planes = np.concatenate(
            [np.clip(luma, 16, 235).astype(np.uint8), np.full((360, 1280), 128, np.uint8)]
        )
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts = i * 1000 // 30
        for p in enc.encode(frame):
            packets.append(_packet(p))
    for p in enc.encode(None):
        packets.append(_packet(p))
    return packets


def calibrate(config: TranscodeConfig | None = None, seconds: float = 2.0) -> float:
    """Measured ladder units this machine sustains in real time."""
    config = config or TranscodeConfig()
    packets = _synthetic_clip(seconds)
    spec = Spec(
        stream="calibration",
        ladder=list(config.ladder),
        live=False,
        x264_threads=config.x264_threads,
    )
    pipeline = Pipeline(spec, Output(io.BytesIO()))
    started = time.monotonic()
    for p in packets:
        pipeline.feed(p)
    pipeline.finish()
    wall = time.monotonic() - started
    speed = seconds / wall if wall > 0 else 0.0
    return round(speed * HEADROOM / max(ladder_units(list(config.ladder)), 1e-6), 2)


def cache_key(config: TranscodeConfig) -> str:
    """What a measured capacity depends on: the CPU, the cores this process may use, the
    ladder and the encoder's build. A change to any of them measures again."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    facts = {
        "cpu": model,
        "cores": cores,
        "ladder": [repr(r) for r in config.ladder],
        "x264_threads": config.x264_threads,
        "av": av.__version__,
        "ffmpeg": av.library_versions.get("libavcodec"),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nearcast" / "capacity.json"


def cached(config: TranscodeConfig, path: Path | None = None) -> float | None:
    """The capacity measured before on this machine for this ladder, if any."""
    try:
        entries = json.loads((path or cache_path()).read_text())
        units = float(entries[cache_key(config)])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return units if units > 0 else None


def remember(config: TranscodeConfig, units: float, path: Path | None = None) -> None:
    """Keep ``units`` for the next start; a cache that cannot be written is no error."""
    path = path or cache_path()
    try:
        try:
            entries = json.loads(path.read_text())
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        entries[cache_key(config)] = units
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries))
        tmp.replace(path)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="This machine's transcode capacity.")
    parser.add_argument(
        "--repeat", type=int, default=1, help="fresh calibrations in a row, with their spread"
    )
    args = parser.parse_args(argv)
    runs = [calibrate() for _ in range(max(1, args.repeat))]
    result: dict[str, Any] = {"capacity_units": statistics.median(runs)}
    if len(runs) > 1:
        mid = statistics.median(runs)
        result["runs"] = runs
        result["spread"] = round(max(abs(r - mid) for r in runs) / mid, 3) if mid else 0.0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _packet(p: Any) -> MediaPacket:
    """An encoded av.Packet (ms time base) as the node's media model."""
    return MediaPacket("video", "h264", int(p.pts or 0), int(p.dts or 0), bytes(p), p.is_keyframe)
