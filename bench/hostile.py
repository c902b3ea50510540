"""What one hostile RTMP client costs the shipped node while a class is playing.

Starts ``nearcast node`` (the shipped command, default limits), publishes a class
into it with ``nearcast publish`` and reads its ladder, then runs each attack from
loopback in turn. Throughout, ``/healthz`` is probed every 50 ms: its latency is
how long the node's event loop was stalled for everyone else. Per attack it prints
the probe's p99 and max, the node's RSS growth, the segments the class listed
meanwhile (about one per 2 s of attack window; a stalled node lists none) and the
refusals counted in ``ingest_rejected_total``.

    python -m bench.hostile
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ingest.rtmp import amf0
from ingest.rtmp.chunk import ChunkWriter, Message
from ingest.rtmp.handshake import HandshakePacket
from nearcast.launch import NodeSubprocess
from nearcast.publish import publish

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = str(ROOT / "samples" / "small-360p.mp4")
LADDER = "[{name: 180p, width: 320, height: 180, video_bitrate: 250000}]"
CLASS = "live/class"
C1 = bytes(HandshakePacket(0, 0, bytes(1528)))
HANDSHAKE = b"\x03" + C1 + C1


def _connected() -> tuple[bytes, ChunkWriter]:
    """Handshake and connect, as every client sends them."""
    writer = ChunkWriter()
    connect = amf0.encode("connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live"})
    return HANDSHAKE + writer.write(Message(3, 0, 20, 0, connect)), writer


def _send(port: int, data: bytes, seconds: float = 5.0) -> None:
    """Send ``data`` and read until the node closes the connection (or ``seconds``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as s:
        try:
            s.sendall(data)
            while s.recv(65536):
                pass
        except OSError:
            pass


def amf_connect_16mib(port: int) -> None:
    """A connect announcing 16 MiB: a 2 M-element strict array of nulls follows."""
    header = b"\x03\x00\x00\x00" + (16 * 1024 * 1024 - 1).to_bytes(3, "big") + b"\x14" + bytes(4)
    body = amf0.encode("connect", 1.0) + b"\x0a" + (2_000_000).to_bytes(4, "big")
    chunks = [body[:128]] + [b"\xc3" + b"\x05" * 128 for _ in range(8192)]
    _send(port, HANDSHAKE + header + b"".join(chunks))


def one_byte_chunks(port: int) -> None:
    hello, writer = _connected()
    _send(port, hello + writer.write(Message(2, 0, 1, 0, (1).to_bytes(4, "big"))))


def null_commands(port: int) -> None:
    """64 KiB commands of AMF nulls back to back: the dearest bytes to decode."""
    hello, writer = _connected()
    costly = writer.write(Message(3, 0, 20, 0, amf0.encode("_checkbw", 0.0) + b"\x05" * 65_000))
    _send(port, hello + costly * 200, seconds=10)


def never_read(port: int, count: int = 500) -> None:
    """``count`` connections that ask for replies (pings) and never read them."""
    hello, writer = _connected()
    ping = writer.write(Message(2, 0, 4, 0, bytes.fromhex("0006 0000002a"))) * 4096
    socks = []
    try:
        for _ in range(count):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.setblocking(False)
                s.send(hello + ping)
                socks.append(s)
            except OSError:
                pass
        time.sleep(12)  # past rtmp.write_timeout (10 s): the node drops the ones it took
    finally:
        for s in socks:
            s.close()


ATTACKS: dict[str, Callable[[int], None]] = {
    "16 MiB AMF0 connect": amf_connect_16mib,
    "Set Chunk Size 1": one_byte_chunks,
    "64 KiB AMF null commands x200": null_commands,
    "500 connections that never read": never_read,
}


class Probe:
    """``/healthz`` every 50 ms in a thread; latencies in ms."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    c.get("/healthz")
                    self.samples.append((time.perf_counter() - t0) * 1000)
                except httpx.HTTPError:
                    self.samples.append(5000.0)
                self._stop.wait(0.05)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rejected(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {
        s.labels["reason"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "ingest_rejected_total"
    }


def _segments(base: str) -> int:
    """The number of the class's newest listed segment plus one (0: none yet)."""
    r = httpx.get(f"{base}/{CLASS}/180p/index.m3u8", timeout=5)
    if r.status_code != 200 or "#EXTINF" not in r.text:
        return 0
    first = int(r.text.split("#EXT-X-MEDIA-SEQUENCE:")[1].split()[0])
    return first + r.text.count("#EXTINF")


def run(names: list[str]) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        node = NodeSubprocess(
            Path(tmp) / "node.log",
            {
                "NEARCAST_TRANSCODE_LADDER": LADDER,
                "NEARCAST_TRANSCODE_CAPACITY_UNITS": "4",
                "NEARCAST_NODE_LOG_LEVEL": "WARNING",
            },
        )
        stop = threading.Event()
        teacher = threading.Thread(
            target=publish,
            args=(SAMPLE, node.rtmp(CLASS)),
            kwargs={"loop": True, "stop": stop},
            daemon=True,
        )
        teacher.start()
        rows: list[dict[str, object]] = []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not _segments(node.http):
                time.sleep(0.2)
            for name in names:
                before_rss, before_rej = _rss_mb(node.proc.pid), _rejected(node.http)
                before_seq = _segments(node.http)
                with Probe(node.http) as probe:
                    # A window of at least two segment durations around the attack.
                    time.sleep(2)
                    ATTACKS[name](node.rtmp_port)
                    time.sleep(2)
                lat = sorted(probe.samples)
                after = _rejected(node.http)
                rows.append(
                    {
                        "attack": name,
                        "healthz_p99_ms": round(
                            statistics.quantiles(lat, n=100, method="inclusive")[98], 1
                        ),
                        "healthz_max_ms": round(lat[-1], 1),
                        "rss_growth_mb": round(_rss_mb(node.proc.pid) - before_rss, 1),
                        "class_segments_during": _segments(node.http) - before_seq,
                        "refused": {
                            k: int(v - before_rej.get(k, 0))
                            for k, v in after.items()
                            if v > before_rej.get(k, 0)
                        },
                    }
                )
        finally:
            stop.set()
            teacher.join(10)
            node.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack", action="append", choices=list(ATTACKS), help="default: all")
    args = parser.parse_args()
    rows = run(args.attack or list(ATTACKS))
    print(f"{'attack':34} {'p99 ms':>7} {'max ms':>7} {'RSS MB':>7} {'segs':>5}  refused")
    for r in rows:
        print(
            f"{r['attack']:34} {r['healthz_p99_ms']:>7} {r['healthz_max_ms']:>7} "
            f"{r['rss_growth_mb']:>7} {r['class_segments_during']:>5}  {r['refused']}"
        )
    print(json.dumps({"hostile": rows}))


if __name__ == "__main__":
    main()
