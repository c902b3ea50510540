"""Shared fixtures: a fake clock, both registry backends, a private redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from placement.config import PlacementConfig
from placement.registry import Registry
from placement.registry.memory import InProcessRegistry
from placement.registry.redis import RedisRegistry
from placement.service import PlacementService
from placement.testing import REDIS_URL, Clock, RedisServer, free_port, redis_available


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _cleanup(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in r.scan_iter(match=f"{{{prefix}:*", count=1000)]
        for key in keys:  # one by one: in a cluster they live in different slots
            await r.delete(key)
    finally:
        await r.aclose()


@pytest.fixture(scope="session")
def cluster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private one-node Redis Cluster (every slot): CROSSSLOT errors surface here."""
    server = RedisServer(free_port(), cluster_dir=str(tmp_path_factory.mktemp("cluster")))
    server.start()
    try:
        r = redis.Redis.from_url(server.url)
        with pytest.raises(redis.ResponseError, match="same slot"):  # it does check slots
            r.mset({"{pool-a}:x": 1, "{pool-b}:y": 2})
        r.close()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    """The same suite runs against both backends, the Redis one also in cluster mode;
    CI must have Redis (no skipping)."""
    if request.param == "memory":
        yield InProcessRegistry()
        return
    url = REDIS_URL
    if request.param == "redis-cluster":
        url = request.getfixturevalue("cluster_server").url
    assert redis_available(url), f"the redis backend tests need Redis at {url}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    reg = RedisRegistry.from_url(url, prefix)
    try:
        yield reg
    finally:
        await reg.close()
        await _cleanup(url, prefix)


@pytest.fixture
async def service(registry: Registry, clock: Clock) -> AsyncIterator[PlacementService]:
    """A placement service on either backend, refreshed by hand (no background loops)."""
    svc = PlacementService(PlacementConfig(), registry, clock=clock)
    await svc.start(background=False)
    yield svc
    await svc.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
