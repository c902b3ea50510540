"""deploy/: the image, the compose fleet, the systemd units and the monitoring agree with
the code they run.

Nothing here needs Docker, systemd or Prometheus. Every config file goes through the
loader ``nearcast node --config`` uses (with the environment compose gives it), every
command line through the real argument parser, every health check path is requested
from the app that serves it, and every metric an alert names is looked up in the
registries a node and the placement service build.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from nearcast.cli import build_parser
from nearcast.config import Config, load, parse_hostport
from nearcast.node import Node
from nearcast.placement_cli import node_credential
from nearcast.placement_report import PlacementReport
from placement.app import create_app
from placement.registry.memory import InProcessRegistry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
IMAGE = "nearcast:local"
CONFIG_FILES = sorted(
    p.name
    for p in DEPLOY.glob("*.yml")
    if p.name not in ("compose.yml", "prometheus.yml", "alerts.yml")
)
# The example fleet: compose service -> (its config file, tier, city, ISP).
FLEET = {
    "edge-ber-1": ("node-edge-ber.yml", "edge", "berlin", "telekom"),
    "edge-muc-1": ("node-edge-muc.yml", "edge", "munich", "vodafone"),
    "mec-fra-1": ("node-mec.yml", "mec", "frankfurt", "telekom"),
}


# -- helpers ---------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    """``nearcast ARGV`` as the real parser reads it."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"`nearcast {shlex.join(argv)}` does not parse") from None
    assert getattr(args, "func", None), f"{argv} names no subcommand"
    return args


def secrets() -> dict[str, str]:
    """deploy/env.example's variables, each given a value of secret length."""
    names = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert value == "", f"env.example must not carry a value for {name}"
            names[name] = f"test-{name.lower().replace('_', '-')}-0123456789"
    return names


_INTERPOLATION = re.compile(r"\$(?:\$|\{(\w+)(?::?[-?+][^}]*)?\}|(\w+))")


