"""Ingest capacity: how many concurrent 360p RTMP publishers one node takes without loss.

Run: ``python -m bench.ingest [--steps 4,8,16,...] [--seconds S]``

One ``nearcast node`` process with the passthrough (``copy``) ladder, so what is
measured is ingest (RTMP parsing, the node's event loop, handing packets to the
per-stream worker that repackages them), not x264. Publishers are Debian ``ffmpeg``
CLI processes (``-re -stream_loop -1 -c copy``, the 360p30 sample at ~340 kbit/s),
added in steps. At each step, after a settling pause, every stream's received video
frame rate is measured from ``GET /v1/streams`` over ``--seconds``.

RTMP runs over TCP, so an overloaded node does not lose packets on the wire: it
reads late, the publishers' sockets fill and ``-re`` encoders fall behind real time.
A step passes when every stream received at least 97 % of its real-time frame rate
over the step, no stream is more than 1 s behind real time since it started,
and the node dropped nothing but late packets (DTS behind its kind's, which the node
drops by policy: they would break the muxers). The publishers
run on the same machine and their CPU counts against the node's: the figure is for
this machine as a whole. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "small-360p.mp4"
SOURCE_FPS = 30.0
PASS_RATIO = 0.97
MAX_LAG = 1.0
CLK = os.sysconf("SC_CLK_TCK")
# Bearer token of the benchmark node's operator calls (GET /v1/streams with ingest statistics).
OPERATOR = "bench-operator-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU seconds of ``pid``, and of its children (the workers), the
    live ones and those already reaped (a stream that ended, a restarted worker)."""
    node = workers = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        proc_pid, ppid = int(stat.parent.name), int(fields[1])
        cpu = (int(fields[11]) + int(fields[12])) / CLK
        if proc_pid == pid:
            node += cpu
            workers += (int(fields[13]) + int(fields[14])) / CLK
        elif ppid == pid:
            workers += cpu
    return node, workers


