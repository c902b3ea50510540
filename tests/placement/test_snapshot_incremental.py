"""Incremental snapshots: a refresh reads only the nodes that changed since the last one."""

from __future__ import annotations

import asyncio
import random
import sys
import textwrap
import uuid
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from placementutil import REDIS_URL, Clock, RedisServer, make_node

from placement.config import PlacementConfig
from placement.errors import UnknownNode
from placement.model import FleetSnapshot, Load, Node, NodeState, Session, Tier
from placement.registry import Registry
from placement.registry.redis import RedisRegistry
from placement.registry.redisclient import _HiredisPacked
from placement.service import PlacementService

NOW = 1_000_000.0


def assert_same(a: FleetSnapshot, b: FleetSnapshot) -> None:
    assert dict(a.nodes) == dict(b.nodes)
    for name in ("by_tier_city", "by_tier_region", "by_tier", "by_stream"):
        assert dict(getattr(a, name)) == dict(getattr(b, name)), name
    assert dict(a.city_centroid) == dict(b.city_centroid)
    assert dict(a.city_region) == dict(b.city_region)


def random_node(rng: random.Random, i: int) -> Node:
    city = rng.choice(["lyon", "paris", "nice", "brest"])
    return make_node(
        f"n{i:03d}",
        tier=rng.choice(["edge", "edge", "mec", "cloud"]),
        city=city,
        region={"lyon": "west", "paris": "north", "nice": "south", "brest": "west"}[city],
        lat=rng.uniform(40, 50),
        lon=rng.uniform(-3, 8),
        cpu=rng.random(),
        streams=frozenset(rng.sample(["t/a", "t/b", "t/c"], rng.randint(0, 2))),
    )


@pytest.mark.parametrize("seed", range(8))
def test_update_equals_a_full_build(seed: int) -> None:
    rng = random.Random(seed)
    nodes = {n.id: n for n in (random_node(rng, i) for i in range(60))}
    snap = FleetSnapshot.build(nodes.values(), "s0", NOW)
    first = snap
    for step in range(1, 15):
        changed: list[Node] = []
        for _ in range(rng.randint(0, 6)):
            kind = rng.random()
            if kind < 0.4 and nodes:  # a beat: load and time only
                n = nodes[rng.choice(sorted(nodes))]
                changed.append(replace(n, load=Load(cpu=rng.random()), last_heartbeat=NOW + step))
            elif kind < 0.7:  # a new node or a moved one (city, tier, streams)
                changed.append(random_node(rng, rng.randint(0, 90)))
            elif nodes:
                n = nodes[rng.choice(sorted(nodes))]
                changed.append(replace(n, state=NodeState.CORDONED, reserved_slots=2))
        removed = set(rng.sample(sorted(nodes), rng.randint(0, 2))) if nodes else set()
        changed = [c for c in changed if c.id not in removed]
        for c in changed:
            nodes[c.id] = c
        for r in removed:
            nodes.pop(r, None)
        snap = snap.update(changed, removed, f"s{step}", NOW + step)
        assert_same(snap, FleetSnapshot.build(nodes.values(), "x", NOW))
    # The first snapshot is untouched (decision replay keeps using old snapshots).
    assert_same(first, FleetSnapshot.build(first.nodes.values(), "x", NOW))


def test_update_keeps_unchanged_node_objects() -> None:
    nodes = [make_node(f"e{i}") for i in range(5)]
    snap = FleetSnapshot.build(nodes, "a", NOW)
    beat = replace(nodes[2], load=Load(cpu=0.9), last_heartbeat=NOW + 1)
    new = snap.update([beat], (), "b", NOW + 1)
    assert new.nodes["e2"] is beat and snap.nodes["e2"] is nodes[2]
    assert all(new.nodes[n.id] is n for n in nodes if n.id != "e2")
    assert [n.id for n in new.by_tier_city[(Tier.EDGE, "lyon")]] == [f"e{i}" for i in range(5)]


