"""Fan-out benchmark: the shipped ``nearcast node`` against nginx, and LL-HLS viewers.

Run: ``python -m bench.fanout [--seconds S] [--viewers N] [--connections C] [--token]
[--no-load] [--noise-floor]``

In one run, on the same machine:

1. ``nearcast node`` (the shipped command, its own defaults except LL-HLS delivery and a
   configured transcode capacity, so no calibration runs beside the measurement) is fed by
   a real RTMP publish of the sample lecture (720p) in real time, with the ``passthrough``
   profile: the node packages CMAF parts and segments and serves them, no encode runs.
2. nginx (Debian package, 1 worker, sendfile, ``open_file_cache``) serves the same bytes
   (playlist, segment, part), fetched from the node and written to disk, from its own
   temporary config on a free port.
3. ``wrk`` loads each with the same threads/connections/duration, rounds alternating;
   requests/s, MB/s and the nearcast/nginx ratio are printed. This is **serving alone**.
   With ``--noise-floor`` every round loads nginx a second time and reports that run's
   rate over the first: the same server against itself, how far the machine alone moves
   a ratio.
4. A second publish of the lecture gets the node's default ABR ladder. Once it lists
   segments, step 3 runs again: **serving under transcode load**, nginx under the very
   same load (``--no-load`` skips it).
5. N simulated LL-HLS viewers (raw asyncio sockets, one keep-alive connection each) do
   blocking playlist reload (``_HLS_msn``/``_HLS_part``, following the preload hint)
   against the live passthrough stream. Reported: how many requests were held for each
   part, and the spread of its delivery: from the first viewer that got the playlist
   naming a part to each later one. That spread is the fan-out cost the node adds; the
   time between a part's completion inside the node and its first delivery is not
   visible from outside and is not in it.

With ``--token`` the tenant requires signed playback tokens, as a paying platform's
would: every nearcast request (wrk's and the viewers') carries ``?token=``, every
playlist nearcast sends is signed with it, and nginx serves those same signed bytes with
no check at all.

The node and the load generators share the machine's cores; compare ratios from the same
run only. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "lecture-720p.mp4"
NGINX = "/usr/sbin/nginx"
TENANT, STREAM, RENDITION = "live", "bench", "source"
LOAD_STREAM = "load"
BASE = f"/{TENANT}/{STREAM}/{RENDITION}"
# --token: the tenant's playback key, and the query every nearcast request carries.
TOKEN_KEYS = {"bench": "fanout-bench-secret-0123456789"}
QUERY = ""


def playback_token(stream: str = STREAM) -> str:
    from tokens import sign

    return sign(TOKEN_KEYS["bench"], "bench", "play", TENANT, stream, int(time.time()) + 3600)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the nearcast side: the shipped node, fed by real RTMP publishes ----------------------


def node_env(token: bool) -> dict[str, str]:
    """What the benchmark changes from the node's defaults, and why."""
    env = {
        # LL-HLS delivery, so that parts and blocking reload are measured.
        "NEARCAST_HLS_SEGMENT_FORMAT": "fmp4",
        "NEARCAST_HLS_LOW_LATENCY": "true",
        # A configured capacity: no calibration encode runs beside the measurement.
        "NEARCAST_TRANSCODE_CAPACITY_UNITS": "1.0",
        "NEARCAST_NODE_LOG_LEVEL": "WARNING",
    }
    if token:
        env["NEARCAST_PLAYBACK_TENANTS"] = json.dumps({TENANT: {"keys": TOKEN_KEYS}})
    return env


def start_publish(rtmp_url: str, stop: threading.Event) -> threading.Thread:
    """The lecture, looped in real time, until ``stop``: a live class."""
    from nearcast.publish import publish

    thread = threading.Thread(
        target=publish,
        args=(str(SAMPLE), rtmp_url),
        kwargs={"loop": True, "stop": stop},
        daemon=True,
    )
    thread.start()
    return thread


