from __future__ import annotations

import pytest
from placementutil import make_node

from placement.liveness import is_orphaned, is_stale, pool_health, sessions_to_migrate
from placement.model import Session, Tier

NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("age", "stale", "orphaned"),
    [(5.9, False, False), (6.5, True, False), (16.5, True, True)],
)
def test_stale_then_orphaned(age: float, stale: bool, orphaned: bool) -> None:
    n = make_node("a", hb=NOW - age)
    assert is_stale(n, NOW, 6.0) is stale
    assert is_orphaned(n, NOW, 6.0, 10.0) is orphaned


@pytest.mark.parametrize(("stale", "frozen"), [(5, False), (6, True)])
def test_mass_disconnect_threshold(stale: int, frozen: bool) -> None:
    nodes = [make_node(f"n{i}", hb=NOW - (30 if i < stale else 0)) for i in range(10)]
    assert pool_health(nodes, NOW, 6.0, 0.55)["west"].frozen is frozen


def test_sessions_to_migrate_respects_freeze() -> None:
    nodes = {
        n.id: n
        for n in [
            make_node("dead", hb=NOW - 30),
            make_node("ok1"),
            make_node("ok2"),
            make_node("gone", region="east", hb=NOW - 30),
        ]
    }
    sessions = [
        Session("west~1", "t", "s1", "dead", Tier.EDGE, "west", 1, 1, 0, NOW + 30),
        Session("west~2", "t", "s2", "ok1", Tier.EDGE, "west", 1, 1, 0, NOW + 30),
        Session("east~3", "t", "s3", "gone", Tier.EDGE, "east", 1, 1, 0, NOW + 30),
    ]
    health = pool_health(nodes.values(), NOW, 6.0, 0.55)
    moved = sessions_to_migrate(sessions, nodes, health, NOW, 6.0, 10.0)
    assert [s.id for s in moved] == ["west~1"]  # east is 1/1 stale: frozen


def test_only_nodes_stale_at_once_freeze() -> None:
    """Six nodes died an hour ago, together; then one more fails on its own."""
    old = [make_node(f"old{i}", hb=NOW - 3600 - i * 0.5) for i in range(6)]
    live = [make_node(f"live{i}") for i in range(3)]
    new = make_node("new", hb=NOW - 20)
    health = pool_health([*old, *live, new], NOW, 6.0, 0.55)["west"]
    # The old burst was 6 of the 10 alive when it began; the new failure is 1 of 4.
    assert health.frozen_nodes == {n.id for n in old}
    assert (health.burst, health.burst_of, health.nodes, health.stale) == (6, 10, 10, 7)
    sessions = [
        Session("west~1", "t", "s1", "old0", Tier.EDGE, "west", 1, 1, 0, NOW + 30),
        Session("west~2", "t", "s2", "new", Tier.EDGE, "west", 1, 1, 0, NOW + 30),
    ]
    nodes = {n.id: n for n in [*old, *live, new]}
    moved = sessions_to_migrate(sessions, nodes, {"west": health}, NOW, 6.0, 10.0)
    assert [s.id for s in moved] == ["west~2"]


def test_failures_spread_over_time_do_not_freeze() -> None:
    """Six of ten nodes fail one by one, a minute apart: dead nodes, not a partition."""
    nodes = [make_node(f"n{i}", hb=NOW - 20 - 60 * i if i < 6 else NOW) for i in range(10)]
    health = pool_health(nodes, NOW, 6.0, 0.55)["west"]
    assert health.stale == 6 and not health.frozen
    # The same six failing within one TTL of each other do freeze.
    nodes = [make_node(f"n{i}", hb=NOW - 20 - i if i < 6 else NOW) for i in range(10)]
    assert pool_health(nodes, NOW, 6.0, 0.55)["west"].frozen_nodes == {f"n{i}" for i in range(6)}
