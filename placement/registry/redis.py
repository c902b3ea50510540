"""Redis registry for a fleet (LiveKit's Redis router; OvenMediaEngine's Redis origin map).

Key layout is Redis Cluster-safe: everything a reservation touches carries the
pool's hash tag ``{<prefix>:<pool>}`` (a pool is a region), so the Lua script
runs on one slot. Fleet-wide indexes live under ``{<prefix>:meta}`` and are
only ever touched one key per command.

Snapshots are incremental: every script that changes what a snapshot shows of a
node (descriptor, beat, state, streams, reservations) bumps the pool's counter
and records the node in ``chg``; :meth:`RedisRegistry.changes` reads, per pool
and in one pipelined script call each, only the nodes scored above the counter
the caller saw. A recreated counter (new epoch) makes it re-read that pool.

Connections, pipelines (a fan-out on a cluster) and script calls are
:class:`~placement.registry.redisclient.RegistryClient`'s; this module owns the
keys and what is stored under them:

    {p:<pool>}:desc     hash  node -> descriptor JSON (full stats)
    {p:<pool>}:live     hash  node -> {"load": ..., "hb": t} (liveness beat; hb set
                              a TTL back and "dead": t once a probe found it dead)
    {p:<pool>}:state    hash  node -> ready|draining|cordoned (operator)
    {p:<pool>}:cap      hash  node -> "slots egress" (read by reserve.lua)
    {p:<pool>}:streams  hash  node -> JSON list of streams held or relayed
    {p:<pool>}:rslots   hash  node -> reserved transcode slots
    {p:<pool>}:regress  hash  node -> reserved egress Mb/s
    {p:<pool>}:leases   zset  session -> lease expiry (ms)
    {p:<pool>}:lamt     hash  session -> "node slots egress"
    {p:<pool>}:sess:<id> hash data (session JSON), state; PEXPIRE = lease
    {p:<pool>}:moved:<id> string  pool a migrated session now lives in
    {p:<pool>}:ver      hash  n -> change counter, epoch -> when it was created
    {p:<pool>}:chg      zset  node -> counter value of its last snapshot-visible change
    {p:meta}:pools      set   pool names
    {p:meta}:nodepool   hash  node -> pool
    {p:meta}:streams    hash  tenant/stream -> session id
    {p:meta}:policies   hash  version -> policy YAML;  {p:meta}:policy  active version
    {p:log}:decisions   list  recent decision log (JSON), newest first
    {p:log}:j:<name>    list  a journal (JSON), newest first, capped: j:audit (operator
                              actions), j:policy (policy activations)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from placement.errors import UnknownNode
from placement.model import (
    Load,
    Node,
    NodeState,
    Session,
    SessionState,
    check_node_id,
    session_pool,
    stream_key,
)
from placement.registry import NodeChanges
from placement.registry.redisclient import RegistryClient, connect, connect_cluster, unavailable

GC_BATCH = 256

_NO_CURSOR = "-"  # never equals a pool epoch ("" when absent, else "sec.usec")
_PARTS = ("desc", "live", "state", "rslots", "regress", "streams")
_STATES = {s.value: s for s in NodeState}


def _live(load: Load, now: float) -> str:
    """The liveness record of a node: its load and the time of its beat."""
    return json.dumps(
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


@dataclass(frozen=True)
class _PoolCursor:
    epoch: str
    n: int
    ids: frozenset[str]


class RedisRegistry:
    name = "redis"

    def __init__(
        self, client: aioredis.Redis | RedisCluster, prefix: str = "nc", fanout: int = 32
    ) -> None:
        self._r = client
        self._client = RegistryClient(client, fanout)
        self._p = prefix
        self._pool_of: dict[str, str] = {}
        # tenant/stream -> session id, written in batches: the index lives in another
        # hash slot than the reservation, so writing it inline would double the round
        # trips of every placement. Flushed before any read here and on every snapshot.
        self._index: dict[str, str] = {}
        # Reservations issued in the same event-loop turn share one pipeline: the
        # per-command client overhead, not Redis, bounds placements per second.
        self._batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        # Parsed descriptors by node id: a beat or a reservation re-reads the
        # descriptor string but does not re-parse and re-validate it.
        self._desc: dict[str, tuple[str, Node]] = {}
        self._reserve = self._client.script("reserve.lua")
        self._release = self._client.script("release.lua")
        self._renew = self._client.script("renew.lua", touch=False)
        self._beat = self._client.script("heartbeat.lua")
        self._register = self._client.script("register.lua")
        self._state = self._client.script("state.lua")
        self._dead = self._client.script("dead.lua")
        self._remove = self._client.script("remove.lua")
        self._changes = self._client.script("changes.lua")

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "nc",
        timeout: float = 1.0,
        max_connections: int = 64,
        cluster: bool = False,
    ) -> RedisRegistry:
        """A registry on ``url``; ``cluster`` for a Redis Cluster (any node as seed).

        With ``cluster`` the client learns the slot map and sends each pool's
        commands and scripts to the shard that holds its hash tag.
        """
        if cluster:
            # Half the connections for fanned-out pipelines; the rest for single calls.
            return cls(
                connect_cluster(url, timeout, max_connections),
                prefix,
                fanout=max(1, max_connections // 2),
            )
        return cls(connect(url, timeout, max_connections), prefix)

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

    def _ver_keys(self, pool: str) -> list[str]:
        return [self._k(pool, "ver"), self._k(pool, "chg")]

    async def _queue_register(self, pipe: Any, node: Node, now: float, streams: bool) -> None:
        # A space in an id would split the scripts' "node slots egress" lease fields and
        # fail every refresh of the pool: ids are checked before anything is written.
        check_node_id(node.id)
        check_node_id(node.region, "region", "a region")
        pool = node.pool
        live = _live(node.load, now)
        pipe.sadd(self._meta("pools"), pool)
        pipe.hset(self._meta("nodepool"), node.id, pool)
        args: list[Any] = [
            node.id,
            json.dumps(node.descriptor()),
            live,
            node.state.value,
            f"{node.capacity.slots} {node.capacity.egress_mbps}",
        ]
        if streams:
            args.append(json.dumps(sorted(node.streams)))
        await self._register(
            keys=[self._k(pool, p) for p in ("desc", "live", "state", "cap", "streams")]
            + self._ver_keys(pool),
            args=args,
            client=pipe,
        )

    async def register(self, node: Node, now: float) -> None:
        with unavailable():
            pipe = self._client.pipe()
            await self._queue_register(pipe, node, now, streams=True)
            await pipe.execute()
        self._pool_of[node.id] = node.pool

    async def register_many(self, nodes: Sequence[Node], now: float, batch: int = 2000) -> None:
        """Bulk registration (fleet import, benchmarks): one pipeline per batch."""
        for i in range(0, len(nodes), batch):
            with unavailable():
                pipe = self._client.pipe()
                for node in nodes[i : i + batch]:
                    await self._queue_register(pipe, node, now, streams=False)
                    self._pool_of[node.id] = node.pool
                await pipe.execute()

    async def heartbeat(self, node_id: str, load: Load, now: float) -> bool:
        live = _live(load, now)
        with unavailable():
            pool = await self._pool(node_id)
            if pool is None:
                return False
            ok = await self._beat(
                keys=[self._k(pool, "desc"), self._k(pool, "live"), *self._ver_keys(pool)],
                args=[node_id, live],
            )
        if not ok:
            self._pool_of.pop(node_id, None)
        return bool(ok)

    async def heartbeat_many(
        self, beats: Sequence[tuple[str, Load]], now: float, batch: int = 2000
    ) -> list[bool]:
        """Liveness beats for many registered nodes (a beat gateway, benchmarks): pipelined."""
        out: list[bool] = []
        for i in range(0, len(beats), batch):
            with unavailable():
                pipe = self._client.pipe()
                for node_id, load in beats[i : i + batch]:
                    pool = await self._pool(node_id)
                    if pool is None:
                        raise UnknownNode(node_id)
                    live = _live(load, now)
                    await self._beat(
                        keys=[self._k(pool, "desc"), self._k(pool, "live"), *self._ver_keys(pool)],
                        args=[node_id, live],
                        client=pipe,
                    )
                out.extend(bool(x) for x in await pipe.execute())
        return out

    async def mark_dead(self, node_id: str, silent_since: float, now: float) -> bool:
        with unavailable():
            pool = await self._pool(node_id)
            if pool is None:
                return False
            ok = await self._dead(
                keys=[self._k(pool, "desc"), self._k(pool, "live"), *self._ver_keys(pool)],
                args=[node_id, silent_since, now],
            )
        return bool(ok)

    async def remove(self, node_id: str) -> bool:
        with unavailable():
            pool = await self._pool(node_id)
            if pool is None:
                return False
            ok = await self._remove(
                keys=[self._k(pool, p) for p in ("desc", "live", "state", "cap", "streams")]
                + self._ver_keys(pool),
                args=[node_id],
            )
            await self._r.hdel(self._meta("nodepool"), node_id)
        self._pool_of.pop(node_id, None)
        self._desc.pop(node_id, None)
        return bool(ok)

    async def set_state(self, node_id: str, state: NodeState) -> Node:
        with unavailable():
            pool = await self._pool(node_id)
            if pool is None:
                raise UnknownNode(node_id)
            ok = await self._state(
                keys=[self._k(pool, "desc"), self._k(pool, "state"), *self._ver_keys(pool)],
                args=[node_id, state.value],
            )
            if not ok:
                raise UnknownNode(node_id)
            pipe = self._client.pipe()
            for part in _PARTS:
                pipe.hmget(self._k(pool, part), [node_id])
            columns = await pipe.execute()
        nodes, _ = self._parse(pool, [node_id], columns)
        if not nodes:
            raise UnknownNode(node_id)
        return nodes[0]

    def _parse(
        self, pool: str, ids: Sequence[str], columns: Sequence[Sequence[str | None]]
    ) -> tuple[list[Node], set[str]]:
        """Nodes from aligned (desc, live, state, rslots, regress, streams) columns."""
        out: list[Node] = []
        gone: set[str] = set()
        descs, lives, states, rslots, regress, streams = columns
        for i, node_id in enumerate(ids):
            raw = descs[i]
            if raw is None:
                gone.add(node_id)
                self._desc.pop(node_id, None)
                continue
            cached = self._desc.get(node_id)
            if cached is not None and cached[0] == raw:
                base = cached[1]
            else:
                base = Node.from_dict(json.loads(raw))
                self._desc[node_id] = (raw, base)
            # Only this service writes these fields (validated at the API): build the
            # node directly, this runs for every node that beat since the last refresh.
            live = lives[i]
            lv = json.loads(live) if live else {}
            ld = lv.get("load") or {}
            raw_streams = streams[i]
            out.append(
                Node(
                    id=base.id,
                    tier=base.tier,
                    region=base.region,
                    city=base.city,
                    isp=base.isp,
                    lat=base.lat,
                    lon=base.lon,
                    urls=base.urls,
                    capacity=base.capacity,
                    load=Load(
                        float(ld.get("cpu", 0.0)),
                        int(ld.get("transcodes", 0)),
                        float(ld.get("egress_mbps", 0.0)),
                        int(ld.get("viewers", 0)),
                    ),
                    state=_STATES[states[i] or "ready"],
                    labels=base.labels,
                    last_heartbeat=float(lv.get("hb", 0.0)),
                    reserved_slots=int(rslots[i] or 0),
                    reserved_egress_mbps=max(0.0, float(regress[i] or 0.0)),
                    streams=frozenset(json.loads(raw_streams))
                    if raw_streams and raw_streams != "[]"
                    else frozenset(),
                )
            )
            self._pool_of[node_id] = pool
        return out, gone

    async def changes(self, now: float, since: Any = None) -> NodeChanges:
        """Per pool, one pipelined script call: lease GC plus the nodes changed since."""
        prev: Mapping[str, _PoolCursor] = since if isinstance(since, dict) else {}
        with unavailable():
            await self._flush_index()
            pools = sorted(str(p) for p in await self._r.smembers(self._meta("pools")))
            calls = []
            for pool in pools:
                cur = prev.get(pool)
                keys = [
                    *self._ver_keys(pool),
                    *(self._k(pool, part) for part in _PARTS),
                    self._k(pool, "leases"),
                    self._k(pool, "lamt"),
                ]
                args = [
                    int(now * 1000),
                    GC_BATCH,
                    cur.epoch if cur else _NO_CURSOR,
                    cur.n if cur else 0,
                ]
                calls.append((self._changes, keys, args))
            results = await self._client.scripts(calls)
            for res in results:
                if isinstance(res, Exception):
                    raise res
        cursor: dict[str, _PoolCursor] = {}
        nodes: list[Node] = []
        removed: set[str] = set()
        for pool, res in zip(pools, results, strict=True):
            epoch, n, full, ids = str(res[0] or ""), int(res[1]), bool(res[2]), res[3]
            found, gone = self._parse(pool, ids, res[4:10])
            nodes.extend(found)
            cur = prev.get(pool)
            if full or cur is None:
                ids_now = frozenset(x.id for x in found)
                if cur is not None:
                    gone |= cur.ids - ids_now
            elif gone or any(x.id not in cur.ids for x in found):
                ids_now = (cur.ids | {x.id for x in found}) - gone
            else:
                ids_now = cur.ids  # the common case: no node came or went
            cursor[pool] = _PoolCursor(epoch, n, ids_now)
            removed |= gone
        for pool, cur in prev.items():
            if pool not in cursor:
                removed |= cur.ids
        if not isinstance(since, dict):
            return NodeChanges(cursor, True, nodes)
        return NodeChanges(cursor, False, nodes, frozenset(removed))

    async def nodes(self, now: float) -> list[Node]:
        return (await self.changes(now)).nodes

    def _reserve_keys(self, pool: str, sid: str) -> list[str]:
        return [
            self._k(pool, "cap"),
            self._k(pool, "rslots"),
            self._k(pool, "regress"),
            self._k(pool, "leases"),
            self._k(pool, "lamt"),
            self._k(pool, "state"),
            self._k(pool, f"sess:{sid}"),
            *self._ver_keys(pool),
        ]

    async def reserve(
        self, session: Session, now: float, headroom: float = 1.0, force: bool = False
    ) -> bool:
        pool = session.pool
        lease_ms = max(1, int((session.lease_expires - now) * 1000))
        with unavailable():
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
            results = await self._client.scripts(
                [(self._reserve, keys, args) for keys, args, _ in batch]
            )
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
        pipe = self._client.pipe()
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
        with unavailable():
            return await self._read(await self._locate(session_id), session_id, now)

    async def release(self, session_id: str, now: float) -> Session | None:
        with unavailable():
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
                    *self._ver_keys(pool),
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
        with unavailable():
            await self._flush_index()
            sid = await self._r.hget(self._meta("streams"), stream_key(tenant, stream))
        return await self.get_session(str(sid), now) if sid else None

    async def sessions(self, now: float) -> list[Session]:
        with unavailable():
            pools = sorted(str(p) for p in await self._r.smembers(self._meta("pools")))
            pipe = self._client.pipe()
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
        with unavailable():
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
        with unavailable():
            raw = await self._r.hgetall(self._meta("policies"))
        return {int(k): str(v) for k, v in raw.items()}

    async def store_policy(self, version: int, text: str, activate: bool) -> None:
        with unavailable():
            pipe = self._r.pipeline(transaction=True)
            pipe.hset(self._meta("policies"), str(version), text)
            if activate:
                pipe.set(self._meta("policy"), str(version))
            await pipe.execute()

    async def active_policy_version(self) -> int | None:
        with unavailable():
            v = await self._r.get(self._meta("policy"))
        return int(v) if v is not None else None

    async def log_decisions(self, entries: Sequence[dict[str, Any]], keep: int) -> None:
        await self._push_capped(f"{{{self._p}:log}}:decisions", entries, keep)

    async def recent_decisions(self, limit: int) -> list[dict[str, Any]]:
        return await self._newest(f"{{{self._p}:log}}:decisions", limit)

    async def append_journal(self, name: str, entries: Sequence[dict[str, Any]], keep: int) -> None:
        await self._push_capped(f"{{{self._p}:log}}:j:{name}", entries, keep)

    async def journal(self, name: str, limit: int) -> list[dict[str, Any]]:
        return await self._newest(f"{{{self._p}:log}}:j:{name}", limit)

    async def _push_capped(self, key: str, entries: Sequence[dict[str, Any]], keep: int) -> None:
        """Push ``entries`` (JSON) onto the list ``key``, keeping its newest ``keep``."""
        if not entries:
            return
        with unavailable():
            # MULTI on one key (one slot): the trim must follow the push, on a cluster too.
            pipe = self._r.pipeline(transaction=True)
            pipe.lpush(key, *[json.dumps(e) for e in entries])
            pipe.ltrim(key, 0, max(0, keep - 1))
            await pipe.execute()

    async def _newest(self, key: str, limit: int) -> list[dict[str, Any]]:
        with unavailable():
            raw = await self._r.lrange(key, 0, limit - 1)
        return [json.loads(r) for r in raw]

    async def ping(self) -> None:
        with unavailable():
            await self._r.ping()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._flush_index()
        with contextlib.suppress(Exception):
            await self._client.aclose()


__all__ = ["RedisRegistry", "SessionState"]