def interpolate(value: Any, env: Mapping[str, str], used: set[str]) -> Any:
    """Compose's ``${VAR}``/``${VAR:?msg}``/``$$`` substitution over a parsed file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name is None:
            return "$"
        assert name in env, f"compose.yml uses ${name}, which env.example does not list"
        used.add(name)
        return env[name]

    return _INTERPOLATION.sub(sub, value)


@cache
def compose() -> dict[str, Any]:
    used: set[str] = set()
    env = secrets()
    data = interpolate(yaml.safe_load((DEPLOY / "compose.yml").read_text()), env, used)
    assert used == set(env), (
        f"env.example lists variables compose.yml never uses: {set(env) - used}"
    )
    return data  # type: ignore[no-any-return]


def services() -> dict[str, Any]:
    return compose()["services"]  # type: ignore[no-any-return]


def nearcast_services() -> list[str]:
    return [name for name, s in services().items() if s.get("image") == IMAGE]


def mounted(service: dict[str, Any], target: str) -> Path:
    """The deploy/ file a bind mount puts at ``target`` inside the container."""
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        if rest.split(":")[0] == target:
            assert source.startswith("./"), f"{target} is not a bind mount of a deploy/ file"
            path = DEPLOY / source
            assert path.is_file(), f"{source} mounted at {target} does not exist"
            return path
    raise AssertionError(f"nothing is mounted at {target}")


def container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}


@dataclass
class Service:
    args: argparse.Namespace
    config_file: Path
    config: Config
    env: dict[str, str]


def service(name: str) -> Service:
    s = services()[name]
    args = parse(s["command"])
    env = {k: str(v) for k, v in s.get("environment", {}).items()}
    path = mounted(s, args.config)
    return Service(args, path, load(str(path), environ=env), env)


def placement_port(svc: Service) -> int:
    return parse_hostport(svc.args.listen or svc.config.placement.listen)[1]


def healthcheck_url(command: str) -> tuple[int, str]:
    m = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/.-]*)", command)
    assert m, f"no http://127.0.0.1:PORT/PATH in health check {command!r}"
    return int(m.group(1)), m.group(2)


def node_with_everything(extra: Mapping[str, str] | None = None) -> Node:
    """A node with every optional part that registers metrics switched on."""
    env = {
        "NEARCAST_RECORD_TENANTS": "{school: all}",
        "NEARCAST_PLAYBACK_TENANTS": '{school: {keys: {k1: "0123456789abcdef"}}}',
        **(extra or {}),
    }
    return Node(load(environ=env))


async def get(app: Any, path: str, headers: Mapping[str, str] | None = None) -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        return (await client.get(path, headers=headers)).status_code


def minted(node_id: str) -> str:
    """The credential deploy/README.md's `node-credential` line for ``node_id`` mints,
    signed with the keys compose gives the placement service."""
    text = (DEPLOY / "README.md").read_text()
    lines = re.findall(rf"^mint (node-credential {re.escape(node_id)} .*)$", text, re.M)
    assert len(lines) == 1, f"deploy/README.md mints no credential for {node_id}"
    keys = service("placement").env["NEARCAST_PLACEMENT_NODE_KEYS"]
    return node_credential(
        parse(shlex.split(lines[0])), environ={"NEARCAST_PLACEMENT_NODE_KEYS": keys}
    )


def scrape_headers(job: dict[str, Any]) -> dict[str, str]:
    """The Authorization header a scrape job sends: its credentials_file is a compose
    secret mounted into the prometheus service, filled from a deploy/.env variable."""
    auth = job.get("authorization")
    if auth is None:
        return {}
    path = auth["credentials_file"]
    assert path.startswith("/run/secrets/"), f"{job['job_name']}: {path} is no compose secret"
    name = path.removeprefix("/run/secrets/")
    assert name in services()["prometheus"].get("secrets", []), f"{name} is not mounted"
    variable = compose()["secrets"][name]["environment"]
    return {"authorization": f"{auth.get('type', 'Bearer')} {secrets()[variable]}"}


# -- config files ----------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_file_loads_on_its_own(name: str) -> None:
    """Valid without any environment (no secret is needed to parse it) and not a copy of
    the defaults: every file says something."""
    cfg = load(str(DEPLOY / name), environ={})
    assert cfg != load(environ={})


def test_every_config_file_is_used() -> None:
    used = {service(n).config_file.name for n in nearcast_services()}
    assert used == set(CONFIG_FILES)


@pytest.mark.parametrize(("name", "expected"), FLEET.items())
async def test_fleet_node(name: str, expected: tuple[str, str, str, str]) -> None:
    file, tier, city, isp = expected
    svc = service(name)
    s = services()[name]
    node = svc.config.node
    assert svc.args.command == "node"
    assert svc.config_file.name == file
    assert (node.id, node.tier, node.city, node.isp) == (name, tier, city, isp)
    assert (node.lat, node.lon) != (0.0, 0.0)
    # compose publishes the node's listen ports and tells placement where they are.
    rtmp, http = (
        parse_hostport(svc.config.rtmp.listen)[1],
        parse_hostport(svc.config.http.listen)[1],
    )
    assert container_ports(s) == {rtmp, http}
    host_port = {int(p.split(":")[-1]): int(p.split(":")[-2]) for p in s["ports"]}
    for url, port in ((node.public_rtmp, rtmp), (node.public_http, http)):
        assert urlsplit(url).port == host_port[port], f"{url} is not where {port} is published"
    # It registers with the fleet's placement service, which accepts what the node
    # reports under the credential deploy/README.md mints for it.
    place = service("placement")
    target = urlsplit(svc.config.placement.url)
    assert (target.hostname, target.port) == ("placement", placement_port(place))
    assert svc.env["NEARCAST_PLACEMENT_NODE_TOKEN"]
    descriptor = PlacementReport(Node(svc.config), "0.0.0.0").descriptor()
    app = create_app(place.config.placement, InProcessRegistry())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://placement") as client:
        r = await client.post(
            f"/v1/nodes/{name}/heartbeat",
            json={"load": {}, "node": descriptor.descriptor()},
            headers={"Authorization": f"Bearer {minted(name)}"},
        )
        assert r.status_code == 200, r.text
        # Another node's credential does not pass for this one.
        other = minted(next(n for n in FLEET if n != name))
        r = await client.post(
            f"/v1/nodes/{name}/heartbeat",
            json={"load": {}, "node": descriptor.descriptor()},
            headers={"Authorization": f"Bearer {other}"},
        )
        assert r.status_code == 401
    # Recordings land on the node's own volume.
    record_dir = svc.config.record.dir
    volumes = [v.split(":")[1] for v in s["volumes"] if not v.startswith("./")]
    assert svc.config.record.tenants and record_dir in volumes
    assert s["depends_on"]["placement"]


def test_fleet_shape() -> None:
    """Two edge nodes in different cities and ISPs, a MEC node of their region, and the
    same tenants and publish keys everywhere (placement may send a publisher to any)."""
    nodes = [service(n).config for n in FLEET]
    edges = [c.node for c in nodes if c.node.tier == "edge"]
    assert len(edges) == 2
    assert edges[0].city != edges[1].city and edges[0].isp != edges[1].isp
    assert len({c.node.region for c in nodes}) == 1
    assert len({(c.node.lat, c.node.lon) for c in nodes}) == len(nodes)
    assert len({tuple(c.rtmp.tenants) for c in nodes}) == 1
    assert len({json.dumps(c.ingest.auth.tenants["school"].keys) for c in nodes}) == 1
    assert all(c.ingest.operator_token for c in nodes)


def test_placement_service() -> None:
    svc = service("placement")
    s = services()["placement"]
    assert svc.args.command == "placement"
    redis = urlsplit(svc.args.redis or svc.config.redis.url)
    assert redis.hostname in services() and services()[redis.hostname]["image"].startswith("redis:")
    assert s["depends_on"][redis.hostname] == {"condition": "service_healthy"}
    assert svc.config.placement.operator_token
    assert svc.config.placement.node_keys and svc.config.placement.metrics_token
    assert container_ports(s) == {placement_port(svc)}


def test_redis_has_a_password_and_a_network_of_its_own() -> None:
    """Redis asks for the password placement's URL carries, and shares its network with
    placement alone: the nodes, which face the internet, cannot reach it."""
    svc = service("placement")
    url = urlsplit(svc.args.redis or svc.config.redis.url)
    redis = services()[url.hostname or ""]
    password = redis["environment"]["REDISCLI_AUTH"]
    assert password and url.password == password
    assert "--requirepass" in redis["command"][-1] and "$REDISCLI_AUTH" in redis["command"][-1]
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    [network] = redis["networks"]
    assert compose()["networks"][network]["internal"] is True
    joined = {n for n, s in services().items() if network in s.get("networks", ["default"])}
    assert joined == {url.hostname, "placement"}
    assert "ports" not in redis


async def test_placement_healthcheck_is_served() -> None:
    svc = service("placement")
    test = services()["placement"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    port, path = healthcheck_url(" ".join(test[1:]))
    assert port == placement_port(svc)
    app = create_app(svc.config.placement, InProcessRegistry())
    assert await get(app, path) == 200


def test_secrets_stay_out_of_files() -> None:
    """Tokens and keys only arrive through the environment compose fills from .env."""
    for name in CONFIG_FILES:
        cfg = load(str(DEPLOY / name), environ={})
        assert not cfg.placement.operator_token and not cfg.placement.node_token
        assert not cfg.placement.node_keys and not cfg.placement.metrics_token
        assert not cfg.ingest.operator_token
        assert "@" not in cfg.redis.url, f"{name}: a Redis password in the file"
        assert not cfg.ingest.auth.tenants and not cfg.playback.tenants
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


# -- the image -------------------------------------------------------------------------


def dockerfile() -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            yield word.upper(), rest.strip()


def final_stage() -> list[tuple[str, str]]:
    stages: list[list[tuple[str, str]]] = []
    for word, rest in dockerfile():
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
    return stages[-1]


def test_dockerfile_context_files_exist_and_are_not_ignored() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copies = [rest.split() for word, rest in dockerfile() if word == "COPY"]
    for *sources, _dest in (c for c in copies if not c[0].startswith("--")):
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert src.split("/")[0] in allowed, f"COPY {src}: left out by the dockerignore"


def test_image_copies_every_package_the_product_ships() -> None:
    """The image copies package folders one by one: a new package must be among them."""
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["packages"]
    copies = {rest.split()[0] for word, rest in dockerfile() if word == "COPY"}
    missing = sorted(set(shipped) - copies)
    assert not missing, f"deploy/Dockerfile does not COPY {missing}"


async def test_image_runs_a_node_with_a_served_healthcheck() -> None:
    stage = final_stage()
    instructions = dict(stage)
    assert re.fullmatch(r"python:\S+-slim\S*", instructions["FROM"])
    assert instructions["USER"].split(":")[0] not in ("root", "0")
    assert json.loads(instructions["ENTRYPOINT"]) == ["nearcast"]
    args = parse(json.loads(instructions["CMD"]))
    assert args.command == "node"
    # The config the default command loads is one the image copies in.
    copies = {r.split()[-1]: r.split()[0] for w, r in stage if w == "COPY" and "--" not in r}
    cfg = load(str(ROOT / copies[args.config]), environ={})
    ports = {int(p) for p in instructions["EXPOSE"].split()}
    listens = (
        cfg.rtmp.listen,
        cfg.rtmp.tls_listen,
        cfg.http.listen,
        cfg.http.tls_listen,
        cfg.placement.listen,
    )
    assert {parse_hostport(x)[1] for x in listens} <= ports
    port, path = healthcheck_url(instructions["HEALTHCHECK"])
    assert port == parse_hostport(cfg.http.listen)[1]
    assert await get(Node(cfg).http_app, path) == 200


def test_compose_nodes_keep_the_image_healthcheck() -> None:
    port, _ = healthcheck_url(dict(final_stage())["HEALTHCHECK"])
    for name in FLEET:
        assert "healthcheck" not in services()[name]
        assert parse_hostport(service(name).config.http.listen)[1] == port


# -- systemd ---------------------------------------------------------------------------


def unit(name: str) -> dict[str, list[str]]:
    """``Key=Value`` settings of a unit file; a key may repeat."""
    out: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        key, eq, value = line.partition("=")
        if eq and not line.startswith(("#", ";")):
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def installed() -> dict[str, Path]:
    """/etc/nearcast/... -> the deploy/ file the README's install steps put there."""
    text = (DEPLOY / "README.md").read_text()
    pairs = re.findall(r"install [^\n]*?deploy/(\S+)\s+(/etc/nearcast/\S+)", text)
    return {target: DEPLOY / source for source, target in pairs}


