"""``nearcast fleet``: a whole fleet on one machine, from a topology file.

``fleet up`` starts the placement service on a Redis and one ``nearcast node``
process per node of the topology (each with its own ports, city, ISP and a
node credential minted for it), waits until every node is registered in
placement, writes a state file (pids, ports, URLs) under the run directory and
prints what a person opens to watch a class relayed across cities. ``fleet
down`` stops the processes (SIGTERM, then SIGKILL after a bound) and removes
the state; ``fleet status`` reports them. The default topology is
``samples/fleet.yml``; docs/fleet.md describes the format.

The processes are ordinary ``nearcast placement`` and ``nearcast node``
processes with a generated configuration file each; secrets (the operator
token, the key node credentials are signed with, each node's credential) reach
them through ``NEARCAST_*`` variables, never through those files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import yaml

from nearcast.config import Config, ConfigError
from placement.config import PlacementConfig
from placement.errors import InvalidField
from placement.policy import parse_policy
from settings import build
from tokens.node import node_id_problem

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOPOLOGY = ROOT / "samples" / "fleet.yml"
DEFAULT_RUN_DIR = Path(".nearcast") / "fleet"
STATE_FILE = "state.json"
STATE_VERSION = 1
TIERS = ("edge", "mec", "cloud")
# Node credentials are minted per `fleet up` with a fresh key: valid as long as the
# fleet may reasonably run, as `nearcast node-credential`'s default.
CREDENTIAL_TTL = 90 * 86400
NODE_KEY_ID = "fleet"

# Keys the fleet sets itself, from the node's entry and the run: a topology that sets
# them is refused with the key it should use instead.
NODE_MANAGED = {
    ("node", "id"): "'id'",
    ("node", "tier"): "'tier'",
    ("node", "region"): "'region'",
    ("node", "city"): "'city'",
    ("node", "isp"): "'isp'",
    ("node", "lat"): "'lat'",
    ("node", "lon"): "'lon'",
    ("node", "public_rtmp"): "'host' and 'rtmp_port'",
    ("node", "public_http"): "'host' and 'http_port'",
    ("rtmp", "listen"): "'rtmp_port'",
    ("http", "listen"): "'http_port'",
    ("placement", "url"): "'placement.port' (the fleet's service)",
    ("placement", "node_token"): "nothing: the fleet mints each node's credential",
    ("placement", "node_keys"): "nothing: the fleet makes a key per run",
    ("placement", "operator_token"): "nothing: the fleet makes a token per run",
}
PLACEMENT_MANAGED = {
    "url": "nothing: nodes get the fleet's service URL",
    "listen": "'placement.port'",
    "operator_token": "nothing: the fleet makes a token per run",
    "node_token": "nothing: the fleet mints each node's credential",
    "node_keys": "nothing: the fleet makes a key per run",
    "key_prefix": "'placement.key_prefix'",
    "policy_file": "'placement.policy'",
}
TOP_KEYS = ("host", "placement", "defaults", "nodes", "demo")
PLACEMENT_KEYS = ("redis", "port", "key_prefix", "config", "policy")
NODE_KEYS = ("id", "tier", "region", "city", "isp", "lat", "lon", "rtmp_port", "http_port")
NODE_KEYS_ALL = (*NODE_KEYS, "config")
DEMO_KEYS = ("tenant", "stream", "source")


class TopologyError(ValueError):
    """The topology file is unreadable or invalid; the message quotes the key at fault."""


class FleetError(RuntimeError):
    """``fleet up``/``down`` failed; the message names the process at fault."""


# ----- the topology


@dataclass(frozen=True)
class PlacementSpec:
    redis: str
    port: int
    key_prefix: str
    config: Mapping[str, Any]
    policy: Mapping[str, Any]


@dataclass(frozen=True)
class NodeSpec:
    id: str
    tier: str
    region: str
    city: str
    isp: str
    lat: float
    lon: float
    rtmp_port: int
    http_port: int
    config: Mapping[str, Any]


@dataclass(frozen=True)
class Demo:
    """The class the printed commands publish and watch."""

    tenant: str
    stream: str
    source: str


@dataclass(frozen=True)
class Topology:
    host: str
    placement: PlacementSpec
    defaults: Mapping[str, Any]
    nodes: tuple[NodeSpec, ...]
    demo: Demo

    def node_config(self, spec: NodeSpec, placement_url: str, record_dir: str) -> dict[str, Any]:
        """The ``nearcast.yml`` mapping of node ``spec`` (secrets excepted)."""
        managed: dict[str, Any] = {
            "node": {
                "id": spec.id,
                "tier": spec.tier,
                "region": spec.region,
                "city": spec.city,
                "isp": spec.isp,
                "lat": spec.lat,
                "lon": spec.lon,
            },
            "rtmp": {"listen": f"{self.host}:{spec.rtmp_port}"},
            "http": {"listen": f"{self.host}:{spec.http_port}"},
            "record": {"dir": record_dir},
            # The service's placement keys too: nodes and service agree on liveness.
            "placement": {**self.placement.config, "url": placement_url},
        }
        return merge(merge(managed, self.defaults), spec.config)

    def cities(self) -> list[str]:
        """Cities with an edge node, in topology order."""
        out: list[str] = []
        for n in self.nodes:
            if n.tier == "edge" and n.city not in out:
                out.append(n.city)
        return out


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        out[k] = merge(old, v) if isinstance(old, Mapping) and isinstance(v, Mapping) else v
    return out


def _mapping(value: Any, key: str, allowed: Sequence[str] | None = None) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TopologyError(f"'{key}' must be a mapping")
    if allowed is not None:
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                raise TopologyError(f"'{where}' is not a topology key ({', '.join(allowed)})")
    return value


def _string(data: Mapping[str, Any], name: str, key: str, default: str | None = None) -> str:
    value = data.get(name, default)
    if value is None:
        raise TopologyError(f"'{key}' is required")
    if not isinstance(value, str) or not value.strip():
        raise TopologyError(f"'{key}' must be a non-empty string")
    return value


def _number(data: Mapping[str, Any], name: str, key: str, lo: float, hi: float) -> float:
    value = data.get(name)
    if value is None:
        raise TopologyError(f"'{key}' is required")
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise TopologyError(f"'{key}' must be a number between {lo:g} and {hi:g}")
    return float(value)


def _port(data: Mapping[str, Any], name: str, key: str) -> int:
    value = data.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise TopologyError(f"'{key}' must be a port 0-65535 (0: a free one at 'fleet up')")
    return value


def _refuse_managed(config: Mapping[str, Any], key: str) -> None:
    for (section, name), instead in NODE_MANAGED.items():
        part = config.get(section)
        if isinstance(part, Mapping) and name in part:
            raise TopologyError(f"'{key}.{section}.{name}' is set by the fleet; use {instead}")


def parse_topology(data: Any, source: str = "topology") -> Topology:
    """Validate a topology mapping; :class:`TopologyError` quotes the key at fault."""
    try:
        return _parse(data)
    except TopologyError as exc:
        raise TopologyError(f"{source}: {exc}") from None


def _parse(data: Any) -> Topology:
    if not isinstance(data, Mapping) or not data:
        raise TopologyError(f"must be a mapping with 'nodes' (keys: {', '.join(TOP_KEYS)})")
    top = _mapping(data, "", TOP_KEYS)
    host = _string(top, "host", "host", "127.0.0.1")
    if host in ("0.0.0.0", "::") or any(c in host for c in "/[] "):
        raise TopologyError(f"'host' must be one address that clients reach, not {host!r}")

    pl = _mapping(top.get("placement"), "placement", PLACEMENT_KEYS)
    redis_url = _string(pl, "redis", "placement.redis", "redis://127.0.0.1:6379/0")
    if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise TopologyError("'placement.redis' must be a redis://, rediss:// or unix:// URL")
    prefix = pl.get("key_prefix", "") or ""
    if not isinstance(prefix, str) or any(c in prefix for c in "{}"):
        raise TopologyError("'placement.key_prefix' must be a string without braces")
    pconfig = _mapping(pl.get("config"), "placement.config")
    for name, instead in PLACEMENT_MANAGED.items():
        if name in pconfig:
            raise TopologyError(f"'placement.config.{name}' is set by the fleet; use {instead}")
    try:
        build(PlacementConfig, pconfig, "placement.config")
    except ConfigError as exc:
        raise TopologyError(str(exc)) from None
    policy = _mapping(pl.get("policy"), "placement.policy")
    try:
        parse_policy(policy)
    except InvalidField as exc:
        raise TopologyError(f"'placement.policy.{exc.field}' {exc.message}") from None
    placement = PlacementSpec(
        redis=redis_url,
        port=_port(pl, "port", "placement.port"),
        key_prefix=prefix,
        config=pconfig,
        policy=policy,
    )

    defaults = _mapping(top.get("defaults"), "defaults")
    _refuse_managed(defaults, "defaults")

    raw_nodes = top.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise TopologyError("'nodes' must be a non-empty list")
    nodes: list[NodeSpec] = []
    ports: dict[int, str] = {placement.port: "placement.port"} if placement.port else {}
    for i, raw in enumerate(raw_nodes):
        key = f"nodes[{i}]"
        n = _mapping(raw, key, NODE_KEYS_ALL)
        node_id = _string(n, "id", f"{key}.id")
        if (problem := node_id_problem(node_id)) is not None:
            raise TopologyError(f"'{key}.id' {problem}")
        key = f"nodes[{i}] ({node_id})"
        if any(s.id == node_id for s in nodes):
            raise TopologyError(f"'{key}.id' repeats the id of another node")
        tier = _string(n, "tier", f"{key}.tier")
        if tier not in TIERS:
            raise TopologyError(f"'{key}.tier' must be one of {', '.join(TIERS)}, not {tier!r}")
        region = _string(n, "region", f"{key}.region")
        if (problem := node_id_problem(region, "a region")) is not None:
            raise TopologyError(f"'{key}.region' {problem}")
        config = _mapping(n.get("config"), f"{key}.config")
        _refuse_managed(config, f"{key}.config")
        spec = NodeSpec(
            id=node_id,
            tier=tier,
            region=region,
            city=_string(n, "city", f"{key}.city"),
            isp=_string(n, "isp", f"{key}.isp"),
            lat=_number(n, "lat", f"{key}.lat", -90, 90),
            lon=_number(n, "lon", f"{key}.lon", -180, 180),
            rtmp_port=_port(n, "rtmp_port", f"{key}.rtmp_port"),
            http_port=_port(n, "http_port", f"{key}.http_port"),
            config=config,
        )
        for name in ("rtmp_port", "http_port"):
            port = getattr(spec, name)
            if port and port in ports:
                raise TopologyError(f"'{key}.{name}' {port} is also {ports[port]}")
            if port:
                ports[port] = f"{key}.{name}"
        nodes.append(spec)

    demo_raw = _mapping(top.get("demo"), "demo", DEMO_KEYS)
    demo = Demo(
        tenant=_string(demo_raw, "tenant", "demo.tenant", "school"),
        stream=_string(demo_raw, "stream", "demo.stream", "class-1"),
        source=_string(demo_raw, "source", "demo.source", "samples/lecture-720p.mp4"),
    )
    topo = Topology(host, placement, defaults, tuple(nodes), demo)
    # Every node's whole configuration, as the node will load it: a bad key fails here,
    # before anything starts, naming the node.
    for i, spec in enumerate(topo.nodes):
        try:
            cfg = build(Config, topo.node_config(spec, "http://127.0.0.1:1", "recordings"))
        except ConfigError as exc:
            raise TopologyError(f"nodes[{i}] ({spec.id}): {exc}") from None
        if demo.tenant not in cfg.rtmp.tenants:
            raise TopologyError(
                f"'demo.tenant' {demo.tenant!r} is not in 'rtmp.tenants' of nodes[{i}] "
                f"({spec.id}): {list(cfg.rtmp.tenants)}"
            )
    return topo


def load_topology(path: str | os.PathLike[str] | None = None) -> Topology:
    """Read and validate a topology file (default: ``samples/fleet.yml``)."""
    where = Path(path) if path else DEFAULT_TOPOLOGY
    try:
        text = where.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"{where}: cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopologyError(f"{where}: is not valid YAML: {exc}") from None
    return parse_topology(data, str(where))


# ----- processes


@dataclass
class Proc:
    """A process the fleet started: its pid, its start time (so a reused pid is never
    taken for it) and its log."""

    name: str
    pid: int
    started: str
    log: str


@dataclass
class FleetNode:
    id: str
    tier: str
    region: str
    city: str
    isp: str
    rtmp: str
    http: str
    proc: Proc


@dataclass
class FleetState:
    """What ``fleet up`` started, as written to the run directory's state file."""

    run_dir: str
    topology: str
    placement_url: str
    operator_token: str
    redis: str
    key_prefix: str
    owns_prefix: bool
    heartbeat_interval: float
    placement: Proc
    nodes: list[FleetNode] = field(default_factory=list)
    demo: Demo = field(default_factory=lambda: Demo("school", "class-1", ""))
    version: int = STATE_VERSION

    def procs(self) -> list[Proc]:
        return [n.proc for n in self.nodes] + [self.placement]

    def node(self, node_id: str) -> FleetNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FleetState:
        d = json.loads(text)
        if d.get("version") != STATE_VERSION:
            raise FleetError(f"state file version {d.get('version')!r} is not {STATE_VERSION}")
        return cls(
            **{
                **d,
                "placement": Proc(**d["placement"]),
                "nodes": [FleetNode(**{**n, "proc": Proc(**n["proc"])}) for n in d["nodes"]],
                "demo": Demo(**d["demo"]),
            }
        )


