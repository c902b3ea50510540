"""The decision log, and re-deciding what it recorded.

Each placement and route decision is logged with every input replay needs
besides the snapshot itself. Entries are kept in memory (the last
``decision_log_size``, newest first) and flushed to the registry on each
refresh. ``replay`` re-runs one entry on its own inputs; ``compare_policies``
re-decides many on the current fleet under two policies (a dry run).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from placement import core
from placement.errors import InvalidField, RegistryUnavailable
from placement.model import FleetSnapshot, PlacementRequest
from placement.policy import Policy
from placement.policy_versions import PolicyVersions
from placement.registry import Registry
from placement.snapshots import SnapshotHistory


class DecisionLog:
    def __init__(self, registry: Registry, size: int) -> None:
        self.registry = registry
        self.size = size
        self._buffer: list[dict[str, Any]] = []
        self._recent: deque[dict[str, Any]] = deque(maxlen=max(1, size))

    def record(
        self,
        kind: str,
        req: PlacementRequest,
        d: core.Decision,
        now: float,
        *,
        policy: Policy,
        ttl: float,
        headroom: float,
        degraded: bool,
    ) -> bool:
        """Log a decision with every input replay needs besides the snapshot itself:
        the request as decided (exclusions included), the policy version it used,
        the liveness TTL (stretched in degraded mode) and the capacity headroom.
        ``False`` when the log is off (``decision_log_size`` 0)."""
        if self.size == 0:
            return False
        entry: dict[str, Any] = {
            "kind": kind,
            "at": now,
            "request": req.to_dict(),
            "policy": policy.version,
            "snapshot": d.snapshot_id,
            "ttl": ttl,
            "headroom": headroom,
            "node": d.node.id if d.node else None,
            "tier": d.tier,
            "step": d.step,
            "degraded": degraded,
        }
        pending = d.extra.get("pending")
        if pending:
            entry["pending"] = {k: list(v) for k, v in pending.items()}
        self._recent.appendleft(entry)
        self._buffer.append(entry)
        return True

    async def flush(self) -> None:
        buf, self._buffer = self._buffer, []
        try:
            await self.registry.log_decisions(buf, self.size)
        except RegistryUnavailable:
            self._buffer = (buf + self._buffer)[-self.size :]
            raise

    def recent(self) -> list[dict[str, Any]]:
        return list(self._recent)


def replay(
    entry: dict[str, Any],
    snapshots: SnapshotHistory,
    policies: PolicyVersions,
    default_ttl: float,
) -> core.Decision:
    """Re-run a logged publish decision on its snapshot, policy version, TTL and headroom.

    Snapshots are kept in this instance's memory only: the last
    ``SNAPSHOT_HISTORY`` of them, and the last ``replay_snapshots`` older ones
    that logged decisions were made on. An older decision, or one another
    instance made, cannot be replayed here. ``default_ttl`` (the configured
    liveness TTL) stands in for entries logged before the TTL was recorded.
    """
    snap = snapshots.retained(entry["snapshot"])
    policy = policies.get(int(entry["policy"]))
    if policy is None:
        raise InvalidField("policy", f"version {entry['policy']} is unknown")
    req = PlacementRequest.from_dict(entry["request"])
    pending = {k: (int(v[0]), float(v[1])) for k, v in (entry.get("pending") or {}).items()}
    # Entries logged before ttl/headroom were recorded replay as a healthy decision.
    ttl = float(entry.get("ttl", default_ttl))
    headroom = float(entry.get("headroom", 1.0))
    return core.decide(
        snap, req, policy, float(entry["at"]), ttl=ttl, headroom=headroom, pending=pending
    )


def replay_on(
    entry: dict[str, Any],
    snap: FleetSnapshot,
    policies: PolicyVersions,
    now: float,
    ttl: float,
) -> core.Decision:
    """Re-run a logged publish decision on another snapshot (today's fleet), with the
    policy version it used, at ``now``: what the same request would get today. The
    nodes it excluded stay excluded; pending reservations of its time do not apply."""
    policy = policies.get(int(entry["policy"]))
    if policy is None:
        raise InvalidField("policy", f"version {entry['policy']} is unknown")
    req = PlacementRequest.from_dict(entry["request"])
    headroom = float(entry.get("headroom", 1.0))
    return core.decide(snap, req, policy, now, ttl=ttl, headroom=headroom)


def _local(d: core.Decision, req: PlacementRequest) -> bool:
    return d.node is not None and d.tier == "edge" and d.node.city == req.location.city


def compare_policies(
    entries: list[dict[str, Any]],
    snap: FleetSnapshot,
    current: Policy,
    candidate: Policy,
    now: float,
    ttl: float,
) -> dict[str, Any]:
    """Re-decide the logged publish requests on ``snap`` under both policies: how many
    sessions would move and between which tiers, how many would be refused, and the
    local-serve ratio before and after (the share placed on an edge node of the
    publisher's own city)."""
    changed: list[dict[str, Any]] = []
    shifts: dict[str, int] = {}
    tiers_before: dict[str, int] = {}
    tiers_after: dict[str, int] = {}
    before_rej = after_rej = evaluated = local_before = local_after = 0
    for e in entries:
        if "request" not in e or e.get("kind") != "publish":
            continue
        req = PlacementRequest.from_dict(e["request"])
        a = core.decide(snap, req, current, now, ttl=ttl)
        b = core.decide(snap, req, candidate, now, ttl=ttl)
        evaluated += 1
        before_rej += not a.ok
        after_rej += not b.ok
        an = a.node.id if a.node else None
        bn = b.node.id if b.node else None
        local_before += _local(a, req)
        local_after += _local(b, req)
        ta, tb = a.tier or "rejected", b.tier or "rejected"
        tiers_before[ta] = tiers_before.get(ta, 0) + 1
        tiers_after[tb] = tiers_after.get(tb, 0) + 1
        if an != bn:
            key = f"{a.tier or 'rejected'}->{b.tier or 'rejected'}"
            shifts[key] = shifts.get(key, 0) + 1
            if len(changed) < 20:
                changed.append(
                    {"request": e["request"], "before": a.explain(), "after": b.explain()}
                )
    return {
        "current": current.label,
        "candidate": candidate.label,
        "snapshot": snap.id,
        "evaluated": evaluated,
        "changed": sum(shifts.values()),
        "shifts": shifts,
        "rejected_before": before_rej,
        "rejected_after": after_rej,
        "tiers_before": tiers_before,
        "tiers_after": tiers_after,
        "local_ratio_before": local_before / evaluated if evaluated else 0.0,
        "local_ratio_after": local_after / evaluated if evaluated else 0.0,
        "examples": changed,
        "applied": False,
    }
