"""The ``nearcast`` command line."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

from media.names import stream_name_problem
from nearcast import logs
from nearcast.config import Config, ConfigError, load

if TYPE_CHECKING:
    from collections.abc import Iterable

log = logging.getLogger("nearcast")

# The module that registers each subcommand, in help order. A command line naming one
# imports that module alone: `nearcast transcode` does not pay for the fleet's, the
# placement service's or the publisher's imports before its first frame.
COMMANDS = {
    "publish": "nearcast.publish",
    "probe": "nearcast.probe",
    "transcode": "nearcast.offline",
    "placement": "nearcast.placement_cli",
    "node-credential": "nearcast.placement_cli",
    "simulate": "nearcast.placement_cli",
    "fleet": "nearcast.fleet",
    "status": "nearcast.status",
}


def setup_logging(level: str, log_format: str = "text", node_id: str = "") -> None:
    logs.setup_logging(level, log_format, node_id)


async def run_node(config: Config) -> int:
    import asyncio

    from nearcast.node import Node

    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await node.start()
    host = (config.http.listen or config.http.tls_listen).rpartition(":")[0]
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "[::]", "::") else host
    tenant = config.rtmp.tenants[0]
    lines = [
        f"nearcast node {config.node.id} ready",
        f"  publish: rtmp://{shown}:{node.rtmp_port}/{tenant}/STREAM",
    ]
    if node.rtmp.tls_port:
        lines.append(f"  publish over TLS: rtmps://{shown}:{node.rtmp.tls_port}/{tenant}/STREAM")
    if node.http_port:
        lines.append(f"  watch:   http://{shown}:{node.http_port}/")
    if node.https_port:
        lines.append(f"  watch over TLS: https://{shown}:{node.https_port}/")
    print("\n".join(lines), flush=True)
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
    setup_logging(config.node.log_level, config.node.log_format, config.node.id)
    if config.node.event_loop == "uvloop":
        import uvloop

        return uvloop.run(run_node(config))
    import asyncio

    return asyncio.run(run_node(config))


def publish_url(
    config: Config,
    tenant: str,
    stream: str,
    ttl: float,
    *,
    host: str = "",
    tls: bool = False,
    key_id: str = "",
    now: float | None = None,
) -> str:
    """A signed ``rtmp(s)://host:port/tenant/stream?token=...`` publish URL."""
    import tokens

    if tenant not in config.rtmp.tenants:
        raise ValueError(f"tenant {tenant!r} is not in rtmp.tenants {config.rtmp.tenants}")
    if (problem := stream_name_problem(stream)) is not None:
        raise ValueError(problem)
    auth = config.ingest.auth.tenants.get(tenant)
    if auth is None or not auth.keys:
        raise ValueError(f"tenant {tenant!r} has no keys in ingest.auth.tenants")
    if key_id:
        if key_id not in auth.keys:
            raise ValueError(f"tenant {tenant!r} has no key {key_id!r}")
        secret = auth.keys[key_id]
    else:
        key_id, secret = auth.signing_key()
    if ttl <= 0:
        raise ValueError(f"--ttl must be greater than zero, got {ttl:g}")
    expires = int((time.time() if now is None else now) + ttl)
    token = tokens.sign(secret, key_id, "publish", tenant, stream, expires)
    return _url(
        config.rtmp.tls_listen if tls else config.rtmp.listen,
        host,
        "rtmps" if tls else "rtmp",
        f"/{quote(tenant)}/{quote(stream)}?token={token}",
    )


def _url(listen: str, host: str, scheme: str, path: str) -> str:
    lhost, _, port = listen.rpartition(":")
    lhost = lhost.strip("[]")
    host = host or ("127.0.0.1" if lhost in ("", "0.0.0.0", "::") else lhost)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{path}"


def playback_url(
    config: Config,
    tenant: str,
    stream: str,
    ttl: float,
    *,
    host: str = "",
    key_id: str = "",
    now: float | None = None,
) -> str:
    """A signed ``http://host:port/tenant/stream/index.m3u8?token=...`` playback URL."""
    import tokens

    keys = config.playback.tenants.get(tenant)
    if keys is None or not keys.keys:
        raise ValueError(f"tenant {tenant!r} has no keys in playback.tenants")
    if (problem := stream_name_problem(stream)) is not None:
        raise ValueError(problem)
    if ttl <= 0:
        raise ValueError(f"--ttl must be greater than zero, got {ttl:g}")
    if key_id and key_id not in keys.keys:
        raise ValueError(f"tenant {tenant!r} has no playback key {key_id!r}")
    key_id, secret = (key_id, keys.keys[key_id]) if key_id else keys.signing_key()
    expires = int((time.time() if now is None else now) + ttl)
    token = tokens.sign(secret, key_id, "play", tenant, stream, expires)
    # A node without plain HTTP (empty http.listen) plays over HTTPS only.
    plain = bool(config.http.listen)
    return _url(
        config.http.listen if plain else config.http.tls_listen,
        host,
        "http" if plain else "https",
        f"/{quote(tenant)}/{quote(stream)}/index.m3u8?token={token}",
    )


def _token(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
        if args.play:
            url = playback_url(
                config, args.tenant, args.stream, args.ttl, host=args.host, key_id=args.key
            )
        else:
            url = publish_url(
                config,
                args.tenant,
                args.stream,
                args.ttl,
                host=args.host,
                tls=args.tls,
                key_id=args.key,
            )
    except (ConfigError, ValueError) as exc:
        print(f"nearcast token: {exc}", file=sys.stderr)
        return 2
    print(url)
    if args.play:
        return 0
    base, _, key = url.rpartition("/")
    print(f"OBS: server {base}  stream key {key}  (valid {args.ttl:g} s)", file=sys.stderr)
    return 0


def _register_token(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "token",
        help="print a signed publish (or, with --play, playback) URL for TENANT/STREAM",
        description="Sign a publish token with the tenant's key from ingest.auth.tenants "
        "and print rtmp://HOST:PORT/TENANT/STREAM?token=... (the token part also works "
        "appended to an OBS stream key).",
    )
    p.add_argument("tenant", metavar="TENANT")
    p.add_argument("stream", metavar="STREAM")
    p.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds the token is valid (default 3600)"
    )
    p.add_argument("--key", default="", help="key id to sign with (default: the tenant's sign_key)")
    p.add_argument("--host", default="", help="host name in the URL (default: from rtmp.listen)")
    p.add_argument("--tls", action="store_true", help="print an rtmps:// URL (rtmp.tls_listen)")
    p.add_argument(
        "--play",
        action="store_true",
        help="print a playback URL signed with the tenant's playback.tenants key instead",
    )
    p.add_argument("--config", metavar="FILE", help="configuration file (as for `nearcast node`)")
    p.set_defaults(func=_token)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command`` (a key of COMMANDS), only what that
    command needs: its own module's subcommands, and no other module imported."""
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
    modules: Iterable[str] = dict.fromkeys(COMMANDS.values())
    if command is not None:
        modules = (COMMANDS[command],)
    for name in modules:
        importlib.import_module(name).register(sub)
    _register_token(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names, when it is one that COMMANDS maps: the first
    argument, as nearcast takes no option before its subcommand except --help."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
