from __future__ import annotations

import pytest
from placementutil import make_node

from placement.core import decide, route
from placement.model import FleetSnapshot, Location, Node, NodeState, PlacementRequest
from placement.policy import parse_policy

NOW = 1_000_000.0
LYON = Location("lyon", "orange", "west", 45.76, 4.84)


def fleet(*extra: Node) -> FleetSnapshot:
    nodes = [
        make_node("e-orange", isp="orange"),
        make_node("e-free", isp="free"),
        make_node("e-paris", city="paris", region="north", lat=48.85, lon=2.35),
        make_node("m-west", "mec", city="west-metro", lat=45.5, lon=4.9),
        make_node("c-eu", "cloud", region="cloud-eu", city="cloud", lat=50.1, lon=8.7),
        *extra,
    ]
    return FleetSnapshot.build(nodes, "snap-1", NOW)


def place(
    snap: FleetSnapshot, policy: dict[str, object] | None = None, loc: Location = LYON
) -> object:
    return decide(
        snap, PlacementRequest("school", "class1", loc), parse_policy(policy or {}), NOW, ttl=6.0
    )


def test_local_edge_same_isp_wins() -> None:
    d = place(fleet())
    assert d.node.id == "e-orange" and d.step == "edge"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("broken", "step", "node"),
    [
        ({"e-orange", "e-free"}, "mec", "m-west"),
        ({"e-orange", "e-free", "m-west"}, "cloud", "c-eu"),
    ],
)
def test_fallback_order(broken: set[str], step: str, node: str) -> None:
    snap = fleet()
    nodes = [
        make_node(
            n.id,
            n.tier.value,
            region=n.region,
            city=n.city,
            isp=n.isp,
            lat=n.lat,
            lon=n.lon,
            cpu=0.95 if n.id in broken else 0.1,
        )
        for n in snap.nodes.values()
    ]
    d = place(FleetSnapshot.build(nodes, "s2", NOW))
    assert (d.step, d.node.id) == (step, node)  # type: ignore[attr-defined]
    ex = d.explain()  # type: ignore[attr-defined]
    assert ex["fallback"][0]["summary"] == "0/2 nodes available: 2 cpu>0.7"
    assert "local edge: 0/2 nodes available: 2 cpu>0.7" in ex["reason"]


def test_no_capacity_explains_every_step() -> None:
    snap = FleetSnapshot.build(
        [
            make_node("e1", cpu=0.9),
            make_node("e2", isp="free"),
            make_node("c1", "cloud", region="x", slots=0),
        ],
        "s",
        NOW,
    )
    d = place(snap, {"filters": {"same_isp": True}})
    assert d.node is None  # type: ignore[attr-defined]
    steps = {s["step"]: s["summary"] for s in d.explain()["fallback"]}  # type: ignore[attr-defined]
    assert steps["edge"] == "0/2 nodes available: 1 cpu>0.7, 1 wrong ISP"
    assert steps["mec"] == "no mec nodes in region west"
    assert steps["cloud"] == "0/1 nodes available: 1 no transcode slots"


def test_explanation_has_top_k_scores_policy_and_snapshot() -> None:
    ex = place(fleet(), {"top_k": 2, "fallback": ["cloud", "edge"], "version": 4}).explain()  # type: ignore[attr-defined]
    assert ex["policy"] == "default@4" and ex["snapshot"] == "snap-1"
    assert ex["step"] == "cloud" and len(ex["candidates"]) == 1
    ex = place(fleet(), {"top_k": 2}).explain()  # type: ignore[attr-defined]
    assert [c["node"] for c in ex["candidates"]] == ["e-orange", "e-free"]
    assert set(ex["candidates"][0]["scores"]) == {"locality", "load", "cost", "latency", "affinity"}


def test_unknown_location_skips_local_steps() -> None:
    d = place(fleet(), loc=Location())
    assert d.step == "cloud"  # type: ignore[attr-defined]
    assert "publisher city unknown" in d.reason  # type: ignore[attr-defined]


def test_city_hint_uses_centroid_for_rtt() -> None:
    d = place(fleet(), loc=Location(city="lyon"))
    assert d.node.city == "lyon"  # type: ignore[attr-defined]


def test_replay_is_deterministic() -> None:
    nodes = [
        make_node(f"e{i:03d}", isp=["orange", "free"][i % 2], cpu=(i % 7) / 10) for i in range(200)
    ]
    snap = FleetSnapshot.build(nodes, "big", NOW)
    a = decide(snap, PlacementRequest("school", "x", LYON), parse_policy({}), NOW, ttl=6.0)
    b = decide(
        FleetSnapshot.build(list(reversed(nodes)), "big", NOW),
        PlacementRequest("school", "x", LYON),
        parse_policy({}),
        NOW,
        ttl=6.0,
    )
    assert a.explain() == b.explain()


def test_scan_stops_after_min_feasible() -> None:
    nodes = [make_node(f"e{i:04d}") for i in range(1000)]
    snap = FleetSnapshot.build(nodes, "big", NOW)
    d = place(snap, {"min_feasible": 10})
    assert d.steps[0].considered == 10 and len(d.ranked) == 10  # type: ignore[attr-defined]


def test_exclude() -> None:
    d = decide(
        fleet(),
        PlacementRequest("school", "c", LYON, exclude=frozenset({"e-orange"})),
        parse_policy({}),
        NOW,
        ttl=6.0,
    )
    assert d.node.id == "e-free"  # type: ignore[union-attr]


def test_route_picks_nearest_holder() -> None:
    key = frozenset({"school/class1"})
    snap = fleet(
        make_node("relay-paris", city="paris", region="north", lat=48.85, lon=2.35, streams=key),
    )
    paris = Location("paris", "sfr", "north", 48.85, 2.35)
    d = route(snap, "school", "class1", paris, parse_policy({}), NOW, ttl=6.0, origin_id="e-orange")
    assert d.node.id == "relay-paris" and d.step == "viewer"  # type: ignore[union-attr]
    d = route(snap, "school", "class1", LYON, parse_policy({}), NOW, ttl=6.0, origin_id="e-orange")
    assert d.node.id == "e-orange"  # type: ignore[union-attr]


def test_route_when_every_holder_is_cordoned() -> None:
    snap = FleetSnapshot.build([make_node("e1", state=NodeState.CORDONED)], "s", NOW)
    d = route(snap, "school", "class1", LYON, parse_policy({}), NOW, ttl=6.0, origin_id="e1")
    assert d.node is None and "1 cordoned" in d.reason
