"""Fan-out benchmark: nearcast's media path against nginx, and 1,000 LL-HLS viewers.

Run: ``python -m bench.fanout [--seconds S] [--viewers N] [--connections C] [--token]``

In one run, on the same machine:

1. A nearcast media server (the node's own :class:`MediaApp` and :class:`Store`
   under uvicorn, one process, uvloop + httptools) holds a *live* LL-HLS stream:
   a feeder replays real CMAF parts of the sample lecture (720p, 1/3 s parts,
   2 s segments) in real time, exactly as the transcode worker's frames arrive.
2. nginx (Debian package, 1 worker, sendfile, open_file_cache) serves the same
   bytes (playlist, segment, part) from disk, from its own temporary config on
   a free port.
3. ``wrk`` loads each with the same threads/connections/duration; requests/s,
   MB/s and the nearcast/nginx ratio are printed.
4. N simulated LL-HLS viewers (raw asyncio sockets, one keep-alive connection
   each) do blocking playlist reload (``_HLS_msn``/``_HLS_part``, following the
   preload hint) against the live stream. The server logs the wall-clock
   instant each part is complete; the viewers log when the playlist naming it
   arrived. Reported: how many requests were held when each part completed and
   the p50/p99 delay from a part's completion to its delivery.

With ``--token`` the tenant requires signed playback tokens, as a paying
platform's would: every nearcast request (wrk's and the viewers') carries
``?token=``, every playlist nearcast sends is signed with it, and nginx serves
those same signed bytes with no check at all.

The server and the load generators share the machine's cores, as in the
performance notes; compare ratios from the same run only. The last line is one
JSON object with every figure.
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
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "lecture-720p.mp4"
NGINX = "/usr/sbin/nginx"
TENANT, STREAM, RENDITION = "live", "bench", "720p"
BASE = f"/{TENANT}/{STREAM}/{RENDITION}"
# --token: the tenant's playback key, and the query every nearcast request carries.
TOKEN_KEYS = {"bench": "fanout-bench-secret-0123456789"}
QUERY = ""


def playback_token() -> str:
    from tokens import sign

    return sign(TOKEN_KEYS["bench"], "bench", "play", TENANT, STREAM, int(time.time()) + 3600)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the nearcast side (a child process: python -m bench.fanout --serve) ----------------


def serve(port: int, snapshot: Path, guard: bool) -> None:
    """Serve a live LL-HLS stream fed in real time; print each part's completion instant."""
    import uvicorn
    from prometheus_client import CollectorRegistry

    from bench.cmaf import cmaf
    from distribute.access import PlaybackGuard, PlaybackMetrics, TokenCheck
    from distribute.config import HlsConfig
    from distribute.fastpath import media_protocol
    from distribute.hls.store import Store
    from distribute.hls.track import Part
    from distribute.http import MediaApp
    from distribute.media_metrics import MediaMetrics
    from media import StreamKey
    from media.segments import InitFrame, PartFrame, SegmentFrame

    _raise_nofile()
    media = cmaf(str(SAMPLE))
    codecs = media.codecs
    store = Store(HlsConfig(segment_format="fmp4", low_latency=True, part_duration=0.334, window=6))

    async def fallback(scope, receive, send):  # type: ignore[no-untyped-def]
        await send(
            {"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]}
        )
        await send({"type": "http.response.body", "body": b""})

    app = MediaApp(store, fallback, MediaMetrics(CollectorRegistry()))
    asgi: Any = app
    if guard:  # as the node wires it: the fast path checks tokens, the guard the rest
        app.tokens = TokenCheck({TENANT: TOKEN_KEYS}.get)
        asgi = PlaybackGuard(app, app.tokens, PlaybackMetrics(CollectorRegistry()))
    stream = store.open(StreamKey(TENANT, STREAM))
    stream.begin_generation()
    stream.set_renditions(
        {
            "audio": True,
            "renditions": [
                {
                    "name": RENDITION,
                    "width": 1280,
                    "height": 720,
                    "fps": 30.0,
                    "video_bitrate": 2_800_000,
                    "maxrate": 2_800_000,
                    "audio_bitrate": 128_000,
                }
            ],
        }
    )
    stream.add_init(InitFrame(RENDITION, codecs, media.init))
    segs = media.segments

    def feed_part(index: int, part: int) -> Part | None:
        f = segs[index % len(segs)][part]
        return stream.add_part(
            PartFrame(
                RENDITION,
                index,
                part,
                index * 2.0 + f.start % 2.0,
                f.duration,
                f.independent,
                f.data,
            )
        )

    def feed_segment(index: int) -> None:
        frags = segs[index % len(segs)]
        data = b"".join(f.data for f in frags)
        stream.add_segment(
            SegmentFrame(
                RENDITION, index, index * 2.0, sum(f.duration for f in frags), codecs, data
            )
        )

    # Warm up: a few complete segments, so the playlist has its steady-state size.
    for i in range(4):
        for p in range(len(segs[i % len(segs)])):
            feed_part(i, p)
        feed_segment(i)
    track = stream.renditions[RENDITION]
    snapshot.mkdir(parents=True, exist_ok=True)
    for d in [snapshot, *snapshot.parents][:4]:
        d.chmod(0o755)
    (snapshot / "index.m3u8").write_bytes(track.playlist)
    newest = track.segments[-1]
    (snapshot / "seg.m4s").write_bytes(newest.data)
    (snapshot / "part.m4s").write_bytes(track.parts[(newest.msn, 2)].data)

    async def feeder() -> None:
        index = 4
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        n = 0
        while True:
            frags = segs[index % len(segs)]
            for p, f in enumerate(frags):
                n += 1
                await asyncio.sleep(max(0.0, t0 + n * f.duration - loop.time()))
                done = time.time()  # the part is complete: it reaches the store now
                stored = feed_part(index, p)
                if p == len(frags) - 1:
                    feed_segment(index)
                if stored is not None:  # logged by its playlist numbering (MSN.part)
                    print(f"PART {stored.msn} {stored.index} {done:.6f}", flush=True)
            index += 1

    async def main() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(4096)
        server = uvicorn.Server(
            uvicorn.Config(
                asgi,
                log_level="warning",
                lifespan="off",
                access_log=False,
                http=media_protocol(app),
                loop="uvloop",
                backlog=4096,
                timeout_keep_alive=60,
            )
        )
        task = asyncio.create_task(feeder())
        print("READY", flush=True)
        await server.serve(sockets=[sock])
        task.cancel()

    import uvloop

    uvloop.run(main())


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


def analyse(
    log: list[tuple[int, int, float, float]], parts: dict[tuple[int, int], float], warmup: float
) -> dict[str, float]:
    delays: list[float] = []
    held_at: dict[tuple[int, int], int] = {}
    t_start = min((s for _, _, s, _ in log), default=0.0) + warmup
    for msn, part, sent, got in log:
        done = parts.get((msn, part))
        if done is None or sent < t_start:
            continue
        if sent <= done:  # the request was waiting when the part completed: held
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
        "delay_p50_ms": round(pct(0.50), 1),
        "delay_p99_ms": round(pct(0.99), 1),
        "delay_max_ms": round(delays[-1] * 1000, 1) if delays else float("nan"),
        "deliveries": len(delays),
    }


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="wrk duration per run")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--rounds", type=int, default=3, help="alternating wrk rounds per server")
    ap.add_argument("--viewers", type=int, default=1000, help="simulated LL-HLS viewers")
    ap.add_argument("--viewer-seconds", type=float, default=12.0)
    ap.add_argument(
        "--token", action="store_true", help="the tenant requires signed playback tokens"
    )
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--snapshot", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, Path(args.snapshot), args.token)
        return
    global QUERY
    QUERY = f"?token={playback_token()}" if args.token else ""
    for tool in ("wrk", NGINX):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian packages wrk and nginx-light)")
    _raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="fanout-"))
    work.chmod(0o755)  # nginx's worker runs as an unprivileged user when started by root
    snap = work / "www" / TENANT / STREAM / RENDITION
    nc_port, ng_port = free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.fanout", "--serve", str(nc_port), "--snapshot", str(snap)]
        + (["--token"] if args.token else []),
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    nginx = None
    parts: dict[tuple[int, int], float] = {}
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith(b"READY"):
            raise RuntimeError(f"nearcast bench server failed: {line!r}")
        wait_port(nc_port, server)
        nginx = start_nginx(work / "www", ng_port, work)

        import threading

        def pump() -> None:
            assert server.stdout is not None
            for raw in server.stdout:
                f = raw.split()
                if f and f[0] == b"PART":
                    parts[(int(f[1]), int(f[2]))] = float(f[3])

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 10
        while len(parts) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the feeder completes a part every 1/3 s
        if len(parts) < 2:
            raise RuntimeError("the live stream completed no parts within 10 s")

        ng_worker = nginx_worker(nginx.pid)
        results: dict[str, dict[str, float]] = {}
        rows = []
        for kind in ("playlist", "segment", "part"):
            # Alternate the two servers, N rounds each; every round pins one file that
            # both serve byte for byte, so a round's ratio compares like with like. The
            # round with the median ratio is reported: neighbours on a shared machine
            # steal CPU in bursts, and one burst should not decide the ratio.
            pairs: list[dict[str, dict[str, float]]] = []
            for _round in range(args.rounds):
                # What nearcast serves live right now; nginx serves the very same bytes.
                if kind == "playlist":
                    nc_path, file = f"{BASE}/index.m3u8{QUERY}", "index.m3u8"
                elif kind == "segment":
                    msn = max(parts)[0] - 1  # the newest complete segment
                    nc_path, file = f"{BASE}/{msn}.m4s{QUERY}", "seg.m4s"
                else:
                    msn, idx = max(parts)  # the newest part
                    nc_path, file = f"{BASE}/{msn}.{idx}.m4s{QUERY}", "part.m4s"
                body = fetch(nc_port, nc_path)
                # A new name each round: nginx's open_file_cache must not serve a
                # cached length for a file rewritten in place.
                file = f"r{_round}-{file}"
                (snap / file).write_bytes(body)
                pair: dict[str, dict[str, float]] = {}
                servers = (("nearcast", nc_port, server.pid), ("nginx", ng_port, ng_worker))
                for who, port, pid in servers:
                    path = nc_path if who == "nearcast" else f"{BASE}/{file}"
                    cpu0 = cpu_seconds(pid)
                    url = f"http://127.0.0.1:{port}{path}"
                    r = wrk(url, args.seconds, args.threads, args.connections)
                    cpu = cpu_seconds(pid) - cpu0
                    if r["non2xx"]:
                        raise RuntimeError(f"{kind}: {r['non2xx']} error responses from {who}")
                    r["cpu_us"] = cpu * 1e6 / max(1.0, r["rps"] * args.seconds)
                    r["body"] = len(body)
                    pair[who] = r
                    if who == "nearcast" and kind != "playlist" and fetch(port, path) != body:
                        raise RuntimeError(f"{kind}: {path} changed during the round")
                pairs.append(pair)
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
            rows.append((kind, results[kind]))

        import uvloop

        log, errors, count = uvloop.run(viewers(nc_port, args.viewers, args.viewer_seconds))
        time.sleep(0.5)
        ll = analyse(log, dict(parts), warmup=2.0)
        ll["viewers"] = count
        ll["viewer_errors"] = len(errors)
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"{'what':<10} {'nearcast req/s':>15} {'nginx req/s':>12} {'ratio':>6} "
        f"{'nearcast MB/s':>14} {'nginx MB/s':>11} {'ratio':>6} {'CPU us/req nc/nginx':>20}"
    )
    for kind, r in rows:
        print(
            f"{kind:<10} {r['nearcast_rps']:>15} {r['nginx_rps']:>12} {r['rps_ratio']:>6.2f} "
            f"{r['nearcast_MBps']:>14} {r['nginx_MBps']:>11} {r['bytes_ratio']:>6.2f}"
            f" {r['nearcast_cpu_us']:>10.1f}/{r['nginx_cpu_us']:<9.1f}"
            f" rounds {r['round_ratios']}, {r['body_bytes']} B"
        )
    print(
        f"LL-HLS: {ll['viewers']} viewers, held per part median {ll['held_median']}"
        f" max {ll['held_max']} over {ll['parts_measured']} parts;"
        f" part complete -> delivered p50 {ll['delay_p50_ms']} ms,"
        f" p99 {ll['delay_p99_ms']} ms, max {ll['delay_max_ms']} ms;"
        f" viewer errors {ll['viewer_errors']}" + (f" (first: {errors[0]})" if errors else "")
    )
    figures = {
        "wrk": {"threads": args.threads, "connections": args.connections, "seconds": args.seconds},
        "token": args.token,
        **results,
        "targets": {
            "segment_bytes_ratio>=0.85": results["segment"]["bytes_ratio"] >= 0.85,
            "playlist_rps_ratio>=0.5": results["playlist"]["rps_ratio"] >= 0.5,
            "part_rps_ratio>=0.5": results["part"]["rps_ratio"] >= 0.5,
            "viewers_held>=1000": ll["held_max"] >= 1000,
            "delay_p99<=200ms": ll["delay_p99_ms"] <= 200,
        },
        "llhls": ll,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