@pytest.mark.parametrize(
    ("name", "command"),
    [("nearcast-node.service", "node"), ("nearcast-placement.service", "placement")],
)
def test_systemd_unit(name: str, command: str) -> None:
    u = unit(name)
    argv = shlex.split(u["ExecStart"][0])
    assert argv[0] == "/opt/nearcast/bin/nearcast"
    args = parse(argv[1:])
    assert args.command == command
    config_file = installed().get(args.config)
    assert config_file is not None, f"deploy/README.md installs nothing at {args.config}"
    cfg = load(str(config_file), environ={})
    for env_file in u["EnvironmentFile"]:
        assert env_file.lstrip("-") in (DEPLOY / "README.md").read_text()
    assert u["Restart"] == ["on-failure"]
    assert u["User"][0] not in ("root", "0")
    assert u["NoNewPrivileges"] == ["yes"] and u["ProtectSystem"] == ["strict"]
    assert u["KillSignal"] == ["SIGTERM"]
    assert float(u["TimeoutStopSec"][0].removesuffix("s")) >= 30
    assert int(u["LimitNOFILE"][0]) >= 65536
    if command == "node":
        # ProtectSystem=strict: the recordings directory must be writable explicitly.
        assert cfg.record.dir in u["ReadWritePaths"]
        assert u["WorkingDirectory"] == ["/var/lib/nearcast"]
        state = u["StateDirectory"][0].split()
        assert cfg.record.dir.removeprefix("/var/lib/") in state


