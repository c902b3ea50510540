"""``nearcast placement`` (run the service), ``nearcast node-credential`` and ``nearcast
simulate`` subcommands."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Mapping
from dataclasses import replace

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "placement",
        help="run the placement service standalone",
        description="Run the placement service (HTTP API) against a Redis registry. "
        "Nodes heartbeat to it; operators manage policy and nodes through it.",
    )
    p.add_argument("--config", metavar="FILE", help="nearcast.yml to load (default: built-in)")
    p.add_argument(
        "--redis",
        metavar="URL",
        help="Redis URL of the shared registry (default: 'redis.url' from the config); "
        "'memory' runs an in-process registry (single service, no fleet sharing)",
    )
    p.add_argument(
        "--listen", metavar="HOST:PORT", help="address to serve on (default: 'placement.listen')"
    )
    p.set_defaults(func=run_service)

    c = subparsers.add_parser(
        "node-credential",
        help="print a signed credential for a node to register with placement",
        description="Sign a node credential with a key of 'placement.node_keys' (from "
        "--config and NEARCAST_PLACEMENT_NODE_KEYS) and print it: the node's "
        "placement.node_token. It names the node id and what the node may register; "
        "placement refuses (403) a registration claiming anything else. '*' allows any "
        "value of a claim.",
    )
    c.add_argument("node", metavar="NODE_ID", help="the node's node.id")
    c.add_argument("--tier", required=True, help="edge, mec, cloud or '*'")
    c.add_argument("--region", required=True, help="the node's node.region, or '*'")
    c.add_argument("--city", required=True, help="the node's node.city, or '*'")
    c.add_argument("--isp", required=True, help="the node's node.isp, or '*'")
    c.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="HOST",
        help="host name its public_rtmp/public_http URLs may use; repeat for several; '*' any",
    )
    c.add_argument(
        "--tenants",
        default="*",
        help="comma-separated tenants it may serve: its 'tenants' label must stay within "
        "them (default '*': any, the label is not checked)",
    )
    c.add_argument(
        "--ttl",
        type=float,
        default=90 * 86400.0,
        help="seconds the credential is valid (default 7776000, 90 days)",
    )
    c.add_argument("--key", default="", help="key id to sign with (default: the first listed)")
    c.add_argument("--config", metavar="FILE", help="the placement service's configuration")
    c.set_defaults(func=run_node_credential)

    s = subparsers.add_parser(
        "simulate",
        help="compare placement policies on a synthetic fleet",
        description="Build a seeded synthetic fleet (edge nodes per city, MEC per region, "
        "a cloud), run a day of classes (one teacher, 20-60 students) through each policy "
        "side by side, and write a Markdown report and PNG plots. Every node's capacity "
        "holds: viewers are served in their city (by the origin or a relay) while a node "
        "there has room, else by their region's MEC, else by the cloud.",
    )
    s.add_argument("--nodes", type=int, default=2000, help="fleet size, up to 100000 (2000)")
    s.add_argument("--classes", type=int, default=3000, help="classes in the trace (3000)")
    s.add_argument(
        "--policy",
        metavar="FILE",
        action="append",
        default=[],
        help="policy YAML to compare; repeat for several (default: built-in default "
        "and cloud-only policies)",
    )
    s.add_argument("--out", metavar="DIR", default="simulation", help="output dir (simulation)")
    s.add_argument(
        "--replay",
        metavar="LOG",
        help="decision log to use instead of the synthetic trace: the JSON array "
        "GET /v1/decisions returns, saved as is, or JSON lines (one entry per line)",
    )
    s.add_argument(
        "--fleet",
        metavar="FILE",
        help="a recorded fleet instead of a synthetic one: GET /v1/nodes's body, saved "
        "as is (its load and reservations are cleared; '--nodes' is ignored)",
    )
    s.add_argument(
        "--trace",
        metavar="FILE",
        help="a trace file (YAML: its own fleet, classes, node failures and reporting "
        "windows) instead of the synthetic fleet and day; a bundled trace by name, e.g. "
        "'evening-peak' (a peak at 130%% of some cities' edge capacity, and an edge node "
        "failing mid-class)",
    )
    s.add_argument("--seed", type=int, default=1, help="random seed (1)")
    s.set_defaults(func=run_simulate)


def run_service(args: argparse.Namespace) -> int:
    import uvicorn

    from nearcast import logs
    from nearcast.config import load, parse_hostport
    from placement.app import create_app
    from placement.registry import Registry
    from placement.registry.memory import InProcessRegistry
    from placement.registry.redis import RedisRegistry
    from settings import ConfigError

    try:
        cfg = load(args.config)
        pc = cfg.placement
        host, port = parse_hostport(args.listen or pc.listen)
    except ConfigError as exc:
        print(f"nearcast placement: {exc}", file=sys.stderr)
        return 2
    url = args.redis or cfg.redis.url
    registry: Registry = (
        InProcessRegistry()
        if url == "memory"
        else RedisRegistry.from_url(url, pc.key_prefix, cluster=cfg.redis.cluster)
    )
    if cfg.node.log_format == "json":
        # node.log_format applies to this service too: its lines and uvicorn's as JSON.
        logs.setup_logging(cfg.node.log_level, "json")
    app = create_app(replace(pc, listen=f"{host}:{port}"), registry)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal with
    # the previous handler in place: make that handler a no-op so a requested stop
    # ends with status 0, as a supervisor (systemd, Kubernetes) expects.
    stopped: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda s, _f: stopped.append(s))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level=cfg.node.log_level.lower(),
            log_config=logs.uvicorn_log_config(),
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        log.info("placement service stopped by %s", signal.Signals(stopped[0]).name)
    return 0


def node_credential(
    args: argparse.Namespace,
    now: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The credential ``nearcast node-credential ARGS`` prints (``environ``: the process
    environment, as for every config); ValueError on bad input."""
    import time

    from nearcast.config import load
    from placement.credentials import mint
    from tokens.node import node_id_problem

    if (problem := node_id_problem(args.node)) is not None:
        raise ValueError(problem)
    if args.ttl <= 0:
        raise ValueError(f"--ttl must be greater than zero, got {args.ttl:g}")
    tenants = [t.strip() for t in args.tenants.split(",") if t.strip()]
    if not tenants:
        raise ValueError("--tenants names no tenant (use '*' for any)")
    return mint(
        load(args.config, environ=environ).placement.node_keys,
        args.node,
        tier=args.tier,
        region=args.region,
        city=args.city,
        isp=args.isp,
        hosts=args.host,
        tenants=tenants,
        expires=int((time.time() if now is None else now) + args.ttl),
        key_id=args.key,
    )


