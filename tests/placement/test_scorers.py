from __future__ import annotations

import pytest
from placementutil import make_node

from placement import scorers
from placement.core import resolve_context
from placement.filters import Context
from placement.model import FleetSnapshot, Load, Location
from placement.policy import DEFAULT_POLICY

NOW = 1_000_000.0


def ctx(stream: str = "class1") -> Context:
    snap = FleetSnapshot.build([make_node("x")], "s", NOW)
    return resolve_context(
        snap,
        "school",
        stream,
        Location("lyon", "orange", "west"),
        DEFAULT_POLICY,
        NOW,
        ttl=6.0,
        headroom=1.0,
        viewer=False,
    )


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (make_node("a"), 1.0),
        (make_node("a", isp="free"), 0.8),
        (make_node("a", city="grenoble"), 0.6),
        (make_node("a", city="paris", region="north"), 0.3),
        (make_node("a", "mec"), 0.4),
        (make_node("a", "mec", region="north"), 0.2),
        (make_node("a", "cloud"), 0.1),
        (make_node("a", "cloud", region="cloud-eu"), 0.0),
    ],
)
def test_locality_order(node: object, expected: float) -> None:
    assert scorers.locality(node, ctx()) == expected  # type: ignore[arg-type]


def test_load_uses_busiest_resource() -> None:
    from dataclasses import replace

    n = replace(make_node("a", slots=4), load=Load(cpu=0.2, transcodes=3))
    assert scorers.load(n, ctx()) == pytest.approx(0.25)


def test_cost_prefers_cheap_tiers() -> None:
    c = ctx()
    assert scorers.cost(make_node("a"), c) > scorers.cost(make_node("b", "mec"), c)
    assert scorers.cost(make_node("c", "cloud"), c) == 0.0


def test_latency_prefers_near() -> None:
    c = ctx()
    near = scorers.latency(make_node("a"), c)
    far = scorers.latency(make_node("b", lat=48.85, lon=2.35, city="paris"), c)
    assert 0 <= far < near <= 1


def test_affinity() -> None:
    c = ctx()
    assert scorers.affinity(make_node("a", streams=frozenset({"school/class1"})), c) == 1.0
    assert scorers.affinity(make_node("a"), c) == 0.0
