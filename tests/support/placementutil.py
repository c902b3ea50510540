"""Test helpers shared by the placement tests and the benchmark: node factory,
a settable clock, and a private ``redis-server`` on a free port."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from placement.errors import RegistryUnavailable
from placement.model import Capacity, Load, Node, NodeState, Tier, Urls
from placement.registry.memory import InProcessRegistry

REDIS_URL = os.environ.get("NEARCAST_TEST_REDIS", "redis://127.0.0.1:6379/0")
# placement.node_keys of test services, and a far expiry for the credentials they sign.
NODE_KEYS = {"k1": "node-key-0123456789abcdef"}
FAR = 4_000_000_000


def node_credential(
    node_id: str,
    *,
    tier: str = "*",
    region: str = "*",
    city: str = "*",
    isp: str = "*",
    hosts: tuple[str, ...] = ("*",),
    tenants: tuple[str, ...] = ("*",),
    expires: int = FAR,
    keys: dict[str, str] | None = None,
) -> str:
    """A node credential signed with :data:`NODE_KEYS` (claims default to anything)."""
    from placement.credentials import mint

    return mint(
        keys or NODE_KEYS,
        node_id,
        tier=tier,
        region=region,
        city=city,
        isp=isp,
        hosts=hosts,
        tenants=tenants,
        expires=expires,
    )


def node_headers(node_id: str, **claims: object) -> dict[str, str]:
    """The Authorization header of ``node_id``'s heartbeats."""
    return {"Authorization": f"Bearer {node_credential(node_id, **claims)}"}  # type: ignore[arg-type]


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def make_node(
    node_id: str,
    tier: str = "edge",
    *,
    region: str = "west",
    city: str = "lyon",
    isp: str = "orange",
    lat: float = 45.76,
    lon: float = 4.84,
    slots: int = 4,
    egress: float = 1000.0,
    viewers: int = 500,
    cpu: float = 0.1,
    hb: float = 1_000_000.0,
    state: NodeState = NodeState.READY,
    labels: dict[str, str] | None = None,
    streams: frozenset[str] = frozenset(),
) -> Node:
    host = f"http://{node_id}.test"
    return Node(
        id=node_id,
        tier=Tier(tier),
        region=region,
        city=city,
        isp=isp,
        lat=lat,
        lon=lon,
        urls=Urls(f"rtmp://{node_id}.test", host, host),
        capacity=Capacity(slots, egress, viewers),
        load=Load(cpu=cpu),
        state=state,
        labels=labels or {},
        last_heartbeat=hb,
        streams=streams,
    )


def redis_available(url: str = REDIS_URL) -> bool:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
        return True
    except redis.exceptions.RedisError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes] | None = None
    # A cluster node (see RedisClusterServers), serving the hash slots ``slots``;
    # ``bus_port`` is its cluster bus.
    cluster_dir: str | None = None
    slots: tuple[int, int] = (0, 16383)
    bus_port: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server must be on PATH"
        self.bus_port = free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        os.path.join(self.cluster_dir, f"nodes-{self.port}.conf"),
                        # The bus port defaults to port + 10000, which may be taken
                        # or past 65535 for a port picked free: pick one free too.
                        "--cluster-port",
                        str(self.bus_port),
                    ]
                    if self.cluster_dir
                    else []
                ),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_available(self.url):
            assert time.monotonic() < deadline, "redis-server did not start"
            assert self.proc.poll() is None, "redis-server exited"
            time.sleep(0.02)
        if self.cluster_dir:
            r = redis.Redis.from_url(self.url)
            try:
                r.execute_command("CLUSTER", "ADDSLOTSRANGE", *self.slots)  # type: ignore[no-untyped-call]
            finally:
                r.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)
            self.proc = None


