"""Transcode benchmark: nearcast's ladder against the FFmpeg CLI doing the same ladder.

Run: ``python -m bench.transcode [--runs N] [--seconds S]``

Both run on the same input (the sample lecture looped to at least 20 s of
720p30 H.264/AAC), with the same ladder from ``nearcast.yml`` and the same x264
options (veryfast, 2 s closed GOPs forced on the same grid, no scene-cut
keyframes), each as its own process, alternating, in the same run. Absolute
times drift 20% between runs on shared machines; the ratio is the figure.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from nearcast.config import load

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "lecture-720p.mp4"


def run_timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, children included) of one command."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def ffmpeg_ladder_cmd(ffmpeg: str, src: Path, out: Path, seg: float) -> list[str]:
    cfg = load(environ={})
    ladder = cfg.transcode.ladder
    n = len(ladder)
    labels = "".join(f"[s{i}]" for i in range(n))
    scales = ";".join(f"[s{i}]scale={r.width}:{r.height}[v{i}]" for i, r in enumerate(ladder))
    cmd = [
        ffmpeg,
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(src),
        "-filter_complex",
        f"[0:v]split={n}{labels};{scales}",
    ]
    for i in range(n):
        cmd += ["-map", f"[v{i}]", "-map", "0:a"]
    gop = int(round(30 * seg))
    cmd += [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-profile:v",
        "high",
        "-g",
        str(gop * 2),
        "-keyint_min",
        str(gop),
        "-sc_threshold",
        "0",
        "-force_key_frames",
        f"expr:gte(t,n_forced*{seg})",
    ]
    for i, r in enumerate(ladder):
        cmd += [
            f"-b:v:{i}",
            str(r.video_bitrate),
            f"-maxrate:v:{i}",
            str(r.maxrate or r.video_bitrate),
            f"-bufsize:v:{i}",
            str(r.bufsize or 2 * r.video_bitrate),
        ]
    cmd += [
        "-c:a",
        "aac",
        "-b:a",
        str(cfg.transcode.audio.bitrate),
        "-ar",
        str(cfg.transcode.audio.sample_rate),
        "-f",
        "hls",
        "-hls_time",
        str(seg),
        "-hls_playlist_type",
        "vod",
        "-var_stream_map",
        " ".join(f"v:{i},a:{i}" for i in range(n)),
        str(out / "%v" / "index.m3u8"),
    ]
    return cmd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=2, help="runs of each side (default 2)")
    ap.add_argument("--seconds", type=float, default=24.0, help="input length (default 24)")
    ap.add_argument("--input", help="720p30 H.264 input (default: the sample lecture, looped)")
    args = ap.parse_args()
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("bench.transcode: the ffmpeg CLI is needed (Debian package ffmpeg)", file=sys.stderr)
        return 1
    seg = load(environ={}).hls.segment_duration
    with tempfile.TemporaryDirectory(prefix="nearcast-bench-") as tmp:
        work = Path(tmp)
        src = Path(args.input) if args.input else work / "src.mp4"
        if not args.input:
            subprocess.run(
                [
                    ffmpeg,
                    "-loglevel",
                    "error",
                    "-y",
                    "-stream_loop",
                    "-1",
                    "-i",
                    str(SAMPLE),
                    "-t",
                    str(args.seconds),
                    "-c",
                    "copy",
                    str(src),
                ],
                check=True,
            )
        probe = subprocess.run(
            [sys.executable, "-c", f"import av; c=av.open({str(src)!r}); print(c.duration/1e6)"],
            capture_output=True,
            text=True,
            check=True,
        )
        media = float(probe.stdout.strip())
        results: dict[str, list[tuple[float, float]]] = {"nearcast": [], "ffmpeg": []}
        for i in range(args.runs):
            for name in ("nearcast", "ffmpeg") if i % 2 == 0 else ("ffmpeg", "nearcast"):
                out = work / f"{name}-{i}"
                out.mkdir()
                if name == "nearcast":
                    cmd = [
                        sys.executable,
                        "-m",
                        "nearcast",
                        "transcode",
                        str(src),
                        "--out",
                        str(out),
                        "--quiet",
                    ]
                else:
                    cmd = ffmpeg_ladder_cmd(ffmpeg, src, out, seg)
                results[name].append(run_timed(cmd))
                shutil.rmtree(out)
    figures: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        wall = median(w for w, _ in runs)
        cpu = median(c for _, c in runs)
        figures[name] = {
            "wall_seconds": round(wall, 3),
            "cpu_seconds": round(cpu, 3),
            "realtime_factor": round(media / wall, 3),
            "cpu_per_output_second": round(cpu / media, 3),
        }
    ratio_wall = figures["nearcast"]["wall_seconds"] / figures["ffmpeg"]["wall_seconds"]
    ratio_cpu = figures["nearcast"]["cpu_seconds"] / figures["ffmpeg"]["cpu_seconds"]
    names = ", ".join(r.name for r in load(environ={}).transcode.ladder)
    print(f"input: {media:.1f} s of 720p30, ladder {names}, {args.runs} run(s) each, medians")
    print(f"{'':10} {'wall s':>8} {'cpu s':>8} {'x realtime':>11} {'cpu s / out s':>14}")
    for name, f in figures.items():
        print(
            f"{name:10} {f['wall_seconds']:8.2f} {f['cpu_seconds']:8.2f} "
            f"{f['realtime_factor']:11.2f} {f['cpu_per_output_second']:14.3f}"
        )
    print(f"{'ratio':10} {ratio_wall:8.3f} {ratio_cpu:8.3f}   (nearcast / ffmpeg; target <= 1.03)")
    print(
        json.dumps(
            {
                "media_seconds": round(media, 3),
                "runs": args.runs,
                **figures,
                "ratio_wall": round(ratio_wall, 3),
                "ratio_cpu": round(ratio_cpu, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
