"""Registry outages: answers from the last snapshot, conservative reservations, recovery.

The Redis test stops and restarts a redis-server this test started itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import httpx
import pytest
from placementutil import NODE_KEYS, Clock, RedisServer, make_node, node_credential, wait_for

from placement.agent import NodeAgent
from placement.app import create_app
from placement.config import LivenessConfig, PlacementConfig
from placement.errors import InvalidField, NoCapacity, RegistryUnavailable, SnapshotTooOld
from placement.model import Load, Location, Node, NodeState, PlacementRequest, Session
from placement.registry.memory import InProcessRegistry
from placement.registry.redis import RedisRegistry
from placement.service import PlacementService

LYON = Location("lyon", "orange", "west", 45.76, 4.84)


class FlakyRegistry(InProcessRegistry):
    """An in-process registry that can be switched off, like a Redis outage."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise RegistryUnavailable("registry is down (test)")

    async def nodes(self, now: float) -> list[Node]:
        self._check()
        return await super().nodes(now)

    async def reserve(
        self, session: Session, now: float, headroom: float = 1.0, force: bool = False
    ) -> bool:
        self._check()
        return await super().reserve(session, now, headroom, force)

    async def get_session(self, session_id: str, now: float) -> Session | None:
        self._check()
        return await super().get_session(session_id, now)

    async def active_policy_version(self) -> int | None:
        self._check()
        return await super().active_policy_version()

    async def log_decisions(self, entries: Sequence[dict[str, Any]], keep: int) -> None:
        self._check()
        await super().log_decisions(entries, keep)

    async def heartbeat(self, node_id: str, load: Load, now: float) -> bool:
        self._check()
        return await super().heartbeat(node_id, load, now)


async def test_degraded_answers_conservatively_then_ages_out(clock: Clock) -> None:
    reg = FlakyRegistry()
    svc = PlacementService(PlacementConfig(), reg, clock=clock)
    await svc.start(background=False)
    await reg.register(make_node("e1", slots=4), clock())
    await svc.refresh()
    first = await svc.place(PlacementRequest("s", "a", LYON))
    assert not first.degraded
    reg.down = True
    clock.advance(20)  # long past the TTL: judged as of the snapshot, the node is still alive
    second = await svc.place(PlacementRequest("s", "b", LYON))
    assert second.degraded and svc.degraded and svc.metrics.degraded._value.get() == 1
    assert (await svc.get_session(first.session.id)) == (first.session, True)
    with pytest.raises(NoCapacity):  # headroom 0.5 of 4 slots: 2 taken already
        await svc.place(PlacementRequest("s", "c", LYON))
    assert (await svc.heartbeat("e1", Load()))["degraded"] is True
    clock.advance(11)  # the snapshot is now older than snapshot_max_age (30 s)
    with pytest.raises(SnapshotTooOld):
        await svc.place(PlacementRequest("s", "d", LYON))
    reg.down = False
    await reg.register(make_node("e1", slots=4), clock())
    await svc.refresh()
    assert not svc.degraded
    got = await reg.get_session(second.session.id, clock())
    assert got is not None and not got.degraded  # written back after the outage


async def test_no_snapshot_at_all_is_unavailable(clock: Clock) -> None:
    reg = FlakyRegistry()
    reg.down = True
    svc = PlacementService(PlacementConfig(), reg, clock=clock)
    await svc.start(background=False)
    with pytest.raises(SnapshotTooOld):
        await svc.place(PlacementRequest("s", "a", LYON))


async def test_readiness_follows_what_the_service_can_answer_from(clock: Clock) -> None:
    reg = FlakyRegistry()
    reg.down = True
    app = create_app(PlacementConfig(), reg, clock=clock, background=False)
    svc: PlacementService = app.state.service
    await svc.start(background=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://placement"
    ) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        r = await c.get("/readyz")  # no snapshot yet: cannot place at all
        assert r.status_code == 503 and r.json()["ready"] is False
        reg.down = False
        await reg.register(make_node("e1"), clock())
        clock.advance(1)
        r = await c.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"ready": True, "degraded": False, "snapshot_age": 0.0, "nodes": 1}
        reg.down = True
        clock.advance(20)  # answers from the 20 s old snapshot
        r = await c.get("/readyz")
        assert r.status_code == 200 and r.json()["degraded"] is True
        assert r.json()["snapshot_age"] == 20.0
        clock.advance(11)  # older than snapshot_max_age (30 s)
        r = await c.get("/readyz")
        assert r.status_code == 503 and "snapshot_max_age" in r.json()["detail"]
    await svc.stop()