@dataclass
class RedisClusterServers:
    """A private Redis Cluster of ``shards`` primaries, the slots split evenly among them.

    Keys of different pools land on different servers, so a client that is not
    cluster-aware fails here (MOVED), as it would on a production cluster.
    """

    cluster_dir: str
    shards: int = 3
    servers: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.servers[0].url

    def start(self) -> None:
        step = 16384 // self.shards
        for i in range(self.shards):
            last = 16383 if i == self.shards - 1 else (i + 1) * step - 1
            server = RedisServer(free_port(), cluster_dir=self.cluster_dir, slots=(i * step, last))
            self.servers.append(server)
            server.start()
        first = redis.Redis.from_url(self.url)
        try:
            for other in self.servers[1:]:
                first.execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER", "MEET", "127.0.0.1", other.port, other.bus_port
                )
        finally:
            first.close()
        deadline = time.monotonic() + 20
        for server in self.servers:
            r = redis.Redis.from_url(server.url)
            try:
                while True:
                    info = r.cluster("info")
                    if info.get("cluster_state") == "ok" and int(
                        info.get("cluster_known_nodes", 0)
                    ) == len(self.servers):
                        break
                    assert time.monotonic() < deadline, "the cluster did not form"
                    time.sleep(0.05)
            finally:
                r.close()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers = []


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], limit: float = 5.0, what: str = "condition"
) -> None:
    """Poll an (async) predicate with a bounded timeout instead of sleeping blindly."""
    deadline = time.monotonic() + limit
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# ----- a minimal MaxMind DB writer (format 2.0), for tests with a real ``.mmdb`` file

_MMDB_META = b"\xab\xcd\xefMaxMind.com"


def _mmdb_ctrl(kind: int, size: int) -> bytes:
    if size < 29:
        head, ext = size, b""
    elif size < 285:
        head, ext = 29, bytes([size - 29])
    elif size < 65821:
        head, ext = 30, (size - 285).to_bytes(2, "big")
    else:
        head, ext = 31, (size - 65821).to_bytes(3, "big")
    if kind <= 7:
        return bytes([(kind << 5) | head]) + ext
    return bytes([head, kind - 7]) + ext