# -- monitoring ------------------------------------------------------------------------


def exposed(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Each sample name /metrics can carry, mapped to its family's sample names."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        names = {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {s.name for s in family.samples}
        for n in names:
            out[n] = names
    return out


@cache
def node_metrics() -> frozenset[str]:
    # A fleet node: placement.url set, so without the embedded service's placement_*.
    node = node_with_everything({"NEARCAST_PLACEMENT_URL": "http://placement:8090"})
    return frozenset(exposed(node.registry))


@cache
def placement_metrics() -> frozenset[str]:
    app = create_app(service("placement").config.placement, InProcessRegistry())
    return frozenset(exposed(app.state.metrics.registry))


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_KEYWORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\(?)", expr):
        if not m.group(2) and m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def prometheus() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "prometheus.yml").read_text())  # type: ignore[no-any-return]


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x="y}"}[5m]))) > 0.1'
        " and on (instance) b_total / c offset 5m > 45 * 1e3"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_alert_metrics_exist() -> None:
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    jobs = {job["job_name"] for job in prometheus()["scrape_configs"]}
    known = {"nearcast-node": node_metrics(), "nearcast-placement": placement_metrics()}
    assert {g["name"] for g in groups} == set(known)
    for group in groups:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names, f"{rule['alert']}: no metric in {rule['expr']!r}"
            for name in names - {"up"}:
                assert name in known[group["name"]], f"{rule['alert']}: no metric {name}"
            if "up" in names:
                assert re.search(r'up\{job="([^"]+)"\}', rule["expr"])
                assert re.findall(r'up\{job="([^"]+)"\}', rule["expr"]) == [group["name"]]
            assert group["name"] in jobs
            assert rule["labels"]["severity"] in ("critical", "warning")
            assert rule["annotations"]["summary"]


