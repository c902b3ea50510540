"""Shared fixtures: a fake clock, both registry backends, a private redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from placementutil import (
    REDIS_URL,
    Clock,
    RedisClusterServers,
    RedisServer,
    free_port,
    redis_available,
)

from placement.config import PlacementConfig
from placement.registry import Registry
from placement.registry.memory import InProcessRegistry
from placement.registry.redis import RedisRegistry
from placement.service import PlacementService


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _cleanup(url: str, prefix: str, cluster: bool = False) -> None:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    r = RedisCluster.from_url(url) if cluster else aioredis.Redis.from_url(url)
    try:
        # On a cluster, SCAN visits every primary; keys are deleted one by one,
        # since they live in different slots.
        keys = [k async for k in r.scan_iter(match=f"{{{prefix}:*", count=1000)]
        for key in keys:
            await r.delete(key)
    finally:
        await r.aclose()


@pytest.fixture(scope="session")
def cluster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A private three-shard Redis Cluster: pools land on different servers, so a
    client that is not cluster-aware, or keys of one script in two slots, fail here."""
    servers = RedisClusterServers(str(tmp_path_factory.mktemp("cluster")))
    servers.start()
    try:
        r = redis.Redis.from_url(servers.url)
        with pytest.raises(redis.ResponseError, match="same slot"):  # it does check slots
            r.mset({"{pool-a}:x": 1, "{pool-b}:y": 2})
        r.close()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    """The same suite runs against both backends, the Redis one also in cluster mode;
    CI must have Redis (no skipping)."""
    if request.param == "memory":
        yield InProcessRegistry()
        return
    url = REDIS_URL
    cluster = request.param == "redis-cluster"
    if cluster:
        url = request.getfixturevalue("cluster_server").url
    assert redis_available(url), f"the redis backend tests need Redis at {url}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    reg = RedisRegistry.from_url(url, prefix, cluster=cluster)
    try:
        yield reg
    finally:
        await reg.close()
        await _cleanup(url, prefix, cluster)


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
