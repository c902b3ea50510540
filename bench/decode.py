"""Decode benchmark: the source decoded the way the ladder decodes it, against frame threads.

Run: ``python -m bench.decode [--runs N] [--seconds S] [--clips lecture,noise]``

The transcode pipeline decodes each stream on one thread (slice threads where the
source has several slices, ``transcode.pipeline.DECODE_THREADS``): the rungs' encoders
keep every core busy, so frame threads would add CPU and no speed. The reference is
frame threads, the decoder's default and what the FFmpeg CLI uses. On the clips of
``bench.transcode`` (the lecture looped, and the high-detail noise clip), both decode
every picture of the video in this process, alternating, N runs each; CPU seconds
(every thread) and wall seconds are printed per run, then the medians and the ratio
nearcast / frame threads.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import av

from bench.transcode import CLIPS, SAMPLE, make_lecture, make_noise
from transcode.pipeline import DECODE_THREADS

REFERENCE = "AUTO"  # frame and slice threads, as FFmpeg decodes by default


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def decode(path: Path, thread_type: str) -> tuple[float, float, int]:
    """CPU and wall seconds to decode every picture of ``path``, and how many."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_type = thread_type
        cpu, wall, n = _cpu(), time.monotonic(), 0
        for _ in c.decode(stream):
            n += 1
        return _cpu() - cpu, time.monotonic() - wall, n


def bench_clip(path: Path, runs: int) -> dict[str, Any]:
    sides = {"nearcast": DECODE_THREADS, "frame_threads": REFERENCE}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    pictures = 0
    for i in range(runs):
        # Alternate which goes first, so neither always follows the other.
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        for name in order:
            cpu, wall, pictures = decode(path, sides[name])
            times[name].append((cpu, wall))
    out: dict[str, Any] = {"pictures": pictures}
    for name, runs_ in times.items():
        out[name] = {
            "thread_type": sides[name],
            "cpu_seconds": [round(c, 3) for c, _ in runs_],
            "wall_seconds": [round(w, 3) for _, w in runs_],
            "median_cpu_seconds": round(median(c for c, _ in runs_), 3),
            "median_wall_seconds": round(median(w for _, w in runs_), 3),
        }
    nc, ref = out["nearcast"], out["frame_threads"]
    out["ratio_cpu"] = round(nc["median_cpu_seconds"] / ref["median_cpu_seconds"], 3)
    out["ratio_wall"] = round(nc["median_wall_seconds"] / ref["median_wall_seconds"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=6, help="runs of each side per clip (6)")
    ap.add_argument("--seconds", type=float, default=24.0, help="length of each clip (24)")
    ap.add_argument(
        "--clips", default=",".join(CLIPS), help=f"comma-separated, of {', '.join(CLIPS)} (all)"
    )
    args = ap.parse_args()
    clips = [c for c in args.clips.split(",") if c]
    if not clips or any(c not in CLIPS for c in clips):
        ap.error(f"--clips must name some of {', '.join(CLIPS)}, not {args.clips!r}")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print(
            "bench.decode: the ffmpeg CLI makes the clips (Debian package ffmpeg)", file=sys.stderr
        )
        return 1
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="nearcast-decode-") as tmp:
        for clip in clips:
            src = Path(tmp) / f"{clip}.mp4"
            if clip == "lecture":
                make_lecture(ffmpeg, src, args.seconds, SAMPLE)
            else:
                make_noise(ffmpeg, src, args.seconds)
            results[clip] = bench_clip(src, args.runs)
    print(f"decode, nearcast ({DECODE_THREADS}) against frame threads ({REFERENCE}), CPU s")
    for clip, r in results.items():
        nc, ref = r["nearcast"], r["frame_threads"]
        print(
            f"  {clip:8} {r['pictures']} pictures: nearcast {nc['cpu_seconds']}, "
            f"frame threads {ref['cpu_seconds']}; median {nc['median_cpu_seconds']:.3f} "
            f"against {ref['median_cpu_seconds']:.3f}, ratio cpu {r['ratio_cpu']:.3f}, "
            f"wall {r['ratio_wall']:.3f}"
        )
    print(json.dumps({"runs": args.runs, "clips": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
