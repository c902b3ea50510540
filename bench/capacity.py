"""Live capacity and overload: concurrent 720p30 ladders on one node, against N FFmpeg CLIs.

Run: ``python -m bench.capacity [--seconds S] [--max-streams N] [--poll S] [--no-overload]``

For N = 1, 2, ... each side runs N live 720p30 streams at once for S seconds, with
the default ladder of ``nearcast.yml``, each stream fed by its own
``nearcast publish --clock``: the sample lecture in a loop, paced in real time,
the wall clock stamped into every frame, sent over RTMP. Both sides get the same
stamped input the same way:

- nearcast: one ``nearcast node`` (admission set to admit every stream whole, so
  every stream is transcoded; MPEG-TS HLS set explicitly), one publisher per stream;
- FFmpeg: per stream, one ``ffmpeg -listen 1 -i rtmp://...`` process that receives
  its publisher and does the same ladder into live MPEG-TS HLS with the same x264
  options (see ``bench.transcode``).

Both are measured the same way, from the outside, as a viewer sees them (see
:mod:`bench.live_edge`): every rung's media playlist is polled every ``--poll``
seconds, over HTTP from the node and from the files FFmpeg writes.

- *lag*: when the newest segment of a rung was first listed, minus the capture
  time (the stamp) of its last frame; the publisher-to-viewer delay the pipeline adds.
- *segments*: listed in the window, from media sequence numbers (exact).
- *start-up*: from the stream's start (nearcast: its publisher starts; FFmpeg: its
  process starts, its publisher right after) to its first segment on every rung.

A stream *keeps up* when every rung listed at least the live rate of segments
(window / segment duration, less one) and its lag is under one segment duration,
with no degradation step (nearcast). The live capacity of a side is the largest N
at which every stream keeps up.

Then the overload run: twice nearcast's capacity of streams on both sides. A stream
is *on time* when every rung the side still delivers lists the live rate of
segments with a lag under two segment durations. nearcast degrades (faster preset,
then dropping its top rung, then dropping frames) and is judged on the rungs it
delivers; the FFmpeg processes cannot degrade and are judged on all their rungs.

A table, the capacity ratio, then one JSON object with every figure as the last line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.live_edge import EdgeWatch, RungResult
from bench.transcode import SAMPLE, ffmpeg_ladder_cmd
from nearcast.config import load
from nearcast.launch import NodeSubprocess
from nearcast.publish import PublishError, publish

_DEFAULTS = load(environ={})
SEGMENT = _DEFAULTS.hls.segment_duration
WINDOW = _DEFAULTS.hls.window
RUNGS = [r.name for r in _DEFAULTS.transcode.ladder]
TOP_RUNG = max(_DEFAULTS.transcode.ladder, key=lambda r: r.width * r.height).name
HEADER = (
    f"{'side':9} {'N':>3} {'keep-up':>8} {'on-time':>8} {'lag s':>9} {'start-up s':>10}"
    f" {'rate':>9} {'degr.':>6}"
)
# How long every stream of a run may take to list its first segment on every rung.
STARTUP_TIMEOUT = 60.0


@dataclass
class StreamResult:
    rungs: dict[str, RungResult]
    judged: list[str]  # the rungs the side still delivers
    degraded: int = 0  # highest degradation level seen (nearcast only)
    error: str = ""

    @staticmethod
    def _ok(r: RungResult, bound: float) -> bool:
        return r.lag is not None and r.lag < bound and r.segments >= r.expected - 1

    @property
    def keeps_up(self) -> bool:
        return (
            not self.error
            and self.degraded == 0
            and all(self._ok(r, SEGMENT) for r in self.rungs.values())
        )

    @property
    def on_time(self) -> bool:
        """Every delivered rung lists segments at the live rate, its lag bounded."""
        return (
            not self.error
            and bool(self.judged)
            and all(self._ok(self.rungs[n], 2 * SEGMENT) for n in self.judged)
        )

    def lag(self) -> float:
        lags = [self.rungs[n].lag for n in self.judged]
        return max((x if x is not None else float("inf") for x in lags), default=float("inf"))

    def startup(self) -> float:
        ups = [self.rungs[n].startup for n in self.judged]
        return max((x if x is not None else float("inf") for x in ups), default=float("inf"))

    def rate(self) -> float:
        """The smallest share of the live segment rate over the judged rungs."""
        return min(
            (self.rungs[n].segments / self.rungs[n].expected for n in self.judged),
            default=0.0,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "judged": self.judged,
            "degradation": self.degraded,
            "rungs": {name: r.to_json() for name, r in self.rungs.items()},
            **({"error": self.error} if self.error else {}),
        }


def _figure(x: float) -> float | None:
    return None if x == float("inf") else round(x, 3)


@dataclass
class Run:
    side: str
    streams: int
    window: float = 0.0
    results: list[StreamResult] = field(default_factory=list)

    def row(self) -> str:
        kept = sum(r.keeps_up for r in self.results)
        on_time = sum(r.on_time for r in self.results)
        degraded = max((r.degraded for r in self.results), default=0)
        return (
            f"{self.side:9} {self.streams:3} {f'{kept}/{self.streams}':>8}"
            f" {f'{on_time}/{self.streams}':>8}"
            f" {max(r.lag() for r in self.results):9.2f}"
            f" {max(r.startup() for r in self.results):10.2f}"
            f" {min(r.rate() for r in self.results):9.2f} {degraded:6}"
        )

    def to_json(self) -> dict[str, object]:
        held = [r.held_back for s in self.results for r in s.rungs.values()]
        return {
            "streams": self.streams,
            "window_seconds": round(self.window, 3),
            "keep_up": sum(r.keeps_up for r in self.results),
            "on_time": sum(r.on_time for r in self.results),
            "max_lag": _figure(max(r.lag() for r in self.results)),
            "max_startup": _figure(max(r.startup() for r in self.results)),
            "min_segment_rate": round(min(r.rate() for r in self.results), 3),
            "max_held_back": round(max(held, default=0.0), 3),
            "max_degradation": max(r.degraded for r in self.results),
            "per_stream": [r.to_json() for r in self.results],
        }


class Publisher(threading.Thread):
    """``nearcast publish --clock`` of the sample, looped, until stopped.

    ``retry_for``: keep trying to connect that long (an FFmpeg listener that is
    still starting refuses the connection; a probe connection would take its only one).
    """

    def __init__(self, url: str, retry_for: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.retry_for = retry_for
        self.stop_event = threading.Event()
        self.error = ""

    def run(self) -> None:
        deadline = time.monotonic() + self.retry_for
        while not self.stop_event.is_set():
            try:
                publish(str(SAMPLE), self.url, loop=True, clock=True, stop=self.stop_event)
                return
            except PublishError as exc:
                if self.stop_event.is_set():
                    return  # the receiver went first at the end of the run
                retry = str(exc).startswith("cannot connect") and time.monotonic() < deadline
                if not retry:
                    self.error = str(exc)
                    return
                self.stop_event.wait(0.2)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(20)


class NodeRunner(NodeSubprocess):
    """A node that admits every stream with its whole ladder (we measure capacity, not
    admission), serving MPEG-TS HLS like the FFmpeg side whatever the shipped defaults."""

    def __init__(self, workdir: Path) -> None:
        env = {
            # Admission: room for every stream's whole ladder, nothing kept in reserve.
            "NEARCAST_TRANSCODE_CAPACITY_UNITS": "1000",
            "NEARCAST_TRANSCODE_ADMISSION_RESERVE": "0",
            "NEARCAST_HLS_GRACE_PERIOD": "0",
            # The same delivery as the FFmpeg side: MPEG-TS segments, no LL-HLS (whose
            # zerolatency tune would make nearcast's encodes cheaper than FFmpeg's).
            "NEARCAST_HLS_SEGMENT_FORMAT": "ts",
            "NEARCAST_HLS_LOW_LATENCY": "false",
            "NEARCAST_HLS_TENANTS": "{live: ts}",
            # The overload run publishes twice the capacity at once, all from loopback:
            # past 10 publish attempts per address a minute on a big machine.
            "NEARCAST_INGEST_MAX_PUBLISH_ATTEMPTS_PER_IP": "0",
        }
        super().__init__(workdir / "node.log", env, start_timeout=60)
        self.client = httpx.Client(base_url=self.http, timeout=10)

    def stop(self, timeout: float = 30) -> int:
        self.client.close()
        return super().stop(timeout)


class NodeOutput:
    """One stream of the node, read over HTTP as a viewer would."""

    def __init__(self, client: httpx.Client, index: int) -> None:
        self.client = client
        self.base = f"/live/s{index}"
        self.started = time.time()
        self.rungs: Sequence[str] = RUNGS
        self.level = 0  # the stream's degradation level now

    def _get(self, path: str) -> httpx.Response | None:
        try:
            r = self.client.get(f"{self.base}/{path}")
        except httpx.HTTPError:
            return None
        return r if r.status_code == 200 else None

    def playlist(self, rung: str) -> str | None:
        r = self._get(f"{rung}/index.m3u8")
        return None if r is None else r.text

    def segment(self, rung: str, uri: str) -> bytes | None:
        r = self._get(f"{rung}/{uri}")
        return None if r is None else r.content

    def delivered(self) -> set[str]:
        # Degradation step 2 (drop_top_rung, transcode.overload) suspends the top rung.
        return set(self.rungs) - ({TOP_RUNG} if self.level >= 2 else set())


class FfmpegOutput:
    """One FFmpeg process's HLS output, read from its files (written by rename: atomic)."""

    def __init__(self, out: Path, started: float) -> None:
        self.out = out
        self.started = started
        self.rungs: Sequence[str] = RUNGS

    def _read(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def playlist(self, rung: str) -> str | None:
        # ffmpeg_ladder_cmd names each rendition's folder after its rung (audio/ apart).
        data = self._read(self.out / rung / "index.m3u8")
        return None if data is None else data.decode()

    def segment(self, rung: str, uri: str) -> bytes | None:
        return self._read(self.out / rung / uri)

    def delivered(self) -> set[str]:
        return set(self.rungs)


def run_nearcast(n: int, seconds: float, poll: float, workdir: Path) -> Run:
    node = NodeRunner(workdir)
    pubs: list[Publisher] = []
    outputs: list[NodeOutput] = []
    degraded = [0] * n

    def refresh() -> None:
        try:
            streams = node.client.get("/v1/streams").json()["streams"]
        except (httpx.HTTPError, ValueError, KeyError):
            return
        for s in streams:
            i = int(s["stream"][1:])
            outputs[i].level = int(s.get("degradation", 0))
            degraded[i] = max(degraded[i], outputs[i].level)

    try:
        for i in range(n):
            outputs.append(NodeOutput(node.client, i))
            pubs.append(Publisher(node.rtmp(f"live/s{i}")))
            pubs[-1].start()
        watch = EdgeWatch(outputs, poll)
        watch.run(seconds, STARTUP_TIMEOUT, refresh)
    finally:
        for p in pubs:
            p.stop_event.set()
        for p in pubs:
            p.stop()
        node.stop()
    run = Run("nearcast", n, watch.window)
    for i, rungs in enumerate(watch.results(SEGMENT)):
        judged = [r for r in RUNGS if not (r == TOP_RUNG and degraded[i] >= 2)]
        run.results.append(StreamResult(rungs, judged, degraded[i], pubs[i].error))
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ffmpeg_live_cmd(ffmpeg: str, url: str, out: Path) -> list[str]:
    """The ladder of ``bench.transcode``, from an RTMP publisher into live HLS."""
    cmd = ffmpeg_ladder_cmd(ffmpeg, Path("-"), out, SEGMENT)
    at = cmd.index("-i")
    cmd[at : at + 2] = ["-listen", "1", "-i", url]
    at = cmd.index("-hls_playlist_type")
    cmd[at : at + 2] = ["-hls_list_size", str(WINDOW), "-hls_segment_type", "mpegts"]
    return cmd


def run_ffmpeg(ffmpeg: str, n: int, seconds: float, poll: float, workdir: Path) -> Run:
    procs: list[subprocess.Popen[bytes]] = []
    pubs: list[Publisher] = []
    outputs: list[FfmpegOutput] = []
    try:
        for i in range(n):
            out = workdir / f"ff{i}"
            out.mkdir(parents=True, exist_ok=True)
            url = f"rtmp://127.0.0.1:{free_port()}/live/s{i}"
            started = time.time()
            with open(workdir / f"ff{i}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        ffmpeg_live_cmd(ffmpeg, url, out),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
            outputs.append(FfmpegOutput(out, started))
            pubs.append(Publisher(url, retry_for=30))
            pubs[-1].start()
        watch = EdgeWatch(outputs, poll)
        watch.run(seconds, STARTUP_TIMEOUT)
    finally:
        for p in pubs:
            p.stop_event.set()
        for p in pubs:
            p.stop()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    run = Run("ffmpeg", n, watch.window)
    for i, rungs in enumerate(watch.results(SEGMENT)):
        error = pubs[i].error
        if error:
            log_tail = (workdir / f"ff{i}.log").read_text(errors="replace")[-300:]
            error = f"{error}; ffmpeg: {log_tail}"
        run.results.append(StreamResult(rungs, list(RUNGS), 0, error))
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--seconds", type=float, default=40.0, help="measured window per run (default 40)"
    )
    ap.add_argument("--max-streams", type=int, default=4, help="largest N tried (default 4)")
    ap.add_argument(
        "--poll", type=float, default=0.2, help="seconds between playlist polls (default 0.2)"
    )
    ap.add_argument(
        "--no-overload", action="store_true", help="skip the overload run (2x capacity)"
    )
    args = ap.parse_args()
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("bench.capacity: the ffmpeg CLI is needed (Debian package ffmpeg)", file=sys.stderr)
        return 1
    runs: list[Run] = []
    capacity = {"nearcast": 0, "ffmpeg": 0}

    def run_side(side: str, n: int, d: Path) -> Run:
        if side == "nearcast":
            return run_nearcast(n, args.seconds, args.poll, d)
        return run_ffmpeg(ffmpeg, n, args.seconds, args.poll, d)

    overload: dict[str, dict[str, object]] = {}
    print(HEADER, flush=True)
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
        if not args.no_overload:
            for side in ("nearcast", "ffmpeg"):
                d = work / f"overload-{side}"
                d.mkdir()
                run = run_side(side, heavy, d)
                run.side = f"{side}*"
                runs.append(run)
                overload[side] = run.to_json()
                print(run.row(), flush=True)
    ratio = capacity["nearcast"] / capacity["ffmpeg"] if capacity["ffmpeg"] else None
    print()
    print(HEADER + "   (* = overload, 2x capacity)")
    for run in runs:
        print(run.row())
    print(
        "lag: newest segment listed minus its last frame's capture, worst rung; start-up:"
        " to the first segment on every rung; rate: segments listed / live rate, worst rung"
    )
    capped = max(capacity.values()) == args.max_streams
    print(
        f"live capacity (720p30 default ladder, real time): nearcast {capacity['nearcast']}, "
        f"FFmpeg CLI {capacity['ffmpeg']}, ratio {'-' if ratio is None else f'{ratio:.2f}'}"
        + (f" (--max-streams {args.max_streams} reached: more may fit)" if capped else "")
    )
    print(
        json.dumps(
            {
                "seconds": args.seconds,
                "poll": args.poll,
                "segment_duration": SEGMENT,
                "max_streams": args.max_streams,
                "capacity": capacity,
                "capacity_ratio": None if ratio is None else round(ratio, 3),
                "runs": [{"side": r.side, **r.to_json()} for r in runs],
                "overload_streams": None if args.no_overload else heavy,
                "overload": overload,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