@dataclass(frozen=True)
class MmdbUint:
    """An unsigned integer of an explicit MaxMind type (16, 32, 64 or 128 bits)."""

    bits: int
    value: int

    def encode(self) -> bytes:
        kind = {16: 5, 32: 6, 64: 9, 128: 10}[self.bits]
        raw = self.value.to_bytes((self.value.bit_length() + 7) // 8, "big")
        return _mmdb_ctrl(kind, len(raw)) + raw


def mmdb_encode(value: object) -> bytes:
    """Encode one value in the MaxMind DB data-section format (no pointers)."""
    if isinstance(value, MmdbUint):
        return value.encode()
    if isinstance(value, bool):
        return _mmdb_ctrl(14, int(value))
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _mmdb_ctrl(2, len(raw)) + raw
    if isinstance(value, bytes):
        return _mmdb_ctrl(4, len(value)) + value
    if isinstance(value, float):
        import struct

        return _mmdb_ctrl(3, 8) + struct.pack(">d", value)
    if isinstance(value, int):
        if value < 0:
            raw = value.to_bytes(4, "big", signed=True)
            return _mmdb_ctrl(8, len(raw)) + raw
        bits = 16 if value < 1 << 16 else 32 if value < 1 << 32 else 64
        return MmdbUint(bits, value).encode()
    if isinstance(value, dict):
        out = _mmdb_ctrl(7, len(value))
        for k, v in value.items():
            out += mmdb_encode(str(k)) + mmdb_encode(v)
        return out
    if isinstance(value, list | tuple):
        return _mmdb_ctrl(11, len(value)) + b"".join(mmdb_encode(v) for v in value)
    raise TypeError(f"cannot encode {type(value).__name__} in a MaxMind DB")


def write_mmdb(
    path: str, networks: dict[str, dict[str, object]], database_type: str = "nearcast-test"
) -> None:
    """Write an IPv6 MaxMind DB (IPv4 networks live under ``::/96``, as in GeoLite2).

    ``networks`` maps a CIDR to its record; longer prefixes override shorter ones.
    """
    import ipaddress

    data = b""
    # A trie of [left, right]; a child is a node index, ("d", offset) or None.
    nodes: list[list[object]] = [[None, None]]
    nets = sorted(
        ((ipaddress.ip_network(c, strict=False), r) for c, r in networks.items()),
        key=lambda nr: nr[0].prefixlen,
    )
    for net, record in nets:
        offset = len(data)
        data += mmdb_encode(record)
        if net.version == 4:
            bits, plen = int(net.network_address), 96 + net.prefixlen
        else:
            bits, plen = int(net.network_address), net.prefixlen
        node = 0
        for depth in range(plen):
            bit = (bits >> (127 - depth)) & 1
            if depth == plen - 1:
                nodes[node][bit] = ("d", offset)
                break
            child = nodes[node][bit]
            if not isinstance(child, int):
                nodes.append([child, child])  # split a shorter prefix's leaf
                child = len(nodes) - 1
                nodes[node][bit] = child
            node = child
    count = len(nodes)

    def rec(child: object) -> int:
        if child is None:
            return count
        if isinstance(child, int):
            return child
        assert isinstance(child, tuple)
        return count + 16 + int(child[1])

    tree = b"".join(rec(a).to_bytes(4, "big") + rec(b).to_bytes(4, "big") for a, b in nodes)
    meta = {
        # libmaxminddb insists on these exact integer types.
        "binary_format_major_version": MmdbUint(16, 2),
        "binary_format_minor_version": MmdbUint(16, 0),
        "build_epoch": MmdbUint(64, int(time.time())),
        "database_type": database_type,
        "description": {"en": "nearcast test database"},
        "ip_version": MmdbUint(16, 6),
        "languages": ["en"],
        "node_count": MmdbUint(32, count),
        "record_size": MmdbUint(16, 32),
    }
    with open(path, "wb") as fh:
        fh.write(tree + b"\x00" * 16 + data + _MMDB_META + mmdb_encode(meta))


# The operator token of test placement services, as a header.
OPERATOR = "op-test"
OPERATOR_HEADERS = {"Authorization": f"Bearer {OPERATOR}"}


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class PlacementProcess:
    """``nearcast placement`` on a free port with the test node keys, OPERATOR and fast
    liveness (``config`` adds or replaces placement: keys), on a private redis-server
    (``private_redis``) or in memory. Test nodes share this machine's CPU with whatever
    else runs, so the policy's CPU filter is as loose as it goes."""

    def __init__(
        self,
        tmp: Path,
        *,
        private_redis: bool = True,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        import httpx
        import yaml
        from nodeutil import ROOT, wait_for

        self.redis = RedisServer(free_port()) if private_redis else None
        keys: dict[str, Any] = {
            "operator_token": OPERATOR,
            "node_keys": dict(NODE_KEYS),
            "snapshot_interval": 0.2,
            "liveness": {"heartbeat_interval": 0.25, "ttl": 2.0, "full_stats_interval": 1.0},
        }
        keys.update(config or {})
        cfg = tmp / "placement.yml"
        cfg.write_text(yaml.safe_dump({"placement": keys}))
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = tmp / "placement.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.client = httpx.Client(base_url=self.base, timeout=10.0, headers=OPERATOR_HEADERS)
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            if self.redis is not None:
                self.redis.start()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nearcast", "placement", "--config", str(cfg)]
                + ["--redis", self.redis.url if self.redis else "memory"]
                + ["--listen", f"127.0.0.1:{port}"],
                stdout=self.log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
            )
            wait_for(lambda: self.client.get("/openapi.json").status_code == 200, 30, "placement")
            policy = {"version": 2, "name": "tests", "filters": {"max_cpu": 1.5}}
            self.client.put("/v1/policy", json=policy).raise_for_status()
        except BaseException:
            self.stop()
            raise

    def nodes(self) -> list[dict[str, Any]]:
        r = self.client.get("/v1/nodes")
        r.raise_for_status()
        return list(r.json()["nodes"])

    def node(self, node_id: str) -> dict[str, Any] | None:
        return next((n for n in self.nodes() if n["id"] == node_id), None)

    def alive(self) -> set[str]:
        return {n["id"] for n in self.nodes() if n["alive"]}

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        if self.redis is not None:
            self.redis.stop()
        self.client.close()
        self.log.close()


class FlakyJournal(InProcessRegistry):
    """The in-process registry whose journals (audit, policy history) fail while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def append_journal(self, name: str, entries: Sequence[dict[str, Any]], keep: int) -> None:
        if self.down:
            raise RegistryUnavailable("down")
        await super().append_journal(name, entries, keep)

    async def journal(self, name: str, limit: int) -> list[dict[str, Any]]:
        if self.down:
            raise RegistryUnavailable("down")
        return await super().journal(name, limit)
