"""``make run``: a node plus a publisher looping the sample lecture into it.

Everything runs in this one process, so Ctrl-C stops both and leaves nothing
behind. The publisher uses FFmpeg's RTMP client exactly as ``nearcast publish``
does; the node does not know it is a demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path

from nearcast.cli import setup_logging
from nearcast.config import ConfigError, load
from nearcast.node import Node
from nearcast.publish import PublishError, publish

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "lecture-720p.mp4"
log = logging.getLogger("nearcast.demo")


async def demo() -> int:
    config = load()
    setup_logging(config.node.log_level, config.node.log_format, config.node.id)
    node = Node(config)
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    halt = threading.Event()
    tenant = config.rtmp.tenants[0]
    url = f"rtmp://127.0.0.1:{node.rtmp_port}/{tenant}/lecture"

    def push() -> None:
        while not halt.is_set():
            try:
                publish(str(SAMPLE), url, loop=True, stop=halt)
            except PublishError as exc:
                log.warning("demo publisher: %s; retrying", exc)
                halt.wait(2.0)

    pusher = threading.Thread(target=push, name="demo-publisher", daemon=True)
    pusher.start()
    host = config.http.listen.rpartition(":")[0]
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::", "[::]") else host
    print(
        "\n"
        f"  nearcast is running. Watch the sample lecture at:\n\n"
        f"      http://{shown}:{node.http_port}/\n\n"
        f"  LL-HLS: http://{shown}:{node.http_port}/{tenant}/lecture/index.m3u8\n"
        f"  Push your own: rtmp://{shown}:{node.rtmp_port}/{tenant}/<name>\n"
        "  (the first segments appear a few seconds after start; Ctrl-C stops)\n",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        halt.set()
        await asyncio.to_thread(pusher.join, 10)
        await node.stop()
    return 0


def main() -> int:
    try:
        if load().node.event_loop == "uvloop":
            import uvloop

            return uvloop.run(demo())
        return asyncio.run(demo())
    except ConfigError as exc:
        print(f"nearcast: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"nearcast: cannot start the node: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