async def test_changes_report_only_what_changed(registry: Registry) -> None:
    for i in range(6):
        await registry.register(make_node(f"e{i}", slots=4), NOW)
    first = await registry.changes(NOW)
    assert first.full and sorted(n.id for n in first.nodes) == [f"e{i}" for i in range(6)]
    none = await registry.changes(NOW + 0.1, first.cursor)
    assert not none.full and none.nodes == [] and not none.removed

    await registry.heartbeat("e1", Load(cpu=0.7), NOW + 1)
    await registry.set_state("e4", NodeState.DRAINING)
    s = Session("west~abc", "t", "s", "e3", Tier.EDGE, "west", 1, 10.0, NOW, NOW + 30)
    assert await registry.reserve(s, NOW + 1)
    ch = await registry.changes(NOW + 1, none.cursor)
    assert not ch.full
    got = {n.id: n for n in ch.nodes}
    assert sorted(got) == ["e1", "e3", "e4"]
    assert got["e1"].load.cpu == 0.7 and got["e1"].last_heartbeat == NOW + 1
    assert got["e3"].reserved_slots == 1
    assert got["e4"].state is NodeState.DRAINING

    # An expired lease returns its capacity: the node shows up as changed again.
    ch2 = await registry.changes(NOW + 40, ch.cursor)
    assert [(n.id, n.reserved_slots) for n in ch2.nodes] == [("e3", 0)]
    # A cursor from elsewhere (or none) gets everything.
    assert (await registry.changes(NOW + 40, None)).full


async def test_service_refresh_reads_only_changes(registry: Registry) -> None:
    clock = Clock(NOW)
    for i in range(20):
        await registry.register(make_node(f"e{i:02d}", hb=NOW), NOW)
    svc = PlacementService(PlacementConfig(decision_log_size=0), registry, clock=clock)
    await svc.start(background=False)
    try:
        before = svc.snapshots.current
        assert before is not None and svc.last_refresh.full and svc.last_refresh.read == 20
        clock.advance(1)
        await registry.heartbeat("e07", Load(cpu=0.5), clock())
        after = await svc.refresh()
        assert not svc.last_refresh.full and svc.last_refresh.read == 1
        assert after.nodes["e07"].load.cpu == 0.5
        assert all(after.nodes[i] is before.nodes[i] for i in before.nodes if i != "e07")
        assert_same(after, FleetSnapshot.build(await registry.nodes(clock()), "x", NOW))
    finally:
        await svc.stop()


@pytest.mark.redis
async def test_change_by_another_process_appears_in_next_snapshot() -> None:
    prefix = f"inc{uuid.uuid4().hex[:10]}"
    reg = RedisRegistry.from_url(REDIS_URL, prefix)
    clock = Clock(NOW)
    try:
        await reg.register_many(
            [make_node(f"e{i:03d}", region=f"r{i % 4}", hb=NOW) for i in range(200)], NOW
        )
        svc = PlacementService(PlacementConfig(decision_log_size=0), reg, clock=clock)
        await svc.start(background=False)
        before = svc.snapshots.current
        assert before is not None and len(before.nodes) == 200

        # Another process (its own client and connection) beats one node and
        # cordons another, in two different pools.
        script = textwrap.dedent(
            f"""
            import asyncio
            from placement.model import Load, NodeState
            from placement.registry.redis import RedisRegistry

            async def main():
                reg = RedisRegistry.from_url({REDIS_URL!r}, {prefix!r})
                assert await reg.heartbeat("e005", Load(cpu=0.9, transcodes=3), {NOW + 2})
                await reg.set_state("e010", NodeState.CORDONED)
                await reg.close()

            asyncio.run(main())
            """
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()

        clock.advance(2)
        after = await svc.refresh()
        assert svc.last_refresh.full is False
        assert svc.last_refresh.read == 2  # not the 200-node fleet
        assert after.nodes["e005"].load.transcodes == 3
        assert after.nodes["e005"].last_heartbeat == NOW + 2
        assert after.nodes["e010"].state is NodeState.CORDONED
        unchanged = [i for i in before.nodes if i not in ("e005", "e010")]
        assert all(after.nodes[i] is before.nodes[i] for i in unchanged)

        # The pool's keys vanish (a Redis restart without persistence) and only some
        # nodes re-register: that pool is re-read whole, its missing nodes dropped.
        r = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in r.scan_iter(match=f"{{{prefix}:r1}}:*")]
            await r.delete(*keys)
        finally:
            await r.aclose()
        for i in (1, 5):
            await reg.register(make_node(f"e{i:03d}", region="r1", hb=NOW + 3), NOW + 3)
        clock.advance(1)
        again = await svc.refresh()
        assert not svc.last_refresh.full
        assert svc.last_refresh.removed == 48 and svc.last_refresh.read == 2
        assert sorted(i for i in again.nodes if again.nodes[i].region == "r1") == [
            "e001",
            "e005",
        ]
        assert_same(again, FleetSnapshot.build(await reg.nodes(clock()), "x", NOW))
        await svc.stop()
    finally:
        r = aioredis.Redis.from_url(REDIS_URL)
        keys = [k async for k in r.scan_iter(match=f"{{{prefix}:*", count=1000)]
        if keys:
            await r.delete(*keys)
        await r.aclose()
        await reg.close()


