"""GPU check: the NVENC profile through PyAV, against libx264, on the same ladder.

Run on a machine with an NVIDIA GPU: ``python -m bench.gpu_check [INPUT]``.
Prints a table; the last line is one JSON object with the figures.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import av

from nearcast.config import load
from nearcast.offline import transcode_file
from transcode.spec import Spec

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    src = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "samples" / "lecture-720p.mp4")
    cfg = load(environ={})
    print(f"PyAV {av.__version__}; h264_nvenc listed: {'h264_nvenc' in av.codecs_available}")
    figures = {}
    for codec in ("h264_nvenc", "libx264"):
        ladder = [dataclasses.replace(r, codec=codec) for r in cfg.transcode.ladder]
        spec = Spec(stream=f"gpu-{codec}", ladder=ladder, audio=cfg.transcode.audio)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            cpu0 = time.process_time()
            result = transcode_file(src, Path(tmp), spec)
            wall = time.monotonic() - t0
            cpu = time.process_time() - cpu0
        used = sorted({r["encoder"] for r in result["renditions"]["renditions"]})
        media = result["media_seconds"]
        figures[codec] = {
            "encoders_used": used,
            "wall_seconds": round(wall, 3),
            "cpu_seconds": round(cpu, 3),
            "realtime_factor": round(media / wall, 2),
            "media_seconds": round(media, 3),
        }
        print(
            f"{codec:12} used={used} wall={wall:.2f}s cpu={cpu:.2f}s {media / wall:.2f}x realtime"
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
