"""Shared fixtures: a fake clock, both registry backends, a private redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from placement.registry import Registry
from placement.registry.memory import InProcessRegistry
from placement.registry.redis import RedisRegistry
from placement.testing import REDIS_URL, Clock, RedisServer, free_port, redis_available


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _cleanup(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in r.scan_iter(match=f"{{{prefix}:*", count=1000)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


@pytest.fixture(params=["memory", "redis"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    """The same suite runs against both backends; CI must have Redis (no skipping)."""
    if request.param == "memory":
        yield InProcessRegistry()
        return
    assert redis_available(), f"the redis backend tests need Redis at {REDIS_URL}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    reg = RedisRegistry.from_url(REDIS_URL, prefix)
    try:
        yield reg
    finally:
        await reg.close()
        await _cleanup(REDIS_URL, prefix)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
