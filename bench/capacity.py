"""Live capacity and overload: concurrent 720p30 ladders on one node, against N FFmpeg CLIs.

Run: ``python -m bench.capacity [--seconds S] [--max-streams N]``

For N = 1, 2, ... each side runs N live 720p30 streams at once, paced in real
time, for S seconds, with the default ladder of ``nearcast.yml``:

- nearcast: one ``nearcast node`` (capacity admission switched off so every
  stream is transcoded), N RTMP publishers pushing the sample lecture in a loop;
- FFmpeg: N ``ffmpeg -re -stream_loop -1`` processes each doing the same ladder
  into live HLS, with the same x264 options (see ``bench.transcode``).

A stream *keeps up* when, at the end, its output trails real time by less than
one segment (nearcast: ``transcode_lag_seconds``, the wall time since the worker
started minus the media time it has encoded; FFmpeg: wall time minus the
``out_time`` it reports), and, for nearcast, it took no degradation step. The live
capacity of a side is the largest N at which every stream keeps up.

Then the overload run: twice nearcast's capacity of streams on both sides.
nearcast must still deliver every stream's segments on time (through its
degradation steps: faster preset, drop the top rung, drop frames); the FFmpeg
processes, which cannot degrade, fall behind. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.transcode import SAMPLE, ffmpeg_ladder_cmd
from nearcast.config import load
from nearcast.launch import NodeSubprocess
from nearcast.publish import publish


@dataclass
class StreamResult:
    lag: float  # seconds behind real time at the end
    segments: int  # segments of the lowest rung produced in the measured window
    expected: float  # segments a real-time stream produces in that window
    degraded: int = 0  # highest degradation level seen (nearcast only)

    @property
    def keeps_up(self) -> bool:
        return self.lag < SEGMENT and self.degraded == 0

    @property
    def on_time(self) -> bool:
        """Segments keep coming at the live rate and the lag stays bounded (degraded or not)."""
        return self.lag < 2 * SEGMENT and self.segments >= self.expected - 1


@dataclass
class Run:
    side: str
    streams: int
    results: list[StreamResult] = field(default_factory=list)

    def row(self) -> str:
        lags = [r.lag for r in self.results]
        kept = sum(r.keeps_up for r in self.results)
        on_time = sum(r.on_time for r in self.results)
        degraded = max((r.degraded for r in self.results), default=0)
        return (
            f"{self.side:9} {self.streams:3}  {kept:3}/{self.streams:<3} "
            f"{on_time:4}/{self.streams:<3}"
            f" {max(lags):9.2f} {degraded:9}"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "streams": self.streams,
            "keep_up": sum(r.keeps_up for r in self.results),
            "on_time": sum(r.on_time for r in self.results),
            "max_lag": round(max(r.lag for r in self.results), 3),
            "max_degradation": max(r.degraded for r in self.results),
        }


SEGMENT = load(environ={}).hls.segment_duration


class NodeRunner(NodeSubprocess):
    """A node that admits every stream (we measure capacity, not admission)."""

    def __init__(self, workdir: Path) -> None:
        env = {
            "NEARCAST_TRANSCODE_CAPACITY_UNITS": "1000",
            "NEARCAST_HLS_GRACE_PERIOD": "0",
            # The overload run publishes twice the capacity at once, all from loopback:
            # past 10 publish attempts per address a minute on a big machine.
            "NEARCAST_INGEST_MAX_PUBLISH_ATTEMPTS_PER_IP": "0",
        }
        super().__init__(workdir / "node.log", env, start_timeout=60)
        self.client = httpx.Client(base_url=self.http, timeout=10)

    def stop(self, timeout: float = 30) -> int:
        self.client.close()
        return super().stop(timeout)


def lowest_rung() -> str:
    return min(load(environ={}).transcode.ladder, key=lambda r: r.height).name


def _segments(text: str) -> set[str]:
    return {line for line in text.splitlines() if line and not line.startswith("#")}


def run_nearcast(n: int, seconds: float, workdir: Path) -> Run:
    node = NodeRunner(workdir)
    stop = threading.Event()
    threads = []
    try:
        for i in range(n):
            url = node.rtmp(f"live/s{i}")
            t = threading.Thread(
                target=publish,
                args=(str(SAMPLE), url),
                kwargs={"loop": True, "stop": stop},
                daemon=True,
            )
            t.start()
            threads.append(t)
        rung = lowest_rung()
        # Warm-up: every stream has a first segment (workers started, encoders open).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(
                node.client.get(f"/live/s{i}/{rung}/index.m3u8").status_code == 200
                for i in range(n)
            ):
                break
            time.sleep(0.5)
        seen: list[set[str]] = [set() for _ in range(n)]
        degraded = [0] * n
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            for i in range(n):
                r = node.client.get(f"/live/s{i}/{rung}/index.m3u8")
                if r.status_code == 200:
                    seen[i] |= _segments(r.text)
            for s in node.client.get("/v1/streams").json()["streams"]:
                i = int(s["stream"][1:])
                degraded[i] = max(degraded[i], int(s.get("degradation", 0)))
            time.sleep(0.5)
        # Segments listed at the first poll existed before the window: do not count them.
        metrics = node.client.get("/metrics").text
        run = Run("nearcast", n)
        for i in range(n):
            m = re.search(rf'transcode_lag_seconds{{stream="live/s{i}"}} (\S+)', metrics)
            lag = float(m.group(1)) if m else float("inf")
            run.results.append(StreamResult(lag, len(seen[i]) - 1, seconds / SEGMENT, degraded[i]))
        return run
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        node.stop()


def video_segments(out: Path) -> int:
    """Segments of the video renditions: the audio group has its own, in ``audio/``."""
    return sum(1 for p in out.glob("*/*.ts") if p.parent.name != "audio")


def run_ffmpeg(ffmpeg: str, n: int, seconds: float, workdir: Path) -> Run:
    procs = []
    for i in range(n):
        out = workdir / f"ff{i}"
        out.mkdir(parents=True, exist_ok=True)
        cmd = ffmpeg_ladder_cmd(ffmpeg, SAMPLE, out, SEGMENT)
        at = cmd.index("-i")
        cmd[at:at] = ["-re", "-stream_loop", "-1"]
        # Live HLS instead of VOD, stopped after the warm-up plus the window.
        cmd[cmd.index("-hls_playlist_type") : cmd.index("-hls_playlist_type") + 2] = [
            "-hls_list_size",
            "6",
            "-t",
            str(seconds + 5),
        ]
        cmd[1:1] = ["-nostats", "-progress", "pipe:1"]
        procs.append(
            (
                subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True),
                time.monotonic(),
                out,
            )
        )
    progress: list[float] = [0.0] * n

    def pump(i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("out_time_us=") and line.strip() != "out_time_us=N/A":
                progress[i] = int(line.split("=")[1]) / 1e6

    pumps = [
        threading.Thread(target=pump, args=(i, p), daemon=True) for i, (p, _, _) in enumerate(procs)
    ]
    for t in pumps:
        t.start()
    time.sleep(5)  # same warm-up as the node's first segment
    counts0 = [video_segments(out) for _, _, out in procs]
    time.sleep(seconds)
    run = Run("ffmpeg", n)
    for i, (_proc, started, out) in enumerate(procs):
        lag = (time.monotonic() - started) - progress[i]
        segs = video_segments(out) - counts0[i]
        rungs = len(load(environ={}).transcode.ladder)
        run.results.append(StreamResult(lag, segs // rungs, seconds / SEGMENT))
    for p, _, _ in procs:
        p.terminate()
        p.wait(30)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--seconds", type=float, default=40.0, help="measured window per run (default 40)"
    )
    ap.add_argument("--max-streams", type=int, default=4, help="largest N tried (default 4)")
    args = ap.parse_args()
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("bench.capacity: the ffmpeg CLI is needed (Debian package ffmpeg)", file=sys.stderr)
        return 1
    runs: list[Run] = []
    capacity = {"nearcast": 0, "ffmpeg": 0}

    def run_side(side: str, n: int, d: Path) -> Run:
        if side == "nearcast":
            return run_nearcast(n, args.seconds, d)
        return run_ffmpeg(ffmpeg, n, args.seconds, d)

    with tempfile.TemporaryDirectory(prefix="nearcast-capacity-") as tmp:
        work = Path(tmp)
        for side in ("nearcast", "ffmpeg"):
            for n in range(1, args.max_streams + 1):
                d = work / f"{side}-{n}"
                d.mkdir()
                run = run_side(side, n, d)
                runs.append(run)
                print(run.row(), flush=True)
                if not all(r.keeps_up for r in run.results):
                    break
                capacity[side] = n
        heavy = 2 * max(1, capacity["nearcast"])
        overload = {}
        for side in ("nearcast", "ffmpeg"):
            d = work / f"overload-{side}"
            d.mkdir()
            run = run_side(side, heavy, d)
            run.side = f"{side}*"
            runs.append(run)
            overload[side] = run.to_json()
            print(run.row(), flush=True)
    print()
    print(
        f"{'side':9} {'N':>3}  keep-up  on-time  max lag s  max degr.   (* = overload, 2x capacity)"
    )
    for run in runs:
        print(run.row())
    print(
        f"live capacity (720p30 default ladder, real time): nearcast {capacity['nearcast']}, "
        f"FFmpeg CLI {capacity['ffmpeg']}"
    )
    print(
        json.dumps(
            {
                "seconds": args.seconds,
                "capacity": capacity,
                "runs": [{"side": r.side, **r.to_json()} for r in runs],
                "overload_streams": heavy,
                "overload": overload,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
