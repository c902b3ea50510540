"""Re-placing the sessions of dead nodes, the reconcile step of each background tick.

A node past its TTL plus the autonomy window has its sessions moved to the next
best node. Nodes that went stale at once with more than the mass-disconnect
threshold of their pool keep theirs (see ``placement.liveness``); the pools and
nodes so frozen are kept here for the node listing.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from placement import core
from placement.config import PlacementConfig
from placement.degraded import DegradedMode
from placement.errors import RegistryUnavailable, UnknownNode
from placement.liveness import is_orphaned, pool_health, sessions_to_migrate
from placement.metrics import PlacementMetrics
from placement.model import FleetSnapshot, Location, PlacementRequest, Session
from placement.policy_versions import PolicyVersions
from placement.registry import Registry
from placement.sessions import LocalSessions

log = logging.getLogger(__name__)


class Migrations:
    def __init__(
        self,
        config: PlacementConfig,
        registry: Registry,
        metrics: PlacementMetrics,
        *,
        policies: PolicyVersions,
        sessions: LocalSessions,
        degradation: DegradedMode,
        max_tries: int,
    ) -> None:
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.policies = policies
        self.sessions = sessions
        self.degradation = degradation
        self.max_tries = max_tries
        self.frozen_pools: set[str] = set()
        self.frozen_nodes: frozenset[str] = frozenset()

    async def reconcile(self, snap: FleetSnapshot, now: float) -> list[tuple[Session, str]]:
        """Move the sessions of orphaned nodes on ``snap``; (moved session, old node) each."""
        lv = self.config.liveness
        health = pool_health(snap.nodes.values(), now, lv.ttl, lv.mass_disconnect_threshold)
        frozen = {p for p, h in health.items() if h.frozen}
        for p in frozen - self.frozen_pools:
            h = health[p]
            log.warning(
                "[pool %s] %d/%d nodes stale at once: their migrations frozen"
                " (mass-disconnect guard)",
                p,
                h.burst,
                h.burst_of,
            )
            self.metrics.fallbacks.labels("mass_disconnect").inc()
        for p in self.frozen_pools - frozen:
            log.info("[pool %s] migrations unfrozen", p)
        self.frozen_pools = frozen
        self.frozen_nodes = frozenset().union(*(h.frozen_nodes for h in health.values()))
        orphaned = [
            n
            for n in snap.nodes.values()
            if is_orphaned(n, now, lv.ttl, lv.autonomy_window) and n.id not in self.frozen_nodes
        ]
        if not orphaned:
            return []
        try:
            sessions = await self.registry.sessions(now)
        except RegistryUnavailable:
            self.degradation.set(True, now)
            return []
        moved: list[tuple[Session, str]] = []
        for s in sessions_to_migrate(sessions, snap.nodes, health, now, lv.ttl, lv.autonomy_window):
            old = snap.nodes[s.node_id]
            # From the publisher's own location; the dead node's only for a session
            # stored before sessions recorded it.
            where = s.location or Location(
                city=old.city, isp=old.isp, region=old.region, lat=old.lat, lon=old.lon
            )
            req = PlacementRequest(
                s.tenant,
                s.stream,
                where,
                slots=s.slots,
                egress_mbps=s.egress_mbps,
                exclude=frozenset({old.id}),
            )
            d = core.decide(snap, req, self.policies.active, now, ttl=lv.ttl)
            for cand in d.ranked[: self.max_tries]:
                node = snap.nodes[cand.node_id]
                target = replace(
                    s,
                    node_id=node.id,
                    tier=node.tier,
                    pool=node.pool,
                    lease_expires=now + self.config.lease_ttl,
                )
                try:
                    if await self.registry.move(s, target, now):
                        log.info("[session %s] migrated %s -> %s", s.id, old.id, node.id)
                        self.sessions.remember(target)
                        moved.append((target, old.id))
                        break
                except UnknownNode:
                    continue
            else:
                log.warning("[session %s] node %s orphaned, no node to migrate to", s.id, old.id)
        return moved
