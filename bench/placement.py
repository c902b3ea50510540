"""Placement decision benchmark: ``python -m bench.placement [--quick] [--sizes N,...]``.

For fleets of 1,000, 10,000 and 100,000 synthetic nodes it measures decision
latency (p50/p99) and decisions per second for the pure core, for the
in-process service (decision + in-memory reservation), and for the service
with the Redis Lua reservation, sequentially and with concurrent requests, and
the Redis snapshot refresh (the first full read, then incremental refreshes).

``--live SECONDS`` adds a run closer to production: another process beats for
every node every 2 s (half the fleet per second, as nodes and other service
instances do), the service refreshes its snapshot in the background every
second, and concurrent decisions are timed throughout. ``--check`` exits 1 when
a target is missed. Prints tables; the last line is one JSON object with every
figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

from placement.config import PlacementConfig
from placement.core import decide
from placement.model import (
    Capacity,
    FleetSnapshot,
    Load,
    Location,
    Node,
    PlacementRequest,
    Tier,
)
from placement.policy import DEFAULT_POLICY
from placement.registry.memory import InProcessRegistry
from placement.registry.redis import RedisRegistry
from placement.service import PlacementService
from placement.simulate import build_fleet

NOW = 1_700_000_000.0
TARGETS = {
    "10000/inprocess_p99_ms": 2.0,
    "10000/redis_p99_ms": 5.0,
    "10000/redis_concurrent_per_s": 2000.0,
    "100000/inprocess_p99_ms": 10.0,
}


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000.0 if s else 0.0


def fleet(n: int) -> tuple[list[Node], list[Location]]:
    f = build_fleet(n, seed=1, now=NOW)
    # Roomy edges so a long run measures decisions, not a fleet filling up.
    nodes = [
        replace(x, capacity=Capacity(1000, 1_000_000.0, 10_000)) if x.tier is Tier.EDGE else x
        for x in f.nodes
    ]
    rng = random.Random(n)
    locs = [
        Location(c.name, rng.choice(("isp-a", "isp-b", "isp-c")), c.region, c.lat, c.lon, "bench")
        for c in f.cities
    ]
    return nodes, locs


def requests(locs: list[Location], count: int, seed: int) -> list[PlacementRequest]:
    rng = random.Random(seed)
    return [PlacementRequest("bench", f"s{i}", rng.choice(locs)) for i in range(count)]


def summary(lat: list[float], wall: float, count: int) -> dict[str, float]:
    return {
        "p50_ms": round(pct(lat, 0.50), 3),
        "p99_ms": round(pct(lat, 0.99), 3),
        "per_s": round(count / wall, 1) if wall > 0 else 0.0,
    }


def bench_core(nodes: list[Node], reqs: list[PlacementRequest]) -> dict[str, float]:
    t0 = time.perf_counter()
    snap = FleetSnapshot.build(nodes, "bench", NOW)
    build = time.perf_counter() - t0
    lat = []
    t0 = time.perf_counter()
    for r in reqs:
        t = time.perf_counter()
        decide(snap, r, DEFAULT_POLICY, NOW, ttl=6.0)
        lat.append(time.perf_counter() - t)
    out = summary(lat, time.perf_counter() - t0, len(reqs))
    out["snapshot_build_ms"] = round(build * 1000, 1)
    return out


async def bench_service(
    svc: PlacementService, reqs: list[PlacementRequest], concurrency: int
) -> tuple[dict[str, float], dict[str, float]]:
    lat = []
    t0 = time.perf_counter()
    for r in reqs:
        t = time.perf_counter()
        placed = await svc.place(r)
        lat.append(time.perf_counter() - t)
        await svc.end_session(placed.session.id)
    seq = summary(lat, time.perf_counter() - t0, len(reqs))
    seq["per_s"] = round(len(reqs) / sum(lat), 1)  # releases are not decisions

    queue = list(reqs)
    clat: list[float] = []
    ids: list[str] = []

    async def worker() -> None:
        while queue:
            r = queue.pop()
            t = time.perf_counter()
            placed = await svc.place(replace(r, stream=r.stream + "c"))
            clat.append(time.perf_counter() - t)
            ids.append(placed.session.id)

    t0 = time.perf_counter()
    c0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    conc = summary(clat, time.perf_counter() - t0, len(reqs))
    # This process's CPU per decision: what one core sustains regardless of what
    # else the machine runs (the Redis server's own CPU is not counted).
    conc["cpu_ms"] = round((time.process_time() - c0) / len(reqs) * 1000, 3)
    for sid in ids:
        await svc.end_session(sid)
    return seq, conc


async def bench_refresh(
    svc: PlacementService, url: str, prefix: str, nodes: list[Node], full_ms: float
) -> dict[str, Any]:
    """Snapshot refresh cost: the first (full) read, then incremental ones.

    The changes are made by a second client, as by other service instances and
    the nodes themselves: 1% of the fleet beating, and a whole heartbeat
    interval's worth (every node beats once per 2 s, the service refreshes every
    1 s, so half the fleet has beaten since the last refresh).
    """
    other = RedisRegistry.from_url(url, prefix)
    out: dict[str, Any] = {"full_ms": full_ms, "nodes": len(nodes)}
    rng = random.Random(len(nodes))
    try:
        await svc.refresh()  # takes in the reservations the decision runs made
        t0 = time.perf_counter()
        await svc.refresh()
        out["unchanged_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        for name, share in (("1pct", 0.01), ("half", 0.5)):
            beating = rng.sample(nodes, max(1, int(len(nodes) * share)))
            beats = [(n.id, Load(cpu=rng.random() * 0.5)) for n in beating]
            assert all(await other.heartbeat_many(beats, NOW + 1))
            t0 = time.perf_counter()
            await svc.refresh()
            out[f"{name}_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            out[f"{name}_read"] = svc.last_refresh.read
            assert not svc.last_refresh.full and svc.last_refresh.read == len(beats)
    finally:
        await other.close()
    return out


def _beater(url: str, prefix: str, ids: list[str], ready: Any, stop: Any) -> None:
    """Child process: every second, a liveness beat for half the fleet (2 s per node)."""

    async def beat() -> None:
        reg = RedisRegistry.from_url(url, prefix)
        rng = random.Random(7)
        halves = [ids[0::2], ids[1::2]]
        try:
            tick = 0
            ready.set()
            while not stop.is_set():
                t0 = time.monotonic()
                beats = [(i, Load(cpu=rng.random() * 0.5)) for i in halves[tick % 2]]
                await reg.heartbeat_many(beats, NOW)
                tick += 1
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        finally:
            await reg.close()

    asyncio.run(beat())


async def bench_live(
    reg: RedisRegistry,
    url: str,
    prefix: str,
    nodes: list[Node],
    reqs: list[PlacementRequest],
    concurrency: int,
    seconds: float,
) -> dict[str, float]:
    """Concurrent decisions for ``seconds`` while the fleet beats and the snapshot refreshes."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_beater, args=(url, prefix, [n.id for n in nodes], ready, stop))
    proc.start()
    cfg = PlacementConfig(snapshot_interval=1.0, snapshot_max_age=600.0, decision_log_size=0)
    svc = PlacementService(cfg, reg, clock=lambda: NOW)
    lat: list[float] = []
    refreshes: list[tuple[str, int]] = []  # (snapshot id, nodes its refresh read)
    try:
        if not await asyncio.to_thread(ready.wait, 60):
            raise RuntimeError("the beating process did not start within 60 s")
        await svc.start(background=True)
        deadline = time.perf_counter() + seconds
        sessions: list[str] = []
        n = 0

        async def worker(k: int) -> None:
            nonlocal n
            while time.perf_counter() < deadline:
                r = reqs[n % len(reqs)]
                n += 1
                t = time.perf_counter()
                placed = await svc.place(replace(r, stream=f"{r.stream}l{n}"))
                lat.append(time.perf_counter() - t)
                sessions.append(placed.session.id)
                if len(sessions) > 4 * concurrency:  # keep the fleet from filling up
                    await svc.end_session(sessions.pop(0))
                snap = svc.snapshots.current
                if k == 0 and snap and (not refreshes or refreshes[-1][0] != snap.id):
                    refreshes.append((snap.id, svc.last_refresh.read))

        t0 = time.perf_counter()
        c0 = time.process_time()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        out = summary(lat, time.perf_counter() - t0, len(lat))
        out["cpu_ms"] = round((time.process_time() - c0) / max(1, len(lat)) * 1000, 3)
        out["snapshots"] = len(refreshes)
        # The most nodes one background refresh read (not the first, full, one).
        out["refresh_read_max"] = max((read for _, read in refreshes[1:]), default=0)
        for sid in sessions:
            await svc.end_session(sid)
        return out
    finally:
        stop.set()
        await svc.stop()
        await asyncio.to_thread(proc.join, 30)