async def test_redis_restart_end_to_end(redis_server: RedisServer) -> None:
    # Beats long enough that a loaded machine's scheduling and I/O (the margin below)
    # are small beside them.
    hb = 0.5
    cfg = PlacementConfig(
        url="http://placement",
        operator_token="op",
        node_keys=NODE_KEYS,
        snapshot_interval=0.25,
        lease_ttl=10.0,
        liveness=LivenessConfig(
            heartbeat_interval=hb, ttl=1.5, full_stats_interval=2.0, autonomy_window=2.5
        ),
    )
    prefix = f"t{uuid.uuid4().hex[:8]}"
    registry = RedisRegistry.from_url(redis_server.url, prefix, timeout=0.3)
    app = create_app(cfg, registry)
    svc: PlacementService = app.state.service
    await svc.start(background=True)
    transport = httpx.ASGITransport(app=app)
    served: dict[str, list[str]] = {}
    agents = []
    for i in range(3):
        node = replace(make_node(f"e{i}", slots=4), state=NodeState.READY)
        served[node.id] = []
        agents.append(
            NodeAgent(
                node,
                lambda: Load(cpu=0.1),
                replace(cfg, node_token=node_credential(node.id)),
                transport=transport,
                sessions=lambda nid=node.id: served[nid],
            )
        )
    op = {"Authorization": "Bearer op"}
    try:
        for a in agents:
            await a.start()

        async def fleet_ready() -> bool:
            nodes, _ = await svc.list_nodes()
            return len([n for n in nodes if n["alive"]]) == 3

        await wait_for(fleet_ready, 5.0, "three nodes registered")
        async with httpx.AsyncClient(transport=transport, base_url="http://placement") as c:
            body = {"tenant": "school", "stream": "a", "location": {"city": "lyon"}}
            r = await c.post("/v1/sessions", json=body, headers=op)
            assert r.status_code == 201 and r.json()["degraded"] is False
            a_id, a_node = r.json()["id"], r.json()["node"]
            served[a_node].append(a_id)

            redis_server.stop()
            r = await c.post("/v1/sessions", json={**body, "stream": "b"}, headers=op)
            assert r.status_code == 201, r.text
            assert r.json()["degraded"] is True
            b_id = r.json()["id"]
            served[r.json()["node"]].append(b_id)
            r = await c.get(f"/v1/sessions/{a_id}")
            assert r.status_code == 200 and r.json()["degraded"] is True
            r = await c.get("/v1/route", params={"tenant": "school", "stream": "a", "city": "lyon"})
            assert r.status_code == 200 and r.json()["degraded"] is True

            redis_server.start()
            back = time.monotonic()

            async def reconciled() -> bool:
                if svc.degraded:
                    return False
                try:
                    nodes = await registry.nodes(time.time())
                    a = await registry.get_session(a_id, time.time())
                    b = await registry.get_session(b_id, time.time())
                except RegistryUnavailable:
                    return False
                return len(nodes) == 3 and a is not None and b is not None

            await wait_for(reconciled, 5.0, "nodes re-registered and sessions reconciled")
            took = time.monotonic() - back
            # By construction: the next beat (<= hb) learns the node is unknown, re-registers
            # after a jitter (<= hb/2), and the next snapshot refresh writes the sessions
            # back: 1.5 hb + snapshot_interval, which is two heartbeat intervals when the
            # refresh is at most half a beat (as with the defaults, 2 s and 1 s). The
            # margin covers I/O and scheduling on a loaded machine and the 20 ms poll.
            assert cfg.snapshot_interval <= hb / 2
            assert took <= 2 * hb + 0.25, took
            r = await c.get(f"/v1/sessions/{b_id}")
            assert r.status_code == 200 and r.json()["degraded"] is False
    finally:
        for a in agents:
            await a.stop()
        await svc.stop()
        await registry.close()


async def test_a_degraded_decision_replays_to_the_same_node(clock: Clock) -> None:
    """Replay uses the decision's own stretched TTL and degraded headroom."""
    reg = FlakyRegistry()
    cfg = PlacementConfig()
    svc = PlacementService(cfg, reg, clock=clock)
    await svc.start(background=False)
    await reg.register(make_node("e1", slots=4), clock())
    await svc.refresh()
    reg.down = True
    clock.advance(20)  # past the TTL: only the stretched TTL keeps e1 alive
    placed = await svc.place(PlacementRequest("s", "a", LYON))
    assert placed.degraded and placed.session.node_id == "e1"
    [entry] = [e for e in svc.recent_decisions() if e["kind"] == "publish"]
    assert entry["degraded"] and entry["headroom"] == cfg.degraded_headroom
    assert entry["ttl"] > cfg.liveness.ttl + 19
    again = svc.replay(entry)
    assert again.node is not None and again.node.id == "e1"
    # Without the recorded TTL the same snapshot judges e1 dead: nothing to replay to.
    healthy = {k: v for k, v in entry.items() if k not in ("ttl", "headroom")}
    assert svc.replay(healthy).node is None


