"""Metric values, not only names: fallbacks by reason, nodes by tier and state, timings."""

from __future__ import annotations

import pytest
from placementutil import Clock, make_node

from placement.errors import NoCapacity
from placement.model import Load, Location, NodeState, PlacementRequest
from placement.service import NODE_COUNT_INTERVAL, PlacementService

LYON = Location("lyon", "orange", "west", 45.76, 4.84)
TIERS = ("edge", "mec", "cloud")
STATES = ("ready", "draining", "cordoned", "stale")


def sample(svc: PlacementService, name: str, **labels: str) -> float:
    value = svc.metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def fallbacks(svc: PlacementService) -> dict[str, float]:
    reasons = ("edge_unavailable", "mec_unavailable", "no_capacity", "reservation_conflict")
    return {r: sample(svc, "placement_fallbacks_total", reason=r) for r in reasons}


def nodes(svc: PlacementService) -> dict[tuple[str, str], float]:
    counts = {
        (t, s): sample(svc, "placement_nodes", tier=t, state=s) for t in TIERS for s in STATES
    }
    return {k: v for k, v in counts.items() if v}


async def test_fallbacks_count_each_step_passed_over(
    service: PlacementService, clock: Clock
) -> None:
    for n in (make_node("e1", cpu=0.9), make_node("m1", "mec", city="west-metro")):
        await service.registry.register(n, clock())
    await service.refresh()
    placed = await service.place(PlacementRequest("school", "a", LYON))
    assert placed.session.tier.value == "mec"
    assert fallbacks(service) == {
        "edge_unavailable": 1,
        "mec_unavailable": 0,
        "no_capacity": 0,
        "reservation_conflict": 0,
    }
    # The MEC node fills up: the next session falls past both the edge and the MEC.
    await service.set_state("m1", NodeState.CORDONED)
    await service.registry.register(make_node("c1", "cloud", region="cloud-eu"), clock())
    await service.refresh()
    placed = await service.place(PlacementRequest("school", "b", LYON))
    assert placed.session.tier.value == "cloud"
    assert fallbacks(service) == {
        "edge_unavailable": 2,
        "mec_unavailable": 1,
        "no_capacity": 0,
        "reservation_conflict": 0,
    }
    await service.set_state("c1", NodeState.DRAINING)
    with pytest.raises(NoCapacity):
        await service.place(PlacementRequest("school", "c", LYON))
    assert fallbacks(service)["no_capacity"] == 1
    assert sample(service, "placement_decisions_total", tier="mec", outcome="placed") == 1
    assert sample(service, "placement_decisions_total", tier="cloud", outcome="placed") == 1
    assert sample(service, "placement_decisions_total", tier="none", outcome="rejected") == 1


async def test_nodes_by_tier_and_state(service: PlacementService, clock: Clock) -> None:
    fleet = [
        make_node("e1"),
        make_node("e2"),
        make_node("e3"),
        make_node("e4"),
        make_node("e5"),
        make_node("m1", "mec", city="west-metro"),
        make_node("c1", "cloud", region="cloud-eu"),
    ]
    for n in fleet:
        await service.registry.register(n, clock())
    await service.refresh()
    # Counting walks the whole fleet: incremental refreshes recount at most every
    # NODE_COUNT_INTERVAL seconds (the start-up refresh counted the empty fleet).
    assert nodes(service) == {}
    clock.advance(NODE_COUNT_INTERVAL)
    await service.refresh()
    assert nodes(service) == {("edge", "ready"): 5, ("mec", "ready"): 1, ("cloud", "ready"): 1}
    await service.set_state("e2", NodeState.DRAINING)
    await service.set_state("e3", NodeState.CORDONED)
    await service.set_state("m1", NodeState.DRAINING)
    assert nodes(service)[("edge", "ready")] == 5  # not recounted yet
    # e5 and c1 stop beating; the others beat past the TTL and the recount interval.
    clock.advance(max(service.ttl, NODE_COUNT_INTERVAL) + 1)
    for n in fleet:
        if n.id not in ("e5", "c1"):
            assert await service.registry.heartbeat(n.id, Load(), clock())
    await service.refresh()
    assert nodes(service) == {
        ("edge", "ready"): 2,
        ("edge", "draining"): 1,
        ("edge", "cordoned"): 1,
        ("edge", "stale"): 1,
        ("mec", "draining"): 1,
        ("cloud", "stale"): 1,
    }


async def test_decision_seconds_observes_every_place_and_route(
    service: PlacementService, clock: Clock
) -> None:
    await service.registry.register(make_node("e1", slots=2), clock())
    await service.refresh()
    for i in range(2):
        await service.place(PlacementRequest("school", f"c{i}", LYON))
    with pytest.raises(NoCapacity):  # rejected decisions are timed too
        await service.place(PlacementRequest("school", "c9", LYON))
    for _ in range(3):
        await service.route("school", "c0", LYON)
    assert sample(service, "placement_decision_seconds_count") == 6
    assert sample(service, "placement_decision_seconds_sum") > 0
    assert sample(service, "placement_decision_seconds_bucket", le="+Inf") == 6