def wait_listed(port: int, path: str, count: int, timeout: float) -> bytes:
    """The media playlist at ``path`` once it lists ``count`` segments."""
    deadline = time.monotonic() + timeout
    body = b""
    while time.monotonic() < deadline:
        try:
            body = fetch(port, path)
        except (OSError, urllib.error.HTTPError):
            body = b""
        if body.count(b"#EXTINF") >= count:
            return body
        time.sleep(0.2)
    raise RuntimeError(f"{path} listed fewer than {count} segments after {timeout} s: {body!r}")


def newest(playlist: bytes) -> tuple[str, str]:
    """The newest complete segment's URI and the newest part's URI of a media playlist."""
    lines = playlist.decode().splitlines()
    segment = [line for line in lines if line and not line.startswith("#")][-1]
    parts = re.findall(r'#EXT-X-PART:[^\n]*URI="([^"]+)"', playlist.decode())
    return segment, parts[-1]


# -- nginx -------------------------------------------------------------------------------


def start_nginx(root: Path, port: int, work: Path) -> subprocess.Popen[bytes]:
    conf = work / "nginx.conf"
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / d).mkdir(exist_ok=True)
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    types {{ application/vnd.apple.mpegurl m3u8; video/mp4 m4s mp4; }}
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 60;
    open_file_cache max=1000 inactive=60s;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        add_header Access-Control-Allow-Origin *;
    }}
}}
"""
    )
    proc = subprocess.Popen([NGINX, "-p", str(work), "-c", str(conf)], stderr=subprocess.PIPE)
    wait_port(port, proc)
    return proc


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"server exited early: {err}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def nginx_worker(master: int) -> int:
    """The pid of nginx's single worker process (the one that serves)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{master}/task").glob("*"):
            kids = (task / "children").read_text().split()
            if kids:
                return int(kids[0])
        time.sleep(0.05)
    raise RuntimeError("nginx started no worker")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fetch(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return bytes(r.read())


# -- wrk ---------------------------------------------------------------------------------

_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def wrk(url: str, seconds: float, threads: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    mbps = float(m.group(1)) * _UNITS[m.group(2)] / 1e6 if m else 0.0
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "mbps": mbps,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


# -- LL-HLS viewers ------------------------------------------------------------------------

HINT = re.compile(rb'PRELOAD-HINT:TYPE=PART,URI="(\d+)\.(\d+)\.m4s[?"]')


class Viewer(asyncio.Protocol):
    """One LL-HLS client on one keep-alive connection: blocking playlist reload for the
    part its last playlist hinted, over and over (what hls.js does in low-latency mode)."""

    def __init__(
        self,
        stop: float,
        log: list[tuple[int, int, float, float]],
        errors: list[str],
        done: asyncio.Future[None],
    ) -> None:
        self.stop, self.log, self.errors, self.done = stop, log, errors, done
        self.buf = b""
        self.want: tuple[int, int] | None = None
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(
            f"GET {BASE}/index.m3u8{QUERY} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        got = time.time()
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            i = head.find(b"content-length: ")
            eol = head.find(b"\r", i)
            length = int(head[i + 16 : eol if eol >= 0 else len(head)]) if i >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            if not head.startswith(b"HTTP/1.1 200"):
                self.fail(head.split(b"\r\n")[0].decode())
                return
            if self.want is not None:
                self.log.append((self.want[0], self.want[1], self.sent, got))
            m = HINT.search(body)
            if m is None:
                self.fail("no preload hint")
                return
            if got >= self.stop:
                self.transport.close()
                return
            self.want = (int(m.group(1)), int(m.group(2)))
            self.sent = time.time()
            self.transport.write(
                f"GET {BASE}/index.m3u8?_HLS_msn={self.want[0]}&_HLS_part={self.want[1]}"
                f"{QUERY.replace('?', '&')} "
                "HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
            )

    def fail(self, why: str) -> None:
        self.errors.append(why)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def viewers(
    port: int, count: int, seconds: float
) -> tuple[list[tuple[int, int, float, float]], list[str], int]:
    loop = asyncio.get_running_loop()
    log: list[tuple[int, int, float, float]] = []
    errors: list[str] = []
    stop = time.time() + seconds
    waits = []
    for _ in range(count):
        done: asyncio.Future[None] = loop.create_future()
        try:
            await loop.create_connection(
                lambda d=done: Viewer(stop, log, errors, d), "127.0.0.1", port
            )
        except OSError as exc:
            errors.append(f"connect: {exc}")
            continue
        waits.append(done)
    await asyncio.wait_for(asyncio.gather(*waits), seconds + 30)
    return log, errors, len(waits)


def analyse(log: list[tuple[int, int, float, float]], warmup: float) -> dict[str, float]:
    """Per part: how many viewers were held waiting for it, and the spread of its delivery
    from its first viewer to each later one."""
    t_start = min((s for _, _, s, _ in log), default=0.0) + warmup
    first: dict[tuple[int, int], float] = {}
    for msn, part, sent, got in log:
        if sent >= t_start:
            first[(msn, part)] = min(got, first.get((msn, part), got))
    delays: list[float] = []
    held_at: dict[tuple[int, int], int] = {}
    for msn, part, sent, got in log:
        done = first.get((msn, part))
        if done is None or sent < t_start:
            continue
        if sent <= done:  # the request was waiting when the part was first delivered: held
            held_at[(msn, part)] = held_at.get((msn, part), 0) + 1
            delays.append(max(0.0, got - done))
    delays.sort()

    def pct(q: float) -> float:
        return delays[min(len(delays) - 1, int(q * len(delays)))] * 1000 if delays else float("nan")

    held = sorted(held_at.values())
    return {
        "held_median": statistics.median(held) if held else 0,
        "held_max": held[-1] if held else 0,
        "parts_measured": len(held),
        "spread_p50_ms": round(pct(0.50), 1),
        "spread_p99_ms": round(pct(0.99), 1),
        "spread_max_ms": round(delays[-1] * 1000, 1) if delays else float("nan"),
        "deliveries": len(delays),
    }


# -- main ------------------------------------------------------------------------------------


def load_rounds(
    kinds: Callable[[], list[tuple[str, str]]],
    snap: Path,
    node: tuple[int, int],
    nginx: tuple[int, int],
    args: argparse.Namespace,
    label: str,
) -> dict[str, dict[str, Any]]:
    """wrk against the node and nginx, alternating, N rounds per kind of file. ``kinds``
    names the files live right now: asked again every round, as parts and segments age
    out of the playlist while the rounds run."""
    nc_port, nc_pid = node
    ng_port, ng_pid = nginx
    results: dict[str, dict[str, Any]] = {}
    for index, (kind, _) in enumerate(kinds()):
        # Every round pins one file that both serve byte for byte, so a round's ratio
        # compares like with like. The round with the median ratio is reported:
        # neighbours on a shared machine steal CPU in bursts, and one burst should not
        # decide the ratio.
        pairs: list[dict[str, dict[str, float]]] = []
        for round_ in range(args.rounds):
            nc_path = kinds()[index][1]
            body = fetch(nc_port, nc_path)
            # A new name each round: nginx's open_file_cache must not serve a cached
            # length for a file rewritten in place.
            file = f"{label}-r{round_}-{kind}"
            (snap / file).write_bytes(body)
            pair: dict[str, dict[str, float]] = {}
            servers = [("nearcast", nc_port, nc_pid), ("nginx", ng_port, ng_pid)]
            if args.noise_floor:
                servers.append(("nginx-again", ng_port, ng_pid))
            for who, port, pid in servers:
                path = nc_path if who == "nearcast" else f"{BASE}/{file}"
                cpu0 = cpu_seconds(pid)
                r = wrk(
                    f"http://127.0.0.1:{port}{path}", args.seconds, args.threads, args.connections
                )
                cpu = cpu_seconds(pid) - cpu0
                if r["non2xx"]:
                    raise RuntimeError(f"{label} {kind}: {r['non2xx']} error responses from {who}")
                r["cpu_us"] = cpu * 1e6 / max(1.0, r["rps"] * args.seconds)
                r["body"] = len(body)
                pair[who] = r
                if who == "nearcast" and kind != "playlist" and fetch(port, path) != body:
                    raise RuntimeError(f"{kind}: {path} changed during the round")
            pairs.append(pair)
        # nginx against itself, round by round, in the order they ran: how far the
        # machine alone moves a ratio.
        again = [
            p["nginx-again"]["rps"] / max(1e-9, p["nginx"]["rps"])
            for p in pairs
            if "nginx-again" in p
        ]
        pairs.sort(key=lambda p: p["nearcast"]["rps"] / max(1e-9, p["nginx"]["rps"]))
        mid = pairs[(len(pairs) - 1) // 2]  # the lower median for an even count
        nc, ng = mid["nearcast"], mid["nginx"]
        results[kind] = {
            "nearcast_rps": round(nc["rps"]),
            "nginx_rps": round(ng["rps"]),
            "nearcast_MBps": round(nc["mbps"], 1),
            "nginx_MBps": round(ng["mbps"], 1),
            "rps_ratio": round(nc["rps"] / ng["rps"], 3) if ng["rps"] else 0.0,
            "bytes_ratio": round(nc["mbps"] / ng["mbps"], 3) if ng["mbps"] else 0.0,
            "body_bytes": int(nc["body"]),
            "round_ratios": [
                round(p["nearcast"]["rps"] / max(1e-9, p["nginx"]["rps"]), 3) for p in pairs
            ],
            # Server CPU per request: independent of what the neighbours do.
            "nearcast_cpu_us": round(nc["cpu_us"], 1),
            "nginx_cpu_us": round(ng["cpu_us"], 1),
        }
        if again:
            results[kind]["noise_floor"] = {
                "round_ratios": [round(r, 3) for r in again],
                "median": round(statistics.median(again), 3),
            }
    return results


def print_table(label: str, results: dict[str, dict[str, Any]]) -> None:
    print(label)
    print(
        f"{'what':<10} {'nearcast req/s':>15} {'nginx req/s':>12} {'ratio':>6} "
        f"{'nearcast MB/s':>14} {'nginx MB/s':>11} {'ratio':>6} {'CPU us/req nc/nginx':>20}"
    )
    for kind, r in results.items():
        print(
            f"{kind:<10} {r['nearcast_rps']:>15} {r['nginx_rps']:>12} {r['rps_ratio']:>6.2f} "
            f"{r['nearcast_MBps']:>14} {r['nginx_MBps']:>11} {r['bytes_ratio']:>6.2f}"
            f" {r['nearcast_cpu_us']:>10.1f}/{r['nginx_cpu_us']:<9.1f}"
            f" rounds {r['round_ratios']}, {r['body_bytes']} B"
        )
        if "noise_floor" in r:
            nf = r["noise_floor"]
            line = f"nginx against itself: rounds {nf['round_ratios']}, median {nf['median']}"
            print(f"{'':<10} {line}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=5.0, help="wrk duration per run")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--rounds", type=int, default=3, help="alternating wrk rounds per server")
    ap.add_argument("--viewers", type=int, default=1000, help="simulated LL-HLS viewers")
    ap.add_argument("--viewer-seconds", type=float, default=12.0)
    ap.add_argument(
        "--token", action="store_true", help="the tenant requires signed playback tokens"
    )
    ap.add_argument(
        "--no-load", action="store_true", help="skip the run under a transcoding ladder"
    )
    ap.add_argument(
        "--noise-floor",
        action="store_true",
        help="load nginx twice per round and report its ratio to itself",
    )
    args = ap.parse_args()
    global QUERY
    QUERY = f"?token={playback_token()}" if args.token else ""
    for tool in ("wrk", NGINX):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian packages wrk and nginx-light)")
    _raise_nofile()
    from nearcast.launch import NodeSubprocess

    work = Path(tempfile.mkdtemp(prefix="fanout-"))
    work.chmod(0o755)  # nginx's worker runs as an unprivileged user when started by root
    snap = work / "www" / TENANT / STREAM / RENDITION
    snap.mkdir(parents=True)
    for d in [snap, *snap.parents][:4]:
        d.chmod(0o755)
    ng_port = free_port()
    node = NodeSubprocess(work / "node.log", env=node_env(args.token))
    publishers: list[threading.Thread] = []
    stop = threading.Event()
    nginx = None
    try:
        publishers.append(start_publish(node.rtmp(f"{TENANT}/{STREAM}?profile=passthrough"), stop))
        playlist_path = f"{BASE}/index.m3u8{QUERY}"
        live = wait_listed(node.http_port, playlist_path, 3, timeout=60)
        nginx = start_nginx(work / "www", ng_port, work)
        ng_worker = nginx_worker(nginx.pid)

        def kinds() -> list[tuple[str, str]]:
            segment, part = newest(fetch(node.http_port, playlist_path))
            return [
                ("playlist", playlist_path),
                ("segment", f"{BASE}/{segment}"),
                ("part", f"{BASE}/{part}"),
            ]

        del live
        phases: dict[str, dict[str, dict[str, Any]]] = {}
        servers = ((node.http_port, node.proc.pid), (ng_port, ng_worker))
        phases["alone"] = load_rounds(kinds, snap, *servers, args, "alone")
        print_table("serving alone (passthrough, no encode on the machine)", phases["alone"])

        import uvloop

        log, errors, count = uvloop.run(viewers(node.http_port, args.viewers, args.viewer_seconds))
        ll: dict[str, Any] = {**analyse(log, warmup=2.0)}
        ll["viewers"] = count
        ll["viewer_errors"] = len(errors)
        print(
            f"LL-HLS: {ll['viewers']} viewers, held per part median {ll['held_median']}"
            f" max {ll['held_max']} over {ll['parts_measured']} parts;"
            f" delivery spread after the first viewer p50 {ll['spread_p50_ms']} ms,"
            f" p99 {ll['spread_p99_ms']} ms, max {ll['spread_max_ms']} ms;"
            f" viewer errors {ll['viewer_errors']}" + (f" (first: {errors[0]})" if errors else "")
        )

        if not args.no_load:
            publishers.append(start_publish(node.rtmp(f"{TENANT}/{LOAD_STREAM}"), stop))
            load_query = f"?token={playback_token(LOAD_STREAM)}" if args.token else ""
            wait_listed(
                node.http_port, f"/{TENANT}/{LOAD_STREAM}/360p/index.m3u8{load_query}", 2, 90
            )
            phases["under_transcode"] = load_rounds(kinds, snap, *servers, args, "load")
            print_table(
                "serving while a 3-rung ladder transcodes on the machine", phases["under_transcode"]
            )
    finally:
        stop.set()
        for publisher in publishers:  # before the node goes: no reset mid-publish
            publisher.join(15)
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        node.stop()
        shutil.rmtree(work, ignore_errors=True)

    alone = phases["alone"]
    figures = {
        "wrk": {"threads": args.threads, "connections": args.connections, "seconds": args.seconds},
        "token": args.token,
        **alone,
        "under_transcode": phases.get("under_transcode"),
        "targets": {
            "playlist_rps_ratio>=0.8": alone["playlist"]["rps_ratio"] >= 0.8,
            "part_rps_ratio>=0.8": alone["part"]["rps_ratio"] >= 0.8,
            "segment_bytes_ratio>=0.95": alone["segment"]["bytes_ratio"] >= 0.95,
            "viewers_held>=1000": ll["held_max"] >= 1000,
            "spread_p99<=200ms": ll["spread_p99_ms"] <= 200,
        },
        "llhls": ll,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
