"""Reservations this instance made, counted on top of the snapshot until one holds them."""

from __future__ import annotations

from placement.model import Session, Tier
from placement.registry.memory import InProcessRegistry
from placement.sessions import LocalSessions


def reservation(sid: str, node: str) -> Session:
    return Session(sid, "school", sid, node, Tier.EDGE, "p", 1, 3.0, 0.0, 60.0)


def test_a_reservation_made_while_a_refresh_reads_the_registry_stays_counted() -> None:
    """The race the fleet scenario hit: a refresh starts reading, a placement reserves on
    edge-2, the refresh installs a snapshot read before that reservation. Clearing every
    counted reservation then showed edge-2 free, and the next placement tried it again."""
    local = LocalSessions(InProcessRegistry())
    local.use(reservation("a", "edge-1"))
    mark = local.mark()  # the refresh starts reading
    local.use(reservation("b", "edge-2"))  # placed meanwhile
    local.new_snapshot(mark)
    assert local.usage == {"edge-2": (1, 3.0)}
    # The next refresh began after it: its snapshot holds it.
    local.new_snapshot(local.mark())
    assert local.usage == {}


def test_a_snapshot_without_a_mark_holds_every_reservation() -> None:
    local = LocalSessions(InProcessRegistry())
    local.use(reservation("a", "edge-1"))
    local.use(reservation("b", "edge-1"))
    assert local.usage == {"edge-1": (2, 6.0)}
    local.new_snapshot()
    assert local.usage == {}
