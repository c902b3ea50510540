"""Test helpers shared by the placement tests and the benchmark: node factory,
a settable clock, and a private ``redis-server`` on a free port."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis

from placement.model import Capacity, Load, Node, NodeState, Tier, Urls

REDIS_URL = os.environ.get("NEARCAST_TEST_REDIS", "redis://127.0.0.1:6379/0")


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
        urls=Urls(f"rtmp://{node_id}.test/live", host, f"{host}/whip"),
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

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server must be on PATH"
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
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_available(self.url):
            assert time.monotonic() < deadline, "redis-server did not start"
            assert self.proc.poll() is None, "redis-server exited"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


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
