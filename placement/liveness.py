"""Two-speed liveness, node autonomy and the mass-disconnect guard (pure functions).

A node that misses its TTL stops receiving new placements at once (the
``healthy`` filter), but its sessions are only re-placed after the autonomy
window: like OpenYurt's node autonomy, a node cut off from the control plane
usually still serves its viewers. If more than the threshold of a pool goes
stale together, the control plane (or the network to it) is the likelier
fault, so migrations freeze instead of stampeding the rest of the fleet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from placement.model import Node, Session


@dataclass(frozen=True, slots=True)
class PoolHealth:
    pool: str
    nodes: int
    stale: int
    frozen: bool

    @property
    def stale_fraction(self) -> float:
        return self.stale / self.nodes if self.nodes else 0.0


def is_stale(node: Node, now: float, ttl: float) -> bool:
    return now - node.last_heartbeat > ttl


def is_orphaned(node: Node, now: float, ttl: float, autonomy: float) -> bool:
    """Stale for longer than the autonomy window: its sessions may move."""
    return now - node.last_heartbeat > ttl + autonomy


def pool_health(
    nodes: Iterable[Node], now: float, ttl: float, threshold: float
) -> dict[str, PoolHealth]:
    totals: dict[str, list[int]] = {}
    for n in nodes:
        acc = totals.setdefault(n.pool, [0, 0])
        acc[0] += 1
        acc[1] += is_stale(n, now, ttl)
    return {
        pool: PoolHealth(pool, total, stale, total > 0 and stale / total > threshold)
        for pool, (total, stale) in totals.items()
    }


def sessions_to_migrate(
    sessions: Iterable[Session],
    nodes: Mapping[str, Node],
    health: Mapping[str, PoolHealth],
    now: float,
    ttl: float,
    autonomy: float,
) -> list[Session]:
    """Sessions whose node is orphaned, in pools that are not frozen."""
    out: list[Session] = []
    for s in sessions:
        node = nodes.get(s.node_id)
        if node is None:
            continue
        ph = health.get(node.pool)
        if ph is not None and ph.frozen:
            continue
        if is_orphaned(node, now, ttl, autonomy):
            out.append(s)
    return sorted(out, key=lambda s: s.id)