class Node:
    def __init__(self) -> None:
        self.rtmp_port, self.http_port = _free_port(), _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEARCAST_")}
        env.update(
            NEARCAST_RTMP_LISTEN=f"127.0.0.1:{self.rtmp_port}",
            NEARCAST_HTTP_LISTEN=f"127.0.0.1:{self.http_port}",
            NEARCAST_TRANSCODE_LADDER="[{name: source, codec: copy}]",
            NEARCAST_TRANSCODE_CAPACITY_UNITS="1000",
            NEARCAST_NODE_LOG_LEVEL="WARNING",
            # Every publisher comes from loopback, and the steps go past the defaults'
            # 16 connections per address, 32 publishers per node and 10 publish attempts
            # per address a minute.
            NEARCAST_RTMP_MAX_CONNECTIONS_PER_IP="0",
            NEARCAST_INGEST_MAX_PUBLISHERS="0",
            # GET /v1/streams shows ingest statistics to the operator only.
            NEARCAST_INGEST_OPERATOR_TOKEN=OPERATOR,
            NEARCAST_INGEST_MAX_PUBLISH_ATTEMPTS_PER_IP="0",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nearcast", "node"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.http_port}",
            timeout=10,
            headers={"authorization": f"Bearer {OPERATOR}"},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.http.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("bench.ingest: the node did not start")
            time.sleep(0.2)

    def ingest(self) -> dict[str, dict[str, Any]]:
        out = {}
        for s in self.http.get("/v1/streams").json()["streams"]:
            if s.get("ingest"):
                out[s["stream"]] = s["ingest"]
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.http.close()


def ffmpeg_push(
    source: str,
    url: str,
    *,
    loop: bool = True,
    extra: tuple[str, ...] = (),
    ffmpeg: str = "ffmpeg",
    loglevel: str = "error",
    stderr: int = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Debian's FFmpeg CLI pushing ``source`` over RTMP(S) in real time, remuxed (-c copy),
    as an encoder would; ``loop`` restarts it at its end."""
    args = [ffmpeg, "-hide_banner", "-loglevel", loglevel, "-re"]
    if loop:
        args += ["-stream_loop", "-1"]
    args += ["-i", source, "-c", "copy", *extra, "-f", "flv", url]
    return subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
    )


def measure(node: Node, n: int, seconds: float) -> dict[str, Any]:
    a, cpu_a, t_a = node.ingest(), _cpu_seconds(node.proc.pid), time.monotonic()
    time.sleep(seconds)
    b, cpu_b, t_b = node.ingest(), _cpu_seconds(node.proc.pid), time.monotonic()
    dt = t_b - t_a
    rates = []
    dropped = late = 0
    lag = 0.0
    bits = 0.0
    for name, s in b.items():
        if name not in a:
            continue
        rates.append((s["video_frames"] - a[name]["video_frames"]) / dt)
        # Late packets (behind their kind's DTS) are dropped by policy; anything else
        # dropped is a loss.
        dropped += s["dropped_packets"] - s["late_packets"]
        late += s["late_packets"]
        # Media time a -re publisher has delivered against the wall clock since it started.
        lag = max(lag, s["uptime"] - s["video_frames"] / SOURCE_FPS)
        bits += (s["bytes"] - a[name]["bytes"]) * 8 / dt
    live = len(rates)
    ok = (
        live == n
        and min(rates, default=0) >= PASS_RATIO * SOURCE_FPS
        and lag <= MAX_LAG
        and not dropped
    )
    return {
        "publishers": n,
        "live": live,
        "fps_min": round(min(rates, default=0), 2),
        "fps_mean": round(sum(rates) / live, 2) if live else 0.0,
        "mbit_s": round(bits / 1e6, 2),
        "max_lag_s": round(lag, 2),
        "dropped": dropped,
        "late": late,
        "node_cpu": round((cpu_b[0] - cpu_a[0]) / dt, 3),
        "workers_cpu": round((cpu_b[1] - cpu_a[1]) / dt, 3),
        "ok": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="4,8,16,24,32,48,64")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement per step")
    parser.add_argument("--settle", type=float, default=5.0, help="pause after adding publishers")
    args = parser.parse_args()
    steps = [int(x) for x in args.steps.split(",")]
    load_start = round(os.getloadavg()[0], 2)
    node = Node()
    pubs: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    print(
        f"{'publishers':>10} {'live':>5} {'fps min':>8} {'fps mean':>9} {'Mbit/s':>7} "
        f"{'lag s':>6} {'dropped':>8} {'late':>5} {'node CPU':>9} {'workers CPU':>12}  ok",
        flush=True,
    )
    try:
        for n in steps:
            while len(pubs) < n:
                pubs.append(
                    ffmpeg_push(str(SAMPLE), f"rtmp://127.0.0.1:{node.rtmp_port}/live/b{len(pubs)}")
                )
            deadline = time.monotonic() + 30
            while len(node.ingest()) < n and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(args.settle)  # let the 5 s measurement windows fill
            row = measure(node, n, args.seconds)
            rows.append(row)
            print(
                f"{row['publishers']:>10} {row['live']:>5} {row['fps_min']:>8} "
                f"{row['fps_mean']:>9} {row['mbit_s']:>7} {row['max_lag_s']:>6} "
                f"{row['dropped']:>8} {row['late']:>5} "
                f"{row['node_cpu']:>9} {row['workers_cpu']:>12}  {'yes' if row['ok'] else 'NO'}",
                flush=True,
            )
            if not row["ok"]:
                break
    finally:
        for p in pubs:
            p.terminate()
        for p in pubs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        node.stop()
    passed = [r["publishers"] for r in rows if r["ok"]]
    first_fail = next((r["publishers"] for r in rows if not r["ok"]), None)
    print(
        json.dumps(
            {
                "bench": "ingest",
                "source": SAMPLE.name,
                "ladder": "passthrough",
                "cpus": os.cpu_count(),
                "load_average_at_start": load_start,
                "max_publishers_without_loss": max(passed, default=0),
                "first_failing_step": first_fail,
                "steps": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