@pytest.mark.redis
async def test_scripts_reload_after_script_flush(redis_server: RedisServer) -> None:
    """A restarted or failed-over Redis has no scripts: pipelined calls load and retry."""
    reg = RedisRegistry.from_url(redis_server.url, "flush")
    try:
        await reg.register(make_node("e1", slots=2), NOW)
        first = await reg.changes(NOW)
        r = aioredis.Redis.from_url(redis_server.url)
        try:
            await r.script_flush()
        finally:
            await r.aclose()
        s1 = Session("west~a1", "t", "a", "e1", Tier.EDGE, "west", 1, 1.0, NOW, NOW + 30)
        s2 = Session("west~a2", "t", "b", "e1", Tier.EDGE, "west", 1, 1.0, NOW, NOW + 30)
        s3 = Session("west~a3", "t", "c", "e1", Tier.EDGE, "west", 1, 1.0, NOW, NOW + 30)
        # Three reservations in one batch, two fit: each ran exactly once.
        got = await asyncio.gather(*(reg.reserve(s, NOW) for s in (s1, s2, s3)))
        assert sorted(got) == [False, True, True]
        ch = await reg.changes(NOW, first.cursor)
        assert [(n.id, n.reserved_slots) for n in ch.nodes] == [("e1", 2)]
    finally:
        await reg.close()


@pytest.mark.redis
async def test_heartbeat_many_is_one_change_per_node(redis_server: RedisServer) -> None:
    reg = RedisRegistry.from_url(redis_server.url, "many")
    try:
        await reg.register_many([make_node(f"e{i}", region=f"r{i % 2}") for i in range(6)], NOW)
        first = await reg.changes(NOW)
        beats = [("e1", Load(cpu=0.4)), ("e2", Load(transcodes=2)), ("e4", Load(viewers=9))]
        assert await reg.heartbeat_many(beats, NOW + 2, batch=2) == [True, True, True]
        ch = await reg.changes(NOW + 2, first.cursor)
        got = {n.id: n for n in ch.nodes}
        assert sorted(got) == ["e1", "e2", "e4"]
        assert got["e1"].load.cpu == 0.4 and got["e2"].load.transcodes == 2
        assert all(n.last_heartbeat == NOW + 2 for n in ch.nodes)
        with pytest.raises(UnknownNode):
            await reg.heartbeat_many([("nope", Load())], NOW + 3)
    finally:
        await reg.close()


arg = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["EVALSHA", "HSET", "GET"]), st.lists(arg, max_size=12))
def test_hiredis_packer_sends_the_same_bytes(command: str, args: list[object]) -> None:
    assert _HiredisPacked is not None, "hiredis is a dependency (redis[hiredis])"
    fast, plain = _HiredisPacked(), aioredis.Connection()
    assert b"".join(fast.pack_command(command, *args)) == b"".join(
        plain.pack_command(command, *args)
    )