async def test_a_node_silent_during_an_outage_gets_nothing_after_its_ttl(clock: Clock) -> None:
    """Beats keep arriving while Redis is down: silence is evidence again."""
    reg = FlakyRegistry()
    cfg = PlacementConfig()
    ttl = cfg.liveness.ttl
    svc = PlacementService(cfg, reg, clock=clock)
    await svc.start(background=False)
    # The publisher's own ISP in Lyon is the better choice as long as it lives.
    lyon = make_node("lyon-1", slots=8)
    far = make_node("far-1", isp="sfr", slots=8)
    for n in (lyon, far):
        await reg.register(n, clock())
    await svc.refresh()
    reg.down = True
    crashed_at = clock()
    # Before any beat reaches the instance nothing is known: the snapshot's word holds.
    clock.advance(ttl + 1)
    placed = await svc.place(PlacementRequest("s", "a", LYON))
    assert placed.degraded and placed.session.node_id == "lyon-1"
    # Beats arrive from the other ISP's node only; lyon-1 crashed with the outage.
    for _ in range(3):
        out = await svc.heartbeat("far-1", Load())
        assert out["degraded"]
        clock.advance(0.5)
    assert clock() - crashed_at > ttl + 1
    placed = await svc.place(PlacementRequest("s", "b", LYON))
    assert placed.degraded and placed.session.node_id == "far-1"
    nodes, _ = await svc.list_nodes()
    assert {n["id"]: n["alive"] for n in nodes} == {"far-1": True, "lyon-1": False}
    # The decision logged what it excluded, so replay gives the same answer.
    entry = next(e for e in svc.recent_decisions() if e["request"]["stream"] == "b")
    assert "lyon-1" in entry["request"]["exclude"]
    again = svc.replay(entry)
    assert again.node is not None and again.node.id == "far-1"
    # The Lyon node comes back and beats: it is eligible again at once.
    await svc.heartbeat("lyon-1", Load())
    clock.advance(0.2)
    placed = await svc.place(PlacementRequest("s", "c", LYON))
    assert placed.session.node_id == "lyon-1"


async def test_replay_of_an_evicted_snapshot_says_why(clock: Clock) -> None:
    svc = PlacementService(PlacementConfig(), InProcessRegistry(), clock=clock)
    await svc.start(background=False)
    entry = {"snapshot": "gone-1", "policy": 1, "at": 0.0, "request": {}}
    with pytest.raises(InvalidField, match="the last 16 snapshots and the last 32 older ones"):
        svc.replay(entry)


async def test_a_decision_stays_replayable_after_many_refreshes(clock: Clock) -> None:
    """The snapshot a logged decision used outlives the last 16, up to replay_snapshots."""
    reg = InProcessRegistry()
    svc = PlacementService(PlacementConfig(replay_snapshots=2), reg, clock=clock)
    await svc.start(background=False)
    await reg.register(make_node("e1", slots=8), clock())
    await reg.register(make_node("e2", slots=8, cpu=0.5), clock())
    await svc.refresh()

    async def refreshes(n: int) -> None:
        for _ in range(n):  # the fleet changes between refreshes: e1 gets busier
            clock.advance(1)
            for node_id in ("e1", "e2"):
                await reg.heartbeat(node_id, Load(cpu=0.6), clock())
            await svc.refresh()

    first = await svc.place(PlacementRequest("s", "a", LYON))
    await refreshes(3)
    second = await svc.place(PlacementRequest("s", "b", LYON))
    await refreshes(3)
    third = await svc.place(PlacementRequest("s", "c", LYON))
    await refreshes(40)
    log = {e["request"]["stream"]: e for e in svc.recent_decisions()}
    # 46 refreshes later the last two decisions' snapshots are still there.
    assert first.session.node_id == "e1"
    for placed in (second, third):
        again = svc.replay(log[placed.session.stream])
        assert again.node is not None and again.node.id == placed.session.node_id
    # Only the last two such snapshots are kept: the first decision's is gone.
    with pytest.raises(InvalidField, match="no longer retained"):
        svc.replay(log["a"])
