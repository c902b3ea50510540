"""One behaviour, two backends: every test here runs on the in-process and Redis registries."""

from __future__ import annotations

from dataclasses import replace

import pytest
from placementutil import make_node

from placement.errors import UnknownNode
from placement.model import Load, NodeState, Session, SessionState, Tier
from placement.registry import Registry

NOW = 1_000_000.0


def session(
    sid: str,
    node: str = "e1",
    *,
    pool: str = "west",
    slots: int = 1,
    egress: float = 10.0,
    lease: float = 30.0,
    stream: str | None = None,
) -> Session:
    return Session(
        f"{pool}~{sid}",
        "school",
        stream or sid,
        node,
        Tier.EDGE,
        pool,
        slots,
        egress,
        NOW,
        NOW + lease,
    )


async def test_register_heartbeat_and_list(registry: Registry) -> None:
    await registry.register(make_node("e1", streams=frozenset({"a/b"})), NOW)
    assert await registry.heartbeat("e1", Load(cpu=0.5, transcodes=1), NOW + 2)
    assert not await registry.heartbeat("ghost", Load(), NOW)
    [n] = await registry.nodes(NOW + 2)
    assert (n.id, n.load.cpu, n.last_heartbeat, n.streams) == (
        "e1",
        0.5,
        NOW + 2,
        frozenset({"a/b"}),
    )


async def test_set_state_survives_reregistration(registry: Registry) -> None:
    await registry.register(make_node("e1"), NOW)
    node = await registry.set_state("e1", NodeState.CORDONED)
    assert node.state is NodeState.CORDONED
    await registry.register(make_node("e1"), NOW + 1)
    [n] = await registry.nodes(NOW + 1)
    assert n.state is NodeState.CORDONED
    with pytest.raises(UnknownNode):
        await registry.set_state("ghost", NodeState.READY)


async def test_reserve_respects_capacity(registry: Registry) -> None:
    await registry.register(make_node("e1", slots=2, egress=25.0), NOW)
    assert await registry.reserve(session("a"), NOW)
    assert await registry.reserve(session("b"), NOW)
    assert not await registry.reserve(session("c"), NOW)  # slots
    assert await registry.reserve(session("a"), NOW)  # idempotent retry
    [n] = await registry.nodes(NOW)
    assert (n.reserved_slots, n.reserved_egress_mbps) == (2, 20.0)
    released = await registry.release("west~a", NOW)
    assert released is not None and released.stream == "a"
    assert await registry.release("west~a", NOW) is None
    assert not await registry.reserve(session("d", egress=20.0), NOW)  # egress
    assert await registry.reserve(session("d", egress=5.0), NOW)


async def test_reserve_edge_cases(registry: Registry) -> None:
    await registry.register(make_node("e1", slots=1), NOW)
    with pytest.raises(UnknownNode):
        await registry.reserve(session("a", node="ghost"), NOW)
    await registry.set_state("e1", NodeState.DRAINING)
    assert not await registry.reserve(session("a"), NOW)
    assert await registry.reserve(session("a"), NOW, force=True)
    assert await registry.reserve(session("b"), NOW, force=True)  # forced past capacity
    [n] = await registry.nodes(NOW)
    assert n.reserved_slots == 2
    await registry.set_state("e1", NodeState.READY)
    assert not await registry.reserve(session("c"), NOW, headroom=0.5)


async def test_lease_expiry_returns_capacity(registry: Registry) -> None:
    await registry.register(make_node("e1", slots=1), NOW)
    assert await registry.reserve(session("a", lease=5.0), NOW)
    assert (await registry.get_session("west~a", NOW + 4)) is not None
    assert await registry.get_session("west~a", NOW + 6) is None
    assert await registry.reserve(session("b"), NOW + 6)
    [n] = await registry.nodes(NOW + 6)
    assert n.reserved_slots == 1


async def test_renew_extends_and_reports_missing(registry: Registry) -> None:
    await registry.register(make_node("e1"), NOW)
    assert await registry.reserve(session("a", lease=5.0), NOW)
    missing = await registry.renew("e1", ["west~a", "west~zzz"], NOW + 4, 5.0)
    assert missing == ["west~zzz"]
    s = await registry.get_session("west~a", NOW + 8)
    assert s is not None and s.state is SessionState.LIVE and s.lease_expires == NOW + 9


async def test_stream_index_and_sessions(registry: Registry) -> None:
    await registry.register(make_node("e1"), NOW)
    assert await registry.reserve(session("a", stream="class1"), NOW)
    s = await registry.stream_session("school", "class1", NOW)
    assert s is not None and s.id == "west~a"
    assert [x.id for x in await registry.sessions(NOW)] == ["west~a"]
    await registry.release("west~a", NOW)
    assert await registry.stream_session("school", "class1", NOW) is None


async def test_move_across_pools(registry: Registry) -> None:
    await registry.register(make_node("e1", slots=1), NOW)
    await registry.register(make_node("e2", region="east", slots=1), NOW)
    s = session("a")
    assert await registry.reserve(s, NOW)
    target = replace(s, node_id="e2", pool="east")
    assert await registry.move(s, target, NOW)
    got = await registry.get_session("west~a", NOW)
    assert got is not None and got.node_id == "e2"
    nodes = {n.id: n for n in await registry.nodes(NOW)}
    assert (nodes["e1"].reserved_slots, nodes["e2"].reserved_slots) == (0, 1)
    assert await registry.renew("e2", ["west~a"], NOW, 30.0) == []
    assert await registry.release("west~a", NOW) is not None
    assert await registry.get_session("west~a", NOW) is None


async def test_policies_and_decision_log(registry: Registry) -> None:
    assert await registry.active_policy_version() is None
    await registry.store_policy(1, "version: 1\n", activate=True)
    await registry.store_policy(2, "version: 2\n", activate=False)
    assert await registry.active_policy_version() == 1
    assert await registry.policies() == {1: "version: 1\n", 2: "version: 2\n"}
    await registry.log_decisions([{"n": i} for i in range(5)], keep=3)
    assert await registry.recent_decisions(10) == [{"n": 4}, {"n": 3}, {"n": 2}]
    await registry.ping()


async def test_journals_are_capped_and_apart(registry: Registry) -> None:
    assert await registry.journal("audit", 10) == []
    await registry.append_journal("audit", [{"n": i} for i in range(3)], keep=4)
    await registry.append_journal("audit", [{"n": 3}, {"n": 4}], keep=4)
    await registry.append_journal("policy", [{"v": 1}], keep=4)
    assert await registry.journal("audit", 10) == [{"n": 4}, {"n": 3}, {"n": 2}, {"n": 1}]
    assert await registry.journal("audit", 2) == [{"n": 4}, {"n": 3}]
    assert await registry.journal("policy", 10) == [{"v": 1}]
