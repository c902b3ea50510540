"""Two-speed liveness, node autonomy and the mass-disconnect guard (pure functions).

A node that misses its TTL stops receiving new placements at once (the
``healthy`` filter), but its sessions are only re-placed after the autonomy
window: like OpenYurt's node autonomy, a node cut off from the control plane
usually still serves its viewers. If more than the threshold of a pool goes
stale together, the control plane (or the network to it) is the likelier
fault, so the sessions of those nodes stay put instead of stampeding the rest
of the fleet. Only nodes that went stale *together* count: nodes long dead do
not freeze a later, lone failure.
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
    # Nodes that went stale together with more than the threshold of the pool:
    # their sessions stay put. The largest such burst, and the pool it was taken
    # from (the nodes not already stale when it began), for the log.
    frozen_nodes: frozenset[str] = frozenset()
    burst: int = 0
    burst_of: int = 0

    @property
    def frozen(self) -> bool:
        return bool(self.frozen_nodes)

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
    """Per pool, which stale nodes went stale *at once* with too much of the pool.

    A burst is a set of nodes whose last heartbeats lie within one TTL of each
    other, measured against the nodes that were still
    alive when it began. Nodes that died long before are in neither count, so a
    pool with old dead nodes does not freeze when one more fails; and a node that
    fails on its own, after a burst, is migrated even though the burst stays frozen.
    """
    live: dict[str, int] = {}
    stale: dict[str, list[Node]] = {}
    for n in nodes:
        if is_stale(n, now, ttl):
            stale.setdefault(n.pool, []).append(n)
        else:
            live[n.pool] = live.get(n.pool, 0) + 1
    out: dict[str, PoolHealth] = {}
    for pool in live.keys() | stale.keys():
        gone = sorted(stale.get(pool, ()), key=lambda n: n.last_heartbeat)
        alive = live.get(pool, 0)
        frozen: set[str] = set()
        burst = burst_of = 0
        first = 0
        for last, node in enumerate(gone):
            while gone[first].last_heartbeat < node.last_heartbeat - ttl:
                first += 1
            size, of = last - first + 1, alive + len(gone) - first
            if size / of > threshold:
                frozen.update(n.id for n in gone[first : last + 1])
                if size > burst:
                    burst, burst_of = size, of
        out[pool] = PoolHealth(
            pool, alive + len(gone), len(gone), frozenset(frozen), burst, burst_of
        )
    return out


def sessions_to_migrate(
    sessions: Iterable[Session],
    nodes: Mapping[str, Node],
    health: Mapping[str, PoolHealth],
    now: float,
    ttl: float,
    autonomy: float,
) -> list[Session]:
    """Sessions whose node is orphaned and not part of a frozen burst."""
    out: list[Session] = []
    for s in sessions:
        node = nodes.get(s.node_id)
        if node is None:
            continue
        ph = health.get(node.pool)
        if ph is not None and s.node_id in ph.frozen_nodes:
            continue
        if is_orphaned(node, now, ttl, autonomy):
            out.append(s)
    return sorted(out, key=lambda s: s.id)
