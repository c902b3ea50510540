"""The Redis client under :class:`~placement.registry.redis.RedisRegistry`.

Connecting (a bounded pool on one server, or a Redis Cluster), hiredis command
packing, pipelines that work the same on both (a cluster fans the commands out
per shard instead), and the registry's Lua scripts, sent by SHA and reloaded
only when Redis refuses them with NOSCRIPT. Nothing here knows the key layout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.typing import ScriptTextT
from redis.utils import HIREDIS_AVAILABLE

from placement.errors import RegistryUnavailable

_LUA = Path(__file__).with_name("lua")


@contextlib.contextmanager
def unavailable() -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise RegistryUnavailable(f"redis is unavailable: {exc}") from exc


def _script(name: str) -> str:
    """A Lua script with the shared ``touch`` prelude."""
    return (_LUA / "_touch.lua").read_text() + (_LUA / name).read_text()


_HiredisPacked: type[aioredis.Connection] | None = None
if HIREDIS_AVAILABLE:

    class _HiredisPackedConnection(aioredis.Connection):
        """Packs commands with hiredis's C serializer, as redis-py's sync client does.

        The asyncio client packs in Python, which was the largest client-side cost of
        a reservation (an EVALSHA with a dozen arguments); the bytes are the same.
        """

        # redis-py leaves this constructor unannotated.
        _packer = HiredisRespSerializer()  # type: ignore[no-untyped-call]

        def pack_command(self, *args: Any) -> list[bytes]:
            packed: list[bytes] = self._packer.pack(*args)
            return packed

    _HiredisPacked = _HiredisPackedConnection


def connect(url: str, timeout: float, max_connections: int) -> aioredis.Redis:
    """A client for one Redis server on ``url``, on a bounded connection pool."""
    # No client-side retries: a down Redis must surface fast so the service
    # can answer from its snapshot instead of stalling every request.
    extra: dict[str, Any] = {}
    if _HiredisPacked is not None and url.startswith("redis://"):
        extra["connection_class"] = _HiredisPacked
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        **extra,
        max_connections=max_connections,
        # Waiting for a free pooled connection is queueing, not an outage:
        # give it longer than a socket timeout so a burst never looks like
        # Redis being down (which would switch to degraded reservations).
        timeout=max(5.0, timeout * 5),
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 0.5),
    )
    # A bounded pool: a burst of requests queues for a connection instead
    # of opening thousands of sockets to Redis.
    return aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


def connect_cluster(url: str, timeout: float, max_connections: int) -> RedisCluster:
    """A client for a Redis Cluster, with any of its nodes as the seed ``url``."""
    return RedisCluster.from_url(
        url,
        max_connections=max_connections,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 0.5),
        retry=Retry(NoBackoff(), 0),
    )


class _Fanout:
    """A pipeline's stand-in on a Redis Cluster.

    redis-py refuses scripts in a cluster pipeline, so the queued commands go out
    concurrently instead, each to the shard that holds its slot. A script that a
    shard does not know yet (a new or failed-over primary) is loaded and re-run.
    """

    def __init__(
        self, client: RedisCluster, scripts: Mapping[str, ScriptTextT], limit: asyncio.Semaphore
    ) -> None:
        self._client = client
        self._scripts = scripts
        self._limit = limit
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def queue(*args: Any, **kwargs: Any) -> _Fanout:
            self._calls.append((name, args, kwargs))
            return self

        return queue

    def __await__(self) -> Generator[Any, None, _Fanout]:
        # ``AsyncScript.__call__`` awaits what ``evalsha`` returns, as with a pipeline.
        yield from ()
        return self

    async def _run(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Bounded, like the plain client's pool: the cluster client's per-shard
        # pools refuse a connection past their limit instead of queueing for one.
        async with self._limit:
            try:
                return await getattr(self._client, name)(*args, **kwargs)
            except redis.exceptions.NoScriptError:
                if name != "evalsha" or args[0] not in self._scripts:
                    raise
                await self._client.script_load(self._scripts[args[0]])
                return await getattr(self._client, name)(*args, **kwargs)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        calls, self._calls = self._calls, []
        return list(
            await asyncio.gather(
                *(self._run(*call) for call in calls), return_exceptions=not raise_on_error
            )
        )


class RegistryClient:
    """Pipelines and Lua scripts on a plain Redis client or a cluster client alike.

    ``fanout`` bounds the commands of one pipeline in flight on a cluster.
    """

    def __init__(self, client: aioredis.Redis | RedisCluster, fanout: int = 32) -> None:
        self._r = client
        self._fanout_limit = asyncio.Semaphore(fanout)
        # Script text by SHA, for a cluster shard that does not know a script yet.
        self._script_text: dict[str, ScriptTextT] = {}

    def script(self, name: str, touch: bool = True) -> AsyncScript:
        """Register the Lua script ``name``, with the ``touch`` prelude unless not ``touch``."""
        text = _script(name) if touch else (_LUA / name).read_text()
        sc = self._r.register_script(text)
        self._script_text[sc.sha] = sc.script
        return sc

    def pipe(self) -> Any:
        """A non-transactional pipeline: one round trip, or a fan-out on a cluster."""
        if isinstance(self._r, RedisCluster):
            return _Fanout(self._r, self._script_text, self._fanout_limit)
        return self._r.pipeline(transaction=False)

    async def scripts(self, calls: Sequence[tuple[AsyncScript, list[Any], list[Any]]]) -> list[Any]:
        """Script calls in one pipeline: one round trip.

        redis-py's own pipelined scripts cost a ``SCRIPT EXISTS`` round trip on
        every execute; here EVALSHA goes out directly and only calls refused with
        NOSCRIPT (a restarted or failed-over Redis) are retried after loading the
        script. Errors come back as exception objects, one per call.
        """
        pipe = self.pipe()
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        retry = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
        if retry:
            for script in {calls[i][0] for i in retry}:
                await self._r.script_load(script.script)
            pipe = self.pipe()
            for i in retry:
                script, keys, args = calls[i]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            for i, r in zip(retry, await pipe.execute(raise_on_error=False), strict=True):
                results[i] = r
        return results

    async def aclose(self) -> None:
        """Close the client and, on one server, its connection pool."""
        if isinstance(self._r, RedisCluster):
            await self._r.aclose()
        else:
            await self._r.aclose(close_connection_pool=True)
