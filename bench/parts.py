"""LL-HLS part latency at the worker: how soon after its last frame arrives is a part out?

Run: ``python -m bench.parts [--seconds S] [--profile NAME ...] [--part 0.25] [--rungs N]``

The sample lecture (720p30) is fed to the worker's pipeline paced like a live
publisher, with fMP4 parts on. For every part of every rendition it records the
delay from the node receiving the part's last frame to the part being written,
and the age of the part's first frame at that moment (what a player at the
live edge sees on top of its own buffer). Profiles are compared in the same
run. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import bisect
import json
import threading
import time
from pathlib import Path
from statistics import median, quantiles
from typing import Any

from ingest.file import file_packets
from media.segments import PartFrame
from nearcast.config import load
from transcode.pipeline import Pipeline
from transcode.protocol import FrameReader, FrameType, decode_part
from transcode.spec import Spec

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "lecture-720p.mp4"


class _Sink:
    """Output stand-in that timestamps every PART frame as it is written."""

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.parts: list[tuple[float, PartFrame]] = []
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        now = time.time()
        with self.lock:
            for ftype, payload in self.reader.feed(data):
                if ftype is FrameType.PART:
                    self.parts.append((now, decode_part(payload)))


def run(profile: str, seconds: float, part: float, rungs: int) -> dict[str, Any]:
    cfg = load(environ={})
    prof = cfg.transcode.profile(profile)
    ladder = sorted(prof.ladder, key=lambda r: r.height)[: rungs or None]
    spec = Spec(
        stream=f"bench/{profile}",
        ladder=ladder,
        audio=prof.audio,
        segment_duration=cfg.hls.segment_duration,
        segment_format="fmp4",
        part_duration=part,
        degrade_lag=10.0,
    )
    sink = _Sink()
    pipeline = Pipeline(spec, sink)  # type: ignore[arg-type]
    packets = [p for p in file_packets(str(SAMPLE)) if p.config or p.dts < seconds * 1000]
    start = time.time()
    t0 = min(p.dts for p in packets if not p.config and p.kind == "video")
    arrivals: list[tuple[int, float]] = []  # (pts ms, when the node had it)
    behind = 0.0
    for p in packets:
        due = start + max(0, p.dts - t0) / 1000
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)  # pacing the publisher, not synchronising
        behind = max(behind, -delay)
        now = time.time()
        if p.kind == "video" and not p.config:
            arrivals.append((p.pts, now))
        pipeline.feed(p, now)
    pipeline.finish()
    arrivals.sort()
    keys = [a[0] for a in arrivals]

    def arrived(t_ms: float) -> float:
        """When the node had the last source frame shown at or before ``t_ms``."""
        i = max(0, bisect.bisect_right(keys, t_ms) - 1)
        return arrivals[i][1]

    last_frame, first_frame = [], []
    for emitted, pf in sink.parts:
        end_ms = (pf.start + pf.duration) * 1000 - 1000 / 30 / 2
        last_frame.append(emitted - arrived(end_ms))
        first_frame.append(emitted - arrived(pf.start * 1000 + 1))
    q = quantiles(last_frame, n=20)
    return {
        "profile": profile,
        "parts": len(sink.parts),
        "last_frame_to_part_p50_ms": round(median(last_frame) * 1000),
        "last_frame_to_part_p95_ms": round(q[18] * 1000),
        "first_frame_age_p50_ms": round(median(first_frame) * 1000),
        "max_part_s": round(max(pf.duration for _, pf in sink.parts), 4),
        # How far the paced feed itself fell behind (a loaded machine, or a blocked feed).
        "feed_behind_max_s": round(behind, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--part", type=float, default=0.25)
    ap.add_argument("--rungs", type=int, default=0, help="only the N smallest rungs (0: all)")
    ap.add_argument(
        "--profile", action="append", help="profiles to compare (default: default, lowlatency)"
    )
    args = ap.parse_args()
    results = [
        run(p, args.seconds, args.part, args.rungs)
        for p in (args.profile or ["default", "lowlatency"])
    ]
    cols = list(results[0])
    print(" | ".join(f"{c:>26}" for c in cols))
    for r in results:
        print(" | ".join(f"{r[c]!s:>26}" for c in cols))
    print(json.dumps({"part_target_s": args.part, "results": results}))


if __name__ == "__main__":
    main()
