"""Redis registry for a fleet (LiveKit's Redis router; OvenMediaEngine's Redis origin map).

Key layout is Redis Cluster-safe: everything a reservation touches carries the
pool's hash tag ``{<prefix>:<pool>}`` (a pool is a region), so the Lua script
runs on one slot. Fleet-wide indexes live under ``{<prefix>:meta}`` and are
only ever touched one key per command.

    {p:<pool>}:desc     hash  node -> descriptor JSON (full stats)
    {p:<pool>}:live     hash  node -> {"load": ..., "hb": t} (liveness beat)
    {p:<pool>}:state    hash  node -> ready|draining|cordoned (operator)
    {p:<pool>}:cap      hash  node -> "slots egress" (read by reserve.lua)
    {p:<pool>}:streams  hash  node -> JSON list of streams held or relayed
    {p:<pool>}:rslots   hash  node -> reserved transcode slots
    {p:<pool>}:regress  hash  node -> reserved egress Mb/s
    {p:<pool>}:leases   zset  session -> lease expiry (ms)
    {p:<pool>}:lamt     hash  session -> "node slots egress"
    {p:<pool>}:sess:<id> hash data (session JSON), state; PEXPIRE = lease
    {p:<pool>}:moved:<id> string  pool a migrated session now lives in
    {p:meta}:pools      set   pool names
    {p:meta}:nodepool   hash  node -> pool
    {p:meta}:streams    hash  tenant/stream -> session id
    {p:meta}:policies   hash  version -> policy YAML;  {p:meta}:policy  active version
    {p:log}:decisions   list  recent decision log (JSON), newest first
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from placement.errors import RegistryUnavailable, UnknownNode
from placement.model import (
    Load,
    Node,
    NodeState,
    Session,
    SessionState,
    session_pool,
    stream_key,
)

_LUA = Path(__file__).with_name("lua")
GC_BATCH = 256


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise RegistryUnavailable(f"redis is unavailable: {exc}") from exc


_HEARTBEAT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""


class RedisRegistry:
    name = "redis"

    def __init__(self, client: aioredis.Redis, prefix: str = "nc") -> None:
        self._r = client
        self._p = prefix
        self._pool_of: dict[str, str] = {}
        # tenant/stream -> session id, written in batches: the index lives in another
        # hash slot than the reservation, so writing it inline would double the round
        # trips of every placement. Flushed before any read here and on every snapshot.
        self._index: dict[str, str] = {}
        # Reservations issued in the same event-loop turn share one pipeline: the
        # per-command client overhead, not Redis, bounds placements per second.
        self._batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._gc = client.register_script((_LUA / "gc.lua").read_text())
        self._reserve = client.register_script((_LUA / "reserve.lua").read_text())
        self._release = client.register_script((_LUA / "release.lua").read_text())
        self._renew = client.register_script((_LUA / "renew.lua").read_text())
        self._beat = client.register_script(_HEARTBEAT)

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "nc", timeout: float = 1.0, max_connections: int = 64
    ) -> RedisRegistry:
        # No client-side retries: a down Redis must surface fast so the service
        # can answer from its snapshot instead of stalling every request.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
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
        client = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        return cls(client, prefix)

    def _k(self, pool: str, suffix: str) -> str:
        return f"{{{self._p}:{pool}}}:{suffix}"

    def _meta(self, suffix: str) -> str:
        return f"{{{self._p}:meta}}:{suffix}"

    async def _pool(self, node_id: str) -> str | None:
        pool = self._pool_of.get(node_id)
        if pool is None:
            raw = await self._r.hget(self._meta("nodepool"), node_id)
            if raw is not None:
                pool = str(raw)
                self._pool_of[node_id] = pool
        return pool

    async def register(self, node: Node, now: float) -> None:
        pool = node.pool
        live = json.dumps({"load": node.to_dict()["load"], "hb": now})
        with _unavailable():
            pipe = self._r.pipeline(transaction=False)
            pipe.sadd(self._meta("pools"), pool)
            pipe.hset(self._meta("nodepool"), node.id, pool)
            pipe.hset(self._k(pool, "desc"), node.id, json.dumps(node.descriptor()))
            pipe.hset(self._k(pool, "live"), node.id, live)
            pipe.hsetnx(self._k(pool, "state"), node.id, node.state.value)
            pipe.hset(
                self._k(pool, "cap"),
                node.id,
                f"{node.capacity.slots} {node.capacity.egress_mbps}",
            )
            pipe.hset(self._k(pool, "streams"), node.id, json.dumps(sorted(node.streams)))
            await pipe.execute()
        self._pool_of[node.id] = pool

    async def register_many(self, nodes: Sequence[Node], now: float, batch: int = 2000) -> None:
        """Bulk registration (fleet import, benchmarks): one pipeline per batch."""
        for i in range(0, len(nodes), batch):
            with _unavailable():
                pipe = self._r.pipeline(transaction=False)
                for node in nodes[i : i + batch]:
                    pool = node.pool
                    pipe.sadd(self._meta("pools"), pool)
                    pipe.hset(self._meta("nodepool"), node.id, pool)
                    pipe.hset(self._k(pool, "desc"), node.id, json.dumps(node.descriptor()))
                    live = json.dumps({"load": node.to_dict()["load"], "hb": now})
                    pipe.hset(self._k(pool, "live"), node.id, live)
                    pipe.hsetnx(self._k(pool, "state"), node.id, node.state.value)
                    pipe.hset(
                        self._k(pool, "cap"),
                        node.id,
                        f"{node.capacity.slots} {node.capacity.egress_mbps}",
                    )
                    self._pool_of[node.id] = pool
                await pipe.execute()

    async def heartbeat(self, node_id: str, load: Load, now: float) -> bool:
        live = json.dumps(
            {
                "load": {
                    "cpu": load.cpu,
                    "transcodes": load.transcodes,
                    "egress_mbps": load.egress_mbps,
                    "viewers": load.viewers,
                },
                "hb": now,
            }
        )
        with _unavailable():
            pool = await self._pool(node_id)
            if pool is None:
                return False
            ok = await self._beat(
                keys=[self._k(pool, "desc"), self._k(pool, "live")], args=[node_id, live]
            )
        if not ok:
            self._pool_of.pop(node_id, None)
        return bool(ok)

    async def set_state(self, node_id: str, state: NodeState) -> Node:
        with _unavailable():
            pool = await self._pool(node_id)
            if pool is None or not await self._r.hexists(self._k(pool, "desc"), node_id):
                raise UnknownNode(node_id)
            await self._r.hset(self._k(pool, "state"), node_id, state.value)
            nodes = await self._pool_nodes(pool, 0.0, gc=False)
        for n in nodes:
            if n.id == node_id:
                return n
        raise UnknownNode(node_id)

    async def _pool_nodes(self, pool: str, now: float, gc: bool = True) -> list[Node]:
        return await self._fetch([pool], now, gc)

    async def _fetch(self, pools: Sequence[str], now: float, gc: bool) -> list[Node]:
        parts = ("desc", "live", "state", "rslots", "regress", "streams")
        pipe = self._r.pipeline(transaction=False)
        for pool in pools:
            if gc:
                await self._gc(
                    keys=[
                        self._k(pool, "rslots"),
                        self._k(pool, "regress"),
                        self._k(pool, "leases"),
                        self._k(pool, "lamt"),
                    ],
                    args=[int(now * 1000), GC_BATCH],
                    client=pipe,
                )
            for part in parts:
                pipe.hgetall(self._k(pool, part))
        results = await pipe.execute()
        out: list[Node] = []
        step = len(parts) + (1 if gc else 0)
        for i, pool in enumerate(pools):
            chunk = results[i * step + (1 if gc else 0) : (i + 1) * step]
            desc, live, state, rslots, regress, streams = chunk
            for node_id, raw in desc.items():
                d: dict[str, Any] = json.loads(raw)
                lv = json.loads(live.get(node_id, "{}"))
                d["load"] = lv.get("load") or {}
                d["last_heartbeat"] = lv.get("hb", 0.0)
                d["state"] = state.get(node_id, "ready")
                d["reserved_slots"] = int(rslots.get(node_id, 0))
                d["reserved_egress_mbps"] = max(0.0, float(regress.get(node_id, 0.0)))
                d["streams"] = json.loads(streams.get(node_id, "[]"))
                out.append(Node.from_dict(d))
                self._pool_of[node_id] = pool
        return out

    async def nodes(self, now: float) -> list[Node]:
        with _unavailable():
            await self._flush_index()
            pools = sorted(str(p) for p in await self._r.smembers(self._meta("pools")))
            return await self._fetch(pools, now, gc=True)

    def _reserve_keys(self, pool: str, sid: str) -> list[str]:
        return [
            self._k(pool, "cap"),
            self._k(pool, "rslots"),
            self._k(pool, "regress"),
            self._k(pool, "leases"),
            self._k(pool, "lamt"),
            self._k(pool, "state"),
            self._k(pool, f"sess:{sid}"),
        ]

    async def reserve(
        self, session: Session, now: float, headroom: float = 1.0, force: bool = False
    ) -> bool:
        pool = session.pool
        lease_ms = max(1, int((session.lease_expires - now) * 1000))
        with _unavailable():
            rc = await self._reserve_batched(
                self._reserve_keys(pool, session.id),
                [
                    session.node_id,
                    session.id,
                    session.slots,
                    session.egress_mbps,
                    int(now * 1000),
                    lease_ms,
                    headroom,
                    "1" if force else "0",
                    json.dumps(session.to_dict()),
                ],
            )
            if rc == -1:
                raise UnknownNode(session.node_id)
            if rc not in (1, 2):
                return False
            self._index[stream_key(session.tenant, session.stream)] = session.id
            home = session_pool(session.id)
            if home != pool:
                await self._r.set(self._k(home, f"moved:{session.id}"), pool)
        return True

    async def _reserve_batched(self, keys: list[str], args: list[Any]) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((keys, args, fut))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._start_batch)
        return await fut

    def _start_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._run_batch(batch))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _run_batch(
        self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]
    ) -> None:
        try:
            pipe = self._r.pipeline(transaction=False)
            for keys, args, _ in batch:
                await self._reserve(keys=keys, args=args, client=pipe)
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, fut), res in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    async def _flush_index(self) -> None:
        if not self._index:
            return
        batch, self._index = self._index, {}
        try:
            await self._r.hset(self._meta("streams"), mapping=batch)  # type: ignore[arg-type]
        except BaseException:
            self._index = {**batch, **self._index}
            raise

    async def _locate(self, session_id: str) -> str:
        home = session_pool(session_id)
        moved = await self._r.get(self._k(home, f"moved:{session_id}"))
        return str(moved) if moved else home

    async def _read(self, pool: str, session_id: str, now: float) -> Session | None:
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(self._k(pool, f"sess:{session_id}"))
        pipe.zscore(self._k(pool, "leases"), session_id)
        data, score = await pipe.execute()
        if not data or score is None or score < now * 1000:
            return None
        d = json.loads(data["data"])
        d["state"] = data.get("state", "reserved")
        d["lease_expires"] = score / 1000.0
        return Session.from_dict(d)

    async def get_session(self, session_id: str, now: float) -> Session | None:
        with _unavailable():
            return await self._read(await self._locate(session_id), session_id, now)

    async def release(self, session_id: str, now: float) -> Session | None:
        with _unavailable():
            home = session_pool(session_id)
            pool = await self._locate(session_id)
            session = await self._read(pool, session_id, now)
            await self._release(
                keys=[
                    self._k(pool, "rslots"),
                    self._k(pool, "regress"),
                    self._k(pool, "leases"),
                    self._k(pool, "lamt"),
                    self._k(pool, f"sess:{session_id}"),
                ],
                args=[session_id],
            )
            if session is not None:
                key = stream_key(session.tenant, session.stream)
                if self._index.get(key) == session_id:
                    del self._index[key]
                if await self._r.hget(self._meta("streams"), key) == session_id:
                    await self._r.hdel(self._meta("streams"), key)
            if pool != home:
                await self._r.delete(self._k(home, f"moved:{session_id}"))
        return session

    async def stream_session(self, tenant: str, stream: str, now: float) -> Session | None:
        with _unavailable():
            await self._flush_index()
            sid = await self._r.hget(self._meta("streams"), stream_key(tenant, stream))
        return await self.get_session(str(sid), now) if sid else None

    async def sessions(self, now: float) -> list[Session]:
        with _unavailable():
            pools = sorted(str(p) for p in await self._r.smembers(self._meta("pools")))
            pipe = self._r.pipeline(transaction=False)
            for pool in pools:
                pipe.zrange(self._k(pool, "leases"), 0, -1)
            ids = await pipe.execute()
            out: list[Session] = []
            for pool, sids in zip(pools, ids, strict=True):
                for sid in sids:
                    s = await self._read(pool, str(sid), now)
                    if s is not None:
                        out.append(s)
        return sorted(out, key=lambda s: s.id)

    async def renew(
        self, node_id: str, session_ids: Sequence[str], now: float, lease_s: float
    ) -> list[str]:
        if not session_ids:
            return []
        with _unavailable():
            pool = await self._pool(node_id)
            if pool is None:
                return list(session_ids)
            missing = await self._renew(
                keys=[self._k(pool, "leases"), self._k(pool, "lamt")]
                + [self._k(pool, f"sess:{sid}") for sid in session_ids],
                args=[node_id, int(now * 1000), int(lease_s * 1000), *session_ids],
            )
        return [str(m) for m in missing]

    async def move(self, session: Session, target: Session, now: float) -> bool:
        old = await self.release(session.id, now)
        ok = await self.reserve(target, now)
        if not ok and old is not None:
            await self.reserve(old, now, force=True)
        return ok

    async def policies(self) -> dict[int, str]:
        with _unavailable():
            raw = await self._r.hgetall(self._meta("policies"))
        return {int(k): str(v) for k, v in raw.items()}

    async def store_policy(self, version: int, text: str, activate: bool) -> None:
        with _unavailable():
            pipe = self._r.pipeline(transaction=True)
            pipe.hset(self._meta("policies"), str(version), text)
            if activate:
                pipe.set(self._meta("policy"), str(version))
            await pipe.execute()

    async def active_policy_version(self) -> int | None:
        with _unavailable():
            v = await self._r.get(self._meta("policy"))
        return int(v) if v is not None else None

    async def log_decisions(self, entries: Sequence[dict[str, Any]], keep: int) -> None:
        if not entries:
            return
        key = f"{{{self._p}:log}}:decisions"
        with _unavailable():
            pipe = self._r.pipeline(transaction=False)
            pipe.lpush(key, *[json.dumps(e) for e in entries])
            pipe.ltrim(key, 0, max(0, keep - 1))
            await pipe.execute()

    async def recent_decisions(self, limit: int) -> list[dict[str, Any]]:
        with _unavailable():
            raw = await self._r.lrange(f"{{{self._p}:log}}:decisions", 0, limit - 1)
        return [json.loads(r) for r in raw]

    async def ping(self) -> None:
        with _unavailable():
            await self._r.ping()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._flush_index()
        with contextlib.suppress(Exception):
            await self._r.aclose(close_connection_pool=True)


__all__ = ["RedisRegistry", "SessionState"]