def _start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (``/proc/PID/stat`` field 22), '' if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces: fields are counted after its ')'.
    return stat.rpartition(")")[2].split()[19]


def alive(proc: Proc) -> bool:
    """Whether the process the fleet started still runs (a zombie or a reused pid does not)."""
    with contextlib.suppress(ChildProcessError, OSError):
        # Our own child (when up and down run in one process): reap it if it ended.
        if os.waitpid(proc.pid, os.WNOHANG)[0] == proc.pid:
            return False
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        return True
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return False
    return not proc.started or fields[19] == proc.started


def _tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _masked(url: str) -> str:
    """A Redis URL fit to print: its password replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _spawn(
    name: str, argv: list[str], env: Mapping[str, str], log_path: Path
) -> tuple[subprocess.Popen[bytes], Proc]:
    with open(log_path, "ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=ROOT,
            # Its own session: a Ctrl-C meant for `fleet up --foreground` reaches the
            # fleet, which stops each process in order, and `fleet up` may exit while
            # the processes go on. The group also holds the node's transcode workers.
            start_new_session=True,
        )
    return popen, Proc(name, popen.pid, _start_time(popen.pid), str(log_path))


def _child_env(secrets_env: Mapping[str, str]) -> dict[str, str]:
    # The topology is the whole configuration: NEARCAST_* variables of the calling
    # shell (a NEARCAST_RTMP_LISTEN, say) would override every node alike.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEARCAST_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(secrets_env)
    return env


def _write_yaml(path: Path, data: Mapping[str, Any], header: str) -> None:
    path.write_text(f"# {header}\n" + yaml.safe_dump(dict(data), sort_keys=False))


_READY_RTMP = re.compile(r"^\s*publish: rtmp://\S*:(\d+)/", re.M)
_READY_HTTP = re.compile(r"^\s*watch:\s+http://\S*:(\d+)/", re.M)


def _ready_ports(log_path: str) -> tuple[int, int] | None:
    """The RTMP and HTTP ports a node printed once ready (see ``nearcast.cli.run_node``)."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return None
    rtmp, http = _READY_RTMP.search(text), _READY_HTTP.search(text)
    if rtmp is None or http is None:
        return None
    return int(rtmp.group(1)), int(http.group(1))


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ----- up, down, status


