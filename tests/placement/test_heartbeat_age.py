"""placement_node_heartbeat_age_seconds{node,tier}: each node's heartbeat age, read at
scrape time from the service's last fleet snapshot."""

from __future__ import annotations

from placementutil import Clock, make_node

from placement.metrics import HEARTBEAT_AGE, PlacementMetrics
from placement.model import Load
from placement.service import PlacementService


def ages(svc: PlacementService) -> dict[tuple[str, str], float]:
    return {
        (s.labels["node"], s.labels["tier"]): s.value
        for family in svc.metrics.registry.collect()
        if family.name == HEARTBEAT_AGE
        for s in family.samples
    }


def test_no_series_without_a_service() -> None:
    m = PlacementMetrics()
    assert [f.samples for f in m.registry.collect() if f.name == HEARTBEAT_AGE] == [[]]


async def test_age_is_scrape_time_less_last_heartbeat_of_the_snapshot(
    service: PlacementService, clock: Clock
) -> None:
    assert ages(service) == {}
    await service.registry.register(make_node("e1", hb=clock()), clock())
    await service.registry.register(make_node("m1", "mec", hb=clock()), clock())
    await service.refresh()
    clock.advance(3.5)
    # Read at scrape time: the clock moved, the snapshot did not.
    assert ages(service) == {("e1", "edge"): 3.5, ("m1", "mec"): 3.5}
    assert await service.registry.heartbeat("e1", Load(cpu=0.1), clock())
    await service.refresh()
    clock.advance(0.5)
    assert ages(service) == {("e1", "edge"): 0.5, ("m1", "mec"): 4.0}
    # A node that leaves the registry leaves the metric with the next snapshot.
    assert await service.registry.remove("m1")
    await service.refresh()
    assert ages(service) == {("e1", "edge"): 0.5}
