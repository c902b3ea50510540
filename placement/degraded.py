"""Degraded mode: whether the registry answers, and how the fleet is judged when not.

While the registry is unreachable the service answers from its last snapshot
(at most ``snapshot_max_age`` old), judges liveness as of the moment that
snapshot was taken, and, once nodes' beats reach this instance, gives no new
session to a node silent here for a TTL.
"""

from __future__ import annotations

import logging

from prometheus_client import Gauge

from placement.errors import SnapshotTooOld
from placement.model import FleetSnapshot

log = logging.getLogger(__name__)


class DegradedMode:
    def __init__(self, ttl: float, max_age: float, gauge: Gauge) -> None:
        self.ttl = ttl
        self.max_age = max_age
        self._gauge = gauge
        self.on = False
        self.since: float | None = None
        # Beats that reached this instance since its last good refresh (node -> when),
        # and how many came while degraded: see ``silent``.
        self._beats: dict[str, float] = {}
        self._degraded_beats = 0
        self._silent_cache: tuple[str, int, frozenset[str]] | None = None

    def set(self, on: bool, now: float) -> None:
        if on == self.on:
            return
        self.on = on
        self.since = now if on else None
        self._degraded_beats = 0
        self._silent_cache = None
        self._gauge.set(1 if on else 0)
        if on:
            log.warning("registry unreachable: answering from the last snapshot (degraded)")
        else:
            log.info("registry reachable again: leaving degraded mode")

    def beat(self, node_id: str, now: float) -> None:
        """A node's beat reached this instance."""
        self._beats[node_id] = now

    def beat_kept_here(self) -> None:
        """A beat that could not be passed on to the registry."""
        self._degraded_beats += 1

    def forget_beats(self) -> None:
        """The registry answered a refresh: it holds the beats now."""
        self._beats.clear()

    def usable(self, snap: FleetSnapshot | None, now: float) -> FleetSnapshot:
        if snap is None or now - snap.taken_at > self.max_age:
            raise SnapshotTooOld(
                "registry unreachable and no snapshot younger than "
                f"{self.max_age:g} s ('snapshot_max_age')"
            )
        return snap

    def silent(self, snap: FleetSnapshot, now: float) -> frozenset[str]:
        """While degraded: nodes that have not beaten here for a TTL, once beats arrive.

        With the registry down, beats cannot reach the snapshot, so liveness is judged
        as of the moment the snapshot was taken (``ttl_for``). But once nodes' beats
        reach this instance, silence is evidence again: a node quiet for a TTL gets no
        new session, as when the registry is up. A node whose beats go to another
        instance looks silent here too, which errs on the safe side, as degraded
        placement should. Recomputed at most every 0.1 s.
        """
        if not self.on or self._degraded_beats == 0:
            return frozenset()
        tick = int(now * 10)
        cached = self._silent_cache
        if cached is not None and cached[0] == snap.id and cached[1] == tick:
            return cached[2]
        cutoff, beats = now - self.ttl, self._beats
        silent = frozenset(
            n.id
            for n in snap.nodes.values()
            if max(n.last_heartbeat, beats.get(n.id, n.last_heartbeat)) < cutoff
        )
        self._silent_cache = (snap.id, tick, silent)
        return silent

    def ttl_for(self, snap: FleetSnapshot, now: float) -> float:
        # In degraded mode heartbeats cannot reach the snapshot; judge liveness as of
        # the moment it was taken rather than declaring the whole fleet dead.
        return self.ttl + (now - snap.taken_at if self.on else 0.0)