async def cleanup(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    try:
        batch = []
        async for k in r.scan_iter(match=f"{{{prefix}:*", count=5000):
            batch.append(k)
            if len(batch) >= 5000:
                await r.delete(*batch)
                batch = []
        if batch:
            await r.delete(*batch)
    finally:
        await r.aclose()


async def run(
    sizes: list[int], count: int, redis_url: str, concurrency: int, live: float = 0.0
) -> dict[str, Any]:
    cfg = PlacementConfig(snapshot_interval=5.0, snapshot_max_age=600.0, decision_log_size=0)
    results: dict[str, Any] = {}
    for n in sizes:
        nodes, locs = fleet(n)
        reqs = requests(locs, count, seed=n)
        row: dict[str, Any] = {"core": bench_core(nodes, reqs)}

        mem = InProcessRegistry()
        for x in nodes:
            await mem.register(x, NOW)
        svc = PlacementService(cfg, mem, clock=lambda: NOW)
        await svc.start(background=False)
        row["inprocess"], row["inprocess_concurrent"] = await bench_service(svc, reqs, concurrency)
        await svc.stop()

        prefix = f"bench{uuid.uuid4().hex[:8]}"
        reg = RedisRegistry.from_url(redis_url, prefix, max_connections=concurrency + 8)
        try:
            await reg.register_many(nodes, NOW)
            svc = PlacementService(cfg, reg, clock=lambda: NOW)
            t0 = time.perf_counter()
            await svc.start(background=False)
            refresh_ms = round((time.perf_counter() - t0) * 1000, 1)
            row["redis"], row["redis_concurrent"] = await bench_service(svc, reqs, concurrency)
            row["redis"]["snapshot_refresh_ms"] = refresh_ms
            row["redis_refresh"] = await bench_refresh(svc, redis_url, prefix, nodes, refresh_ms)
            await svc.stop()
            if live > 0:
                row["redis_live"] = await bench_live(
                    reg, redis_url, prefix, nodes, reqs, concurrency, live
                )
        finally:
            await reg.close()
            await cleanup(redis_url, prefix)
        results[str(n)] = row
        print(f"  {n} nodes done", file=sys.stderr)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'nodes':>7} {'mode':<22} {'p50 ms':>8} {'p99 ms':>8} {'decisions/s':>12} "
        f"{'CPU ms/decision':>16}",
    ]
    for n, row in results.items():
        for mode, fig in row.items():
            if mode == "redis_refresh":
                continue
            cpu = f"{fig['cpu_ms']:>16.3f}" if "cpu_ms" in fig else ""
            lines.append(
                f"{n:>7} {mode:<22} {fig['p50_ms']:>8.3f} {fig['p99_ms']:>8.3f} "
                f"{fig['per_s']:>12,.0f} {cpu}".rstrip()
            )
    lines += [
        "",
        "Redis snapshot refresh (ms): full = first read; then incremental, after changes",
        f"{'nodes':>7} {'full':>9} {'unchanged':>10} {'1% beat':>9} {'half beat':>10}",
    ]
    for n, row in results.items():
        r = row.get("redis_refresh")
        if r:
            lines.append(
                f"{n:>7} {r['full_ms']:>9.1f} {r['unchanged_ms']:>10.1f} "
                f"{r['1pct_ms']:>9.1f} {r['half_ms']:>10.1f}"
            )
    return "\n".join(lines)