def state_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / STATE_FILE


def read_state(run_dir: str | os.PathLike[str]) -> FleetState | None:
    path = state_path(run_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FleetError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        return FleetState.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise FleetError(f"{path}: not a fleet state file ({exc})") from None


def up(
    topology: Topology,
    run_dir: str | os.PathLike[str] = DEFAULT_RUN_DIR,
    *,
    topology_path: str = "",
    timeout: float = 90.0,
    say: Callable[[str], None] = lambda _m: None,
) -> FleetState:
    """Start the fleet of ``topology`` and return once every node is registered in
    placement (within ``timeout`` seconds). On any failure everything started so far is
    stopped and :class:`FleetError` names the process at fault."""
    run = Path(run_dir).resolve()
    previous = read_state(run)
    if previous is not None:
        if any(alive(p) for p in previous.procs()):
            raise FleetError(
                f"a fleet is already running from {run} (placement {previous.placement_url}); "
                "`nearcast fleet down` first"
            )
        # A fleet that ended without `fleet down` (the machine rebooted, say).
        if previous.owns_prefix:
            _forget_keys(previous.redis, previous.key_prefix)
        state_path(run).unlink()
    _check_redis(topology.placement.redis)
    for sub in ("logs", "config", "recordings"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(run, 0o700)  # the state file holds the operator token

    deadline = time.monotonic() + timeout
    pc = topology.placement
    host = topology.host
    prefix = pc.key_prefix or f"fleet-{secrets.token_hex(4)}"
    operator_token = secrets.token_urlsafe(24)
    node_keys = {NODE_KEY_ID: secrets.token_urlsafe(32)}
    port = pc.port or free_port(host)
    placement_url = f"http://{_bracket(host)}:{port}"
    policy_file = run / "config" / "policy.yml"
    _write_yaml(policy_file, pc.policy, "placement policy of the fleet (from its topology)")
    pconf = run / "config" / "placement.yml"
    _write_yaml(
        pconf,
        {
            "placement": {
                **pc.config,
                "listen": f"{host}:{port}",
                "key_prefix": prefix,
                "policy_file": str(policy_file),
            }
        },
        "placement service of the fleet; secrets come from its environment",
    )
    started: list[tuple[subprocess.Popen[bytes], Proc]] = []
    state: FleetState | None = None
    try:
        say(f"starting placement on {placement_url} (Redis {_masked(pc.redis)})")
        popen, pproc = _spawn(
            "placement",
            [sys.executable, "-m", "nearcast", "placement", "--config", str(pconf)],
            _child_env(
                {
                    "NEARCAST_REDIS_URL": pc.redis,
                    "NEARCAST_PLACEMENT_OPERATOR_TOKEN": operator_token,
                    "NEARCAST_PLACEMENT_NODE_KEYS": json.dumps(node_keys),
                }
            ),
            run / "logs" / "placement.log",
        )
        started.append((popen, pproc))
        _wait_placement(placement_url, pproc, deadline)
        liveness = build(PlacementConfig, pc.config).liveness
        state = FleetState(
            run_dir=str(run),
            topology=topology_path,
            placement_url=placement_url,
            operator_token=operator_token,
            redis=pc.redis,
            key_prefix=prefix,
            owns_prefix=not pc.key_prefix,
            heartbeat_interval=liveness.heartbeat_interval,
            placement=pproc,
            demo=topology.demo,
        )
        say(f"starting {len(topology.nodes)} nodes")
        for spec in topology.nodes:
            cpath = run / "config" / f"{spec.id}.yml"
            record = run / "recordings" / spec.id
            _write_yaml(
                cpath,
                topology.node_config(spec, placement_url, str(record)),
                f"node {spec.id} of the fleet; its credential comes from its environment",
            )
            token = _mint(node_keys, spec, host)
            popen, nproc = _spawn(
                spec.id,
                [sys.executable, "-m", "nearcast", "node", "--config", str(cpath)],
                _child_env({"NEARCAST_PLACEMENT_NODE_TOKEN": token}),
                run / "logs" / f"{spec.id}.log",
            )
            started.append((popen, nproc))
            state.nodes.append(
                FleetNode(spec.id, spec.tier, spec.region, spec.city, spec.isp, "", "", nproc)
            )
        _wait_nodes(state, deadline)
        _wait_registered(state, deadline)
        path = state_path(run)
        path.write_text(state.to_json())
        os.chmod(path, 0o600)
        return state
    except BaseException:
        _stop([p for _, p in started], grace=10.0)
        for popen, _ in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(1.0)
        if not pc.key_prefix:
            _forget_keys(pc.redis, prefix)
        raise


def _check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise FleetError(
            f"placement's Redis at {_masked(url)} does not answer ({exc}); start it "
            "(`make redis`) or name another in the topology's 'placement.redis'"
        ) from None
    finally:
        client.close()


def _forget_keys(url: str, prefix: str) -> None:
    """Remove the registry keys of a fleet's own key prefix (nodes, sessions, policy)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)
    try:
        for key in list(client.scan_iter(match=f"{{{prefix}:*", count=1000)):
            client.delete(key)
    except redis.exceptions.RedisError as exc:
        log.warning("registry keys %s:* left in %s: %s", prefix, _masked(url), exc)
    finally:
        client.close()


def _mint(keys: Mapping[str, str], spec: NodeSpec, host: str) -> str:
    from placement.credentials import mint

    return mint(
        keys,
        spec.id,
        tier=spec.tier,
        region=spec.region,
        city=spec.city,
        isp=spec.isp,
        hosts=[host],
        expires=int(time.time()) + CREDENTIAL_TTL,
    )


def _wait_placement(url: str, proc: Proc, deadline: float) -> None:
    import httpx  # here, not at import: `nearcast` starts without it

    last = "no answer yet"
    while time.monotonic() < deadline:
        if not alive(proc):
            raise FleetError(f"placement exited while starting; its log:\n{_tail(proc.log)}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=2.0)
            if r.status_code == 200:
                return
            last = f"/readyz {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.1)
    raise FleetError(
        f"placement did not become ready at {url} ({last}); its log:\n{_tail(proc.log)}"
    )


def _wait_nodes(state: FleetState, deadline: float) -> None:
    """Read each node's ports from its log as it prints them once its ports are open."""
    host = urlsplit(state.placement_url).hostname or "127.0.0.1"
    waiting = {n.id: n for n in state.nodes}
    while waiting:
        for node in list(waiting.values()):
            if not alive(node.proc):
                raise FleetError(
                    f"node {node.id} exited while starting; its log:\n{_tail(node.proc.log)}"
                )
            ports = _ready_ports(node.proc.log)
            if ports is not None:
                node.rtmp = f"rtmp://{_bracket(host)}:{ports[0]}"
                node.http = f"http://{_bracket(host)}:{ports[1]}"
                del waiting[node.id]
        if not waiting:
            return
        if time.monotonic() > deadline:
            first = next(iter(waiting.values()))
            raise FleetError(
                f"node(s) {', '.join(waiting)} did not open their ports in time; "
                f"the log of {first.id}:\n{_tail(first.proc.log)}"
            )
        time.sleep(0.1)


def registered(state: FleetState, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """Placement's view of the nodes (GET /v1/nodes), by id."""
    import httpx  # here, not at import: `nearcast` starts without it

    r = httpx.get(
        f"{state.placement_url}/v1/nodes",
        headers={"Authorization": f"Bearer {state.operator_token}"},
        timeout=timeout,
    )
    r.raise_for_status()
    return {n["id"]: n for n in r.json()["nodes"]}


def _wait_registered(state: FleetState, deadline: float) -> None:
    import httpx  # here, not at import: `nearcast` starts without it

    missing = [n.id for n in state.nodes]
    last = ""
    while True:
        for node in state.nodes:
            if not alive(node.proc):
                raise FleetError(f"node {node.id} exited; its log:\n{_tail(node.proc.log)}")
        try:
            known = registered(state)
            missing = [n.id for n in state.nodes if not known.get(n.id, {}).get("alive")]
            if not missing:
                return
        except httpx.HTTPError as exc:
            last = f" (placement: {exc})"
        if time.monotonic() > deadline:
            first = state.node(missing[0])
            raise FleetError(
                f"node(s) {', '.join(missing)} did not register with placement in time{last}; "
                f"the log of {first.id}:\n{_tail(first.proc.log)}"
            )
        time.sleep(0.2)


def _stop(procs: Sequence[Proc], grace: float) -> list[str]:
    """SIGTERM each process, then SIGKILL its process group after ``grace`` seconds;
    the names of those that had to be killed."""
    for p in procs:
        if alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = []
    for p in procs:
        if alive(p):
            killed.append(p.name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
    kill_deadline = time.monotonic() + 5.0
    while any(alive(p) for p in procs) and time.monotonic() < kill_deadline:
        time.sleep(0.05)
    return killed


def down(
    run_dir: str | os.PathLike[str] = DEFAULT_RUN_DIR,
    *,
    grace: float = 30.0,
    say: Callable[[str], None] = lambda _m: None,
) -> FleetState:
    """Stop the fleet of ``run_dir``: the nodes first (they flush their streams), then
    placement; remove its registry keys (when the fleet made its key prefix) and the
    state file. The logs stay."""
    state = read_state(run_dir)
    if state is None:
        raise FleetError(f"no fleet runs from {Path(run_dir).resolve()} (no {STATE_FILE})")
    nodes = [n.proc for n in state.nodes]
    say(f"stopping {len(nodes)} nodes")
    killed = _stop(nodes, grace)
    say("stopping placement")
    killed += _stop([state.placement], grace)
    for name in killed:
        say(f"{name} did not stop within {grace:g} s of SIGTERM: killed")
    if state.owns_prefix:
        _forget_keys(state.redis, state.key_prefix)
    state_path(run_dir).unlink(missing_ok=True)
    return state


def status(state: FleetState) -> tuple[bool, str]:
    """Whether every process runs and every node is registered, and a report of it."""
    import httpx  # here, not at import: `nearcast` starts without it

    try:
        known: dict[str, dict[str, Any]] | None = registered(state)
        note = ""
    except httpx.HTTPError as exc:
        known, note = None, f" (placement does not answer: {exc})"
    ok = alive(state.placement) and known is not None
    lines = [
        f"placement  {state.placement_url}  pid {state.placement.pid} "
        f"{'running' if alive(state.placement) else 'NOT RUNNING'}{note}"
    ]
    for n in state.nodes:
        running = alive(n.proc)
        seen = known.get(n.id) if known is not None else None
        reg = "unknown" if known is None else "not registered"
        if seen is not None:
            reg = f"{seen['state']}, {'alive' if seen['alive'] else 'STALE'}"
        ok = ok and running and seen is not None and bool(seen["alive"])
        lines.append(
            f"{n.id:<12} {n.tier:<5} {n.city}/{n.isp:<10} {n.http:<24} pid {n.proc.pid} "
            f"{'running' if running else 'NOT RUNNING'}; placement: {reg}"
        )
    return ok, "\n".join(lines)


def describe(state: FleetState, foreground: bool = False) -> str:
    """What a person opens and runs to watch a class relayed across cities."""
    d = state.demo
    tenant, stream = quote(d.tenant), quote(d.stream)
    auth = f"Authorization: Bearer {state.operator_token}"
    width = max(len(n.id) for n in state.nodes)
    lines = [
        f"nearcast fleet up: {len(state.nodes)} nodes registered with placement",
        "",
        f"  placement  {state.placement_url}   (operator token: {state.operator_token})",
        f"             curl -H '{auth}' {state.placement_url}/v1/nodes",
        "",
    ]
    for n in state.nodes:
        lines.append(
            f"  {n.id:<{width}}  {n.tier:<5}  {n.city}/{n.isp}  "
            f"{n.rtmp}  {n.http}/  (log {n.proc.log})"
        )
    edges = [n for n in state.nodes if n.tier == "edge"]
    cities = list(dict.fromkeys(n.city for n in edges)) or [state.nodes[0].city]
    teacher = next((n for n in edges if n.city == cities[0]), state.nodes[0])
    body = json.dumps(
        {
            "tenant": d.tenant,
            "stream": d.stream,
            "location": {"city": teacher.city, "isp": teacher.isp},
        }
    )
    ask = (
        f"curl -s -H {shlex.quote(auth)} -H 'Content-Type: application/json' "
        f"-d {shlex.quote(body)} {state.placement_url}/v1/sessions"
    )
    pick = 'python3 -c \'import json,sys; print(json.load(sys.stdin)["ingest"]["rtmp"])\''
    lines += [
        "",
        f"  A teacher in {teacher.city} asks placement for a node and publishes there:",
        "",
        f'    {sys.executable} -m nearcast publish {shlex.quote(d.source)} "$({ask} | {pick})" '
        "--loop",
        "",
        "  Students open (placement sends each to a node of their city):",
    ]
    for city in cities:
        lines.append(
            f"    {city:<10} {state.placement_url}/{tenant}/{stream}/index.m3u8?city={quote(city)}"
        )
    lines += ["", "  Each node's player page:"]
    for n in state.nodes:
        lines.append(f"    {n.id:<{width}}  {n.http}/?stream={tenant}/{stream}")
    stop = (
        "Ctrl-C" if foreground else f"`nearcast fleet down --run-dir {shlex.quote(state.run_dir)}`"
    )
    lines += ["", f"  Stop it with {stop}."]
    return "\n".join(lines)


# ----- the command line


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "fleet",
        help="run a whole fleet (placement, edge, MEC and cloud nodes) on this machine",
        description="Start, stop or inspect a fleet on one machine from a topology file "
        "(default: samples/fleet.yml; see docs/fleet.md): the placement service on a "
        "Redis and one node process per node, each with its own ports, city, ISP and "
        "node credential.",
    )
    sub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    u = sub.add_parser("up", help="start the fleet; returns once every node is registered")
    u.add_argument("--topology", metavar="FILE", help="topology file (samples/fleet.yml)")
    u.add_argument(
        "--foreground",
        action="store_true",
        help="stay in the foreground and stop the fleet on Ctrl-C or SIGTERM",
    )
    u.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="seconds to wait for every node to register (90)",
    )
    d = sub.add_parser("down", help="stop the fleet (SIGTERM, then SIGKILL) and remove its state")
    d.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds each process gets to stop after SIGTERM before SIGKILL (30)",
    )
    s = sub.add_parser("status", help="show the fleet's processes and their registration")
    for q in (u, d, s):
        q.add_argument(
            "--run-dir",
            metavar="DIR",
            default=str(DEFAULT_RUN_DIR),
            help="where the state file and logs live (default .nearcast/fleet)",
        )
    p.set_defaults(func=main)


def _say(message: str) -> None:
    print(f"nearcast fleet: {message}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    action = args.fleet_command
    try:
        if action == "up":
            if args.timeout <= 0:
                raise FleetError(f"--timeout must be greater than zero, got {args.timeout:g}")
            topology = load_topology(args.topology)
            state = up(
                topology,
                args.run_dir,
                topology_path=str(Path(args.topology or DEFAULT_TOPOLOGY).resolve()),
                timeout=args.timeout,
                say=_say,
            )
            print(describe(state, args.foreground), flush=True)
            if args.foreground:
                return _foreground(state)
            return 0
        if action == "down":
            if args.grace <= 0:
                raise FleetError(f"--grace must be greater than zero, got {args.grace:g}")
            state = down(args.run_dir, grace=args.grace, say=_say)
            _say(f"stopped; logs are in {Path(state.run_dir) / 'logs'}")
            return 0
        current = read_state(args.run_dir)
        if current is None:
            print(f"no fleet runs from {Path(args.run_dir).resolve()}", file=sys.stderr)
            return 3
        ok, report = status(current)
        print(report)
        return 0 if ok else 1
    except (TopologyError, FleetError) as exc:
        print(f"nearcast fleet {action}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # `up` has stopped what it started by now.
        print(f"nearcast fleet {action}: interrupted", file=sys.stderr)
        return 130


def _foreground(state: FleetState) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _s, _f: stop.set())
    _say("running in the foreground; Ctrl-C stops the fleet")
    gone: set[str] = set()
    while not stop.wait(1.0):
        if not state_path(state.run_dir).exists():
            _say("stopped by `nearcast fleet down`")
            return 0
        for p in state.procs():
            if p.name not in gone and not alive(p):
                gone.add(p.name)
                _say(f"{p.name} exited; its log:\n{_tail(p.log)}")
    down(state.run_dir, say=_say)
    _say("stopped")
    return 0
