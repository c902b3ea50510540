"""The ``nearcast`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from nearcast import probe, publish
from nearcast.config import Config, ConfigError, load
from placement import cli as placement_cli
from transcode import offline

log = logging.getLogger("nearcast")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def run_node(config: Config) -> int:
    from nearcast.node import Node

    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await node.start()
    host = config.http.listen.rpartition(":")[0]
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "[::]", "::") else host
    print(
        f"nearcast node {config.node.id} ready\n"
        f"  publish: rtmp://{shown}:{node.rtmp_port}/{config.rtmp.tenants[0]}/STREAM\n"
        f"  watch:   http://{shown}:{node.http_port}/",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await node.stop()
    return 0


def _node(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"nearcast: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.node.log_level)
    return asyncio.run(run_node(config))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nearcast",
        description="nearcast: an edge node for live video. RTMP in, one transcode per "
        "stream, HLS out to the viewers nearby.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "node",
        help="run an edge node in the foreground",
        description="Run an edge node: RTMP ingest, transcode workers, HLS and the API. "
        "Stops cleanly on Ctrl-C or SIGTERM.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default: $NEARCAST_CONFIG, else built-in defaults, "
        "which equal the shipped nearcast.yml); NEARCAST_* variables override any key",
    )
    p.set_defaults(func=_node)
    publish.register(sub)
    probe.register(sub)
    offline.register(sub)
    placement_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
