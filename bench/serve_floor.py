"""The least any Python server on uvloop can do per request, against nginx on the same bytes.

Run: ``python -m bench.serve_floor [--sizes 1213,37000,64000] [--seconds S] [--rounds R]``

``bench.fanout`` compares the node with nginx. This benchmark asks how far a server
written in Python on uvloop could get at all: its server reads each request and answers
it with one prepared response (status line, the node's headers, the body), with no
parsing, no lookup and no metrics. Two ways of sending the body are measured:

- ``copy``: one vectored write of head and body through the transport, what the node
  does;
- ``sendfile``: the head sent with ``MSG_MORE``, then the body by ``sendfile(2)`` from a
  memfd, what nginx does from its page cache (the rest through the transport when the
  socket takes less).

nginx (Debian package, 1 worker, sendfile, ``open_file_cache``, the configuration of
``bench.fanout``) serves a file of the same size. ``wrk -t2 -c64`` loads each in turn,
rounds alternating. The ratio printed is the floor server's requests/s over nginx's:
what the node could reach if its own code cost nothing. The last line is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

from bench.fanout import NGINX, free_port, start_nginx, wait_port, wrk

MODES = ("copy", "sendfile")
MSG_MORE = 0x8000


def serve(port: int, size: int, mode: str) -> None:
    """Answer every read on ``port`` with one response carrying ``size`` bytes."""
    import uvloop

    body = os.urandom(size)
    head = (
        b"HTTP/1.1 200 OK\r\ndate: Mon, 07 Dec 2026 06:00:00 GMT\r\nserver: uvicorn\r\n"
        b"content-type: video/mp4\r\ncache-control: max-age=1\r\n"
        b"access-control-allow-origin: *\r\ncontent-length: %d\r\n\r\n" % size
    )
    memfd = os.memfd_create("body")
    os.write(memfd, body)
    libc = ctypes.CDLL(None, use_errno=True)

    class Floor(asyncio.Protocol):
        transport: asyncio.Transport
        fd = -1

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
            self.fd = sock.fileno()

        def data_received(self, data: bytes) -> None:
            t = self.transport
            if mode == "copy" or t.get_write_buffer_size():
                t.writelines((head, body))
                return
            sent = max(0, libc.send(self.fd, head, len(head), MSG_MORE))
            if sent < len(head):
                t.writelines((head[sent:], body))
                return
            offset = 0
            while offset < size:
                try:
                    n = os.sendfile(self.fd, memfd, offset, size - offset)
                except BlockingIOError:
                    break
                if not n:
                    break
                offset += n
            if offset < size:
                t.write(body[offset:])

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", port, backlog=1024)
        await asyncio.Event().wait()

    uvloop.run(main())


def measure(sizes: list[int], seconds: float, rounds: int) -> dict[str, dict[str, object]]:
    work = Path(tempfile.mkdtemp(prefix="serve-floor-"))
    work.chmod(0o755)  # nginx's worker runs unprivileged when started by root
    root = work / "www"
    root.mkdir()
    root.chmod(0o755)
    for size in sizes:
        (root / f"{size}.m4s").write_bytes(os.urandom(size))
    ng_port = free_port()
    nginx = start_nginx(root, ng_port, work)
    results: dict[str, dict[str, object]] = {}
    try:
        for size in sizes:
            for mode in MODES:
                port = free_port()
                server = subprocess.Popen(
                    [sys.executable, "-m", "bench.serve_floor", "--serve", f"{port},{size},{mode}"]
                )
                try:
                    wait_port(port, server)
                    ratios = []
                    for _ in range(rounds):
                        ours = wrk(f"http://127.0.0.1:{port}/x.m4s", seconds, 2, 64)
                        theirs = wrk(f"http://127.0.0.1:{ng_port}/{size}.m4s", seconds, 2, 64)
                        if ours["non2xx"] or theirs["non2xx"]:
                            raise RuntimeError(f"{size} B {mode}: error responses")
                        ratios.append(round(ours["rps"] / theirs["rps"], 3))
                finally:
                    server.kill()
                    server.wait()
                results[f"{size}/{mode}"] = {"ratio": median(ratios), "rounds": ratios}
                print(
                    f"{size:>8} B  {mode:>8}: floor / nginx {median(ratios):.2f}  rounds {ratios}"
                )
    finally:
        nginx.terminate()
        nginx.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--sizes", default="1213,37000,64000", help="body sizes in bytes")
    ap.add_argument("--seconds", type=float, default=4.0, help="wrk duration per run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per size and mode")
    ap.add_argument("--serve", help=argparse.SUPPRESS)  # PORT,SIZE,MODE: the server process
    args = ap.parse_args()
    if args.serve:
        port, size, mode = args.serve.split(",")
        serve(int(port), int(size), mode)
        return
    for tool in ("wrk", NGINX):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian packages wrk and nginx-light)")
    results = measure([int(s) for s in args.sizes.split(",")], args.seconds, args.rounds)
    print(json.dumps({"floor_over_nginx": results}))


if __name__ == "__main__":
    main()