def run_node_credential(args: argparse.Namespace) -> int:
    from settings import ConfigError

    try:
        print(node_credential(args))
    except (ConfigError, ValueError) as exc:
        print(f"nearcast node-credential: {exc}", file=sys.stderr)
        return 2
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from placement.errors import InvalidField
    from placement.policy import load_policy_file
    from placement.simulate import builtin_policies, load_fleet, load_log, load_trace, run

    if not 1 <= args.nodes <= 100_000:
        print("nearcast simulate: '--nodes' must be 1-100000", file=sys.stderr)
        return 2
    if args.trace and (args.replay or args.fleet):
        print(
            "nearcast simulate: '--trace' brings its own fleet and classes: "
            "leave out '--replay' and '--fleet'",
            file=sys.stderr,
        )
        return 2
    try:
        policies = [load_policy_file(p) for p in args.policy] or builtin_policies()
        replay = load_log(args.replay) if args.replay else None
        fleet = load_fleet(args.fleet) if args.fleet else None
        trace = load_trace(args.trace) if args.trace else None
    except (InvalidField, OSError) as exc:
        print(f"nearcast simulate: {exc}", file=sys.stderr)
        return 2
    report = run(
        nodes=args.nodes,
        classes=args.classes,
        policies=policies,
        out_dir=args.out,
        seed=args.seed,
        replay=replay,
        fleet=fleet,
        trace=trace,
    )
    print(report.markdown)
    return 0