def checks(results: dict[str, Any]) -> dict[str, Any]:
    figures = {}
    for key, limit in TARGETS.items():
        n, name = key.split("/")
        if n not in results:
            continue
        if name == "inprocess_p99_ms":
            value = results[n]["inprocess"]["p99_ms"]
        elif name == "redis_p99_ms":
            value = results[n]["redis"]["p99_ms"]
        else:
            value = results[n]["redis_concurrent"]["per_s"]
        ok = value >= limit if name.endswith("per_s") else value <= limit
        figures[key] = {"value": value, "target": limit, "ok": ok}
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1k and 10k nodes, fewer decisions")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    ap.add_argument("--decisions", type=int, default=0, help="decisions per fleet size")
    ap.add_argument("--concurrency", type=int, default=32, help="concurrent requests")
    ap.add_argument(
        "--sizes", default="", help="fleet sizes, e.g. 10000,100000 (overrides --quick)"
    )
    ap.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (uvloop)"
    )
    ap.add_argument(
        "--live",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also time decisions for SECONDS while the fleet beats and the snapshot "
        "refreshes in the background (default: off)",
    )
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    sizes = [1000, 10000] if args.quick else [1000, 10000, 100000]
    if args.sizes:
        try:
            sizes = [int(x) for x in args.sizes.split(",")]
        except ValueError:
            ap.error("--sizes must be comma-separated integers")
    count = args.decisions or (500 if args.quick else 2000)
    loop_factory = None
    if args.loop == "uvloop":
        import uvloop  # what `nearcast placement` runs on (uvicorn's loop="auto")

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        results = runner.run(run(sizes, count, args.redis, args.concurrency, args.live))
    print(table(results))
    targets = checks(results)
    for key, t in targets.items():
        print(f"target {key}: {t['value']} (target {t['target']}) {'ok' if t['ok'] else 'MISSED'}")
    figures = {"decisions": count, "loop": args.loop, "results": results, "targets": targets}
    print(json.dumps(figures, sort_keys=True))
    if args.check and not all(t["ok"] for t in targets.values()):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