async def test_prometheus_scrapes_every_service() -> None:
    cfg = prometheus()
    rules = cfg["rule_files"]
    mounts = services()["prometheus"]["volumes"]
    for name in ["prometheus.yml", *rules]:
        assert (DEPLOY / name).is_file()
        assert f"./{name}:/etc/prometheus/{name}:ro" in mounts
    scraped: dict[str, str] = {}
    for job in cfg["scrape_configs"]:
        headers = scrape_headers(job)
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = parse_hostport(target)
                scraped[host] = job["job_name"]
                svc = service(host)
                if svc.args.command == "node":
                    assert port == parse_hostport(svc.config.http.listen)[1]
                    app = Node(svc.config).http_app
                    # A node's metrics are not for anyone who reaches its media port.
                    assert await get(app, job.get("metrics_path", "/metrics")) == 401
                else:
                    assert port == placement_port(svc)
                    app = create_app(svc.config.placement, InProcessRegistry())
                    # Its /metrics wants the metrics token, which Prometheus reads from the
                    # compose secret mounted at credentials_file.
                    auth = job["authorization"]
                    secret = auth["credentials_file"].removeprefix("/run/secrets/")
                    assert secret in services()["prometheus"]["secrets"]
                    token = secrets()[compose()["secrets"][secret]["environment"]]
                    assert token == svc.config.placement.metrics_token
                    assert await get(app, job.get("metrics_path", "/metrics")) == 401
                    headers = {"Authorization": f"{auth.get('type', 'Bearer')} {token}"}
                assert await get(app, job.get("metrics_path", "/metrics"), headers) == 200
    assert scraped == {
        name: f"nearcast-{service(name).args.command}" for name in nearcast_services()
    }
