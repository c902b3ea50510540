from __future__ import annotations

import pytest
from placementutil import make_node

from placement.errors import InvalidField
from placement.model import FleetSnapshot, Node, Session, Tier, session_pool


def test_node_round_trip() -> None:
    n = make_node("e1", labels={"tenants": "school"}, streams=frozenset({"school/a"}))
    assert Node.from_dict(n.to_dict()) == n


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("tier", "fog", "tier"),
        ("lat", 123.0, "lat"),
        ("id", "", "id"),
        ("region", "a{b}", "region"),
    ],
)
def test_node_from_dict_names_the_field(field: str, value: object, named: str) -> None:
    d = make_node("e1").to_dict()
    d[field] = value
    with pytest.raises(InvalidField) as exc:
        Node.from_dict(d, prefix="node.")
    assert exc.value.field == f"node.{named}"


def test_capacity_negative_named() -> None:
    d = make_node("e1").to_dict()
    d["capacity"]["slots"] = -1
    with pytest.raises(InvalidField, match="capacity.slots"):
        Node.from_dict(d)


def test_session_round_trip_and_pool() -> None:
    s = Session("west~abc", "t", "s", "e1", Tier.EDGE, "west", 1, 8.0, 1.0, 31.0)
    assert Session.from_dict(s.to_dict()) == s
    assert session_pool(s.id) == "west"
    with pytest.raises(InvalidField):
        session_pool("nope")


def test_snapshot_indexes() -> None:
    nodes = [
        make_node("e1"),
        make_node("e2", city="paris", lat=48.85, lon=2.35, region="north"),
        make_node("m1", "mec", city="west-metro"),
        make_node("c1", "cloud", region="cloud-eu", city="cloud"),
    ]
    snap = FleetSnapshot.build(nodes, "s1", 0.0)
    assert [n.id for n in snap.by_tier_city[(Tier.EDGE, "lyon")]] == ["e1"]
    assert [n.id for n in snap.by_tier_region[(Tier.MEC, "west")]] == ["m1"]
    assert snap.city_region["paris"] == "north"
    assert snap.city_centroid["lyon"] == pytest.approx((45.76, 4.84))
