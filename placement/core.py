"""The sans-I/O decision core: filter, then weighted score, then select.

``decide`` and ``route`` are pure: the same snapshot, request, policy and
``now`` always give the same decision, which is what makes replay work.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from placement import selectors
from placement.filters import Context, first_rejection, summarize
from placement.filters import feasible as is_feasible
from placement.model import (
    FleetSnapshot,
    Location,
    Node,
    NodeState,
    PlacementRequest,
    Tier,
    stream_key,
)
from placement.policy import TIERS, Policy, Weights
from placement.scorers import SCORERS
from placement.selectors import Candidate

STEP_NAMES = {"edge": "local edge", "mec": "regional MEC", "cloud": "cloud"}
# A node relaying a stream reports it twice in its heartbeat's streams: "tenant/stream"
# (it holds it: viewers may be sent there) and "relay:tenant/stream" (not its origin).
RELAY_MARK = "relay:"
# The node label of a node that relays streams on demand (relay.enabled): "relay": "on".
RELAY_LABEL = "relay"


def can_relay(node: Node) -> bool:
    return node.labels.get(RELAY_LABEL) == "on"


@dataclass(frozen=True, slots=True)
class StepReport:
    step: str
    considered: int
    feasible: int
    rejected: Mapping[str, int]
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "considered": self.considered,
            "feasible": self.feasible,
            "rejected": dict(self.rejected),
            "summary": self.summary,
        }


@dataclass(frozen=True)
class Decision:
    node: Node | None
    step: str
    reason: str
    steps: tuple[StepReport, ...]
    ranked: tuple[Candidate, ...]
    policy: str
    snapshot_id: str
    at: float
    top_k: int = 3
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.node is not None

    @property
    def tier(self) -> str | None:
        return self.node.tier.value if self.node else None

    def explain(self) -> dict[str, Any]:
        return {
            "node": self.node.id if self.node else None,
            "tier": self.tier,
            "step": self.step,
            "reason": self.reason,
            "fallback": [s.to_dict() for s in self.steps],
            "candidates": [c.to_dict() for c in self.ranked[: self.top_k]],
            "policy": self.policy,
            "snapshot": self.snapshot_id,
            "at": self.at,
        }


def resolve_context(
    snapshot: FleetSnapshot,
    tenant: str,
    stream: str,
    location: Location,
    policy: Policy,
    now: float,
    *,
    ttl: float,
    headroom: float,
    viewer: bool,
    slots: int = 0,
    egress_mbps: float = 0.0,
    exclude: frozenset[str] = frozenset(),
    pending: Mapping[str, tuple[int, float]] | None = None,
) -> Context:
    lat, lon = location.lat, location.lon
    if (lat is None or lon is None) and location.city in snapshot.city_centroid:
        lat, lon = snapshot.city_centroid[location.city]
    region = location.region or snapshot.city_region.get(location.city, "")
    return Context(
        tenant=tenant,
        stream_key=stream_key(tenant, stream),
        city=location.city,
        isp=location.isp,
        region=region,
        lat=lat,
        lon=lon,
        slots=slots or policy.session.slots,
        egress_mbps=egress_mbps if egress_mbps > 0 else policy.session.egress_mbps,
        policy=policy,
        now=now,
        ttl=ttl,
        headroom=headroom,
        viewer=viewer,
        exclude=exclude,
        tiers=frozenset(policy.fallback),
        pending=pending or {},
    )


def _scan(
    pool: Sequence[Node], ctx: Context, limit: int, start_key: str
) -> tuple[list[Node], dict[str, int], int]:
    """Filter ``pool`` from a stable offset, stopping after ``limit`` feasible nodes.

    Like kube-scheduler's percentageOfNodesToScore: a big city need not be
    scanned whole. The offset is a hash of the stream, not a rotating counter,
    so a replay scans the same nodes.
    """
    n = len(pool)
    feasible: list[Node] = []
    rejected: dict[str, int] = {}
    if n == 0:
        return feasible, rejected, 0
    start = zlib.crc32(start_key.encode()) % n
    considered = 0
    for i in range(n):
        node = pool[(start + i) % n]
        considered += 1
        if is_feasible(node, ctx):
            feasible.append(node)
            if len(feasible) >= limit:
                break
        else:
            reason = first_rejection(node, ctx) or "filtered"
            rejected[reason] = rejected.get(reason, 0) + 1
    return feasible, rejected, considered


def rank(nodes: Sequence[Node], ctx: Context, weights: Weights) -> tuple[Candidate, ...]:
    active = [(name, w, SCORERS[name]) for name, w in weights.items() if w > 0]
    load_fn = SCORERS["load"]
    out: list[Candidate] = []
    for node in nodes:
        scores = {}
        total = 0.0
        for name, w, fn in active:
            v = scores[name] = fn(node, ctx)
            total += w * v
        free = scores["load"] if "load" in scores else load_fn(node, ctx)
        out.append(Candidate(node.id, node.tier.value, total, scores, 1.0 - free))
    out.sort(key=lambda c: (-c.total, c.node_id))
    return tuple(out)


def _order(ranked: tuple[Candidate, ...], policy: Policy) -> tuple[Candidate, ...]:
    """Put the selector's choice first; the rest stay as fallbacks for a lost reservation."""
    chosen = selectors.get(policy.selector)(ranked)
    return (chosen, *(c for c in ranked if c is not chosen))


def _step_pool(
    snapshot: FleetSnapshot, tier: str, ctx: Context
) -> tuple[Sequence[Node] | None, str]:
    if tier == "edge":
        if not ctx.city:
            return None, "publisher city unknown"
        return snapshot.by_tier_city.get((Tier.EDGE, ctx.city), ()), f"city {ctx.city}"
    if tier == "mec":
        if not ctx.region:
            return None, "publisher region unknown"
        return snapshot.by_tier_region.get((Tier.MEC, ctx.region), ()), f"region {ctx.region}"
    return snapshot.by_tier.get(Tier.CLOUD, ()), "any region"


def decide(
    snapshot: FleetSnapshot,
    request: PlacementRequest,
    policy: Policy,
    now: float,
    *,
    ttl: float,
    headroom: float = 1.0,
    pending: Mapping[str, tuple[int, float]] | None = None,
) -> Decision:
    """Place a publishing session: local edge, else regional MEC, else cloud.

    ``pending`` holds reservations made since the snapshot was taken; the
    decision's ``extra["pending"]`` keeps the part it looked at, for replay.
    """
    ctx = resolve_context(
        snapshot,
        request.tenant,
        request.stream,
        request.location,
        policy,
        now,
        ttl=ttl,
        headroom=headroom,
        viewer=False,
        slots=request.slots,
        egress_mbps=request.egress_mbps,
        exclude=request.exclude,
        pending=pending,
    )
    reports: list[StepReport] = []
    seen: dict[str, tuple[int, float]] = {}
    notes: list[str] = []
    for tier in policy.fallback:
        pool, where = _step_pool(snapshot, tier, ctx)
        if pool is None:
            reports.append(StepReport(tier, 0, 0, {}, where))
            notes.append(f"{STEP_NAMES[tier]}: {where}")
            continue
        feasible, rejected, considered = _scan(pool, ctx, policy.min_feasible, ctx.stream_key)
        if pending:
            seen.update((n.id, pending[n.id]) for n in pool if n.id in pending)
        if considered == 0:
            summary = f"no {tier} nodes in {where}"
        else:
            summary = summarize(len(feasible), considered, rejected)
        reports.append(StepReport(tier, considered, len(feasible), rejected, summary))
        if feasible:
            ranked = _order(rank(feasible, ctx, policy.weights), policy)
            notes.append(f"{STEP_NAMES[tier]}: chosen from {summary}")
            return Decision(
                node=snapshot.nodes[ranked[0].node_id],
                step=tier,
                reason="; ".join(notes),
                steps=tuple(reports),
                ranked=ranked,
                policy=policy.label,
                snapshot_id=snapshot.id,
                at=now,
                top_k=policy.top_k,
                extra={"pending": seen} if seen else {},
            )
        notes.append(f"{STEP_NAMES[tier]}: {summary}")
    skipped = [t for t in TIERS if t not in policy.fallback]
    if skipped:
        notes.append(f"not allowed by policy: {', '.join(skipped)}")
    return Decision(
        node=None,
        step="none",
        reason="; ".join(notes),
        steps=tuple(reports),
        ranked=(),
        policy=policy.label,
        snapshot_id=snapshot.id,
        at=now,
        top_k=policy.top_k,
        extra={"pending": seen} if seen else {},
    )


def route(
    snapshot: FleetSnapshot,
    tenant: str,
    stream: str,
    location: Location,
    policy: Policy,
    now: float,
    *,
    ttl: float,
    origin_id: str | None = None,
) -> Decision:
    """Send a viewer to the best node that holds (originates or relays) the stream."""
    ctx = resolve_context(
        snapshot, tenant, stream, location, policy, now, ttl=ttl, headroom=1.0, viewer=True
    )
    holders = {n.id: n for n in snapshot.by_stream.get(ctx.stream_key, ())}
    if origin_id and origin_id in snapshot.nodes:
        holders.setdefault(origin_id, snapshot.nodes[origin_id])
    pool = [holders[k] for k in sorted(holders)]
    feasible, rejected, considered = _scan(pool, ctx, len(pool) or 1, ctx.stream_key)
    summary = summarize(len(feasible), considered, rejected)
    report = StepReport("viewer", considered, len(feasible), rejected, summary)
    in_city = [n for n in feasible if n.city == ctx.city] if ctx.city else []
    if pool and ctx.city and not in_city:
        # Viewers stay in their city: with no holder there, a node of the city that
        # relays on demand serves them (it pulls the stream once, see upstream()).
        local = _relay_in_city(snapshot, ctx, policy, holders, report, summary)
        if local is not None:
            return local
    where = ""
    if in_city:
        # A holder in the viewer's city serves them, before any holder elsewhere (a
        # relay of the region, say) that scores better on load.
        feasible, where = in_city, f" in city {ctx.city}"
    if not feasible:
        return Decision(
            None,
            "none",
            f"viewer: {summary}",
            (report,),
            (),
            policy.label,
            snapshot.id,
            now,
            policy.top_k,
        )
    ranked = rank(feasible, ctx, policy.viewer_weights)
    return Decision(
        node=snapshot.nodes[ranked[0].node_id],
        step="viewer",
        reason=f"viewer: nearest holder of {ctx.stream_key}{where} from {summary}",
        steps=(report,),
        ranked=ranked,
        policy=policy.label,
        snapshot_id=snapshot.id,
        at=now,
        top_k=policy.top_k,
    )


def _relay_in_city(
    snapshot: FleetSnapshot,
    ctx: Context,
    policy: Policy,
    holders: Mapping[str, Node],
    holder_report: StepReport,
    holder_summary: str,
) -> Decision | None:
    """A node in the viewer's city that can relay the stream and serve the viewer (same
    ISP first), or None when there is none."""
    pool = [
        n
        for tier in (Tier.EDGE, Tier.MEC)
        for n in snapshot.by_tier_city.get((tier, ctx.city), ())
        if can_relay(n) and n.id not in holders
    ]
    pool.sort(key=lambda n: n.id)
    feasible, rejected, considered = _scan(pool, ctx, len(pool) or 1, ctx.stream_key)
    # A new relay is new work: not on a node being drained.
    draining = [n for n in feasible if n.state is not NodeState.READY]
    if draining:
        rejected = {**rejected, "draining": rejected.get("draining", 0) + len(draining)}
        feasible = [n for n in feasible if n.state is NodeState.READY]
    summary = summarize(len(feasible), considered, rejected)
    report = StepReport("relay", considered, len(feasible), rejected, summary)
    if not feasible:
        return None
    scored = rank(feasible, ctx, policy.viewer_weights)
    by_id = snapshot.nodes
    # Same city, then the viewer's ISP.
    ranked = tuple(
        sorted(scored, key=lambda c: (bool(ctx.isp) and by_id[c.node_id].isp != ctx.isp,))
    )
    node = by_id[ranked[0].node_id]
    same_isp = ", same ISP" if ctx.isp and node.isp == ctx.isp else ""
    return Decision(
        node=node,
        step="relay",
        reason=(
            f"viewer: no holder of {ctx.stream_key} in city {ctx.city} ({holder_summary}); "
            f"{node.id} relays it on demand (same city{same_isp}) from {summary}"
        ),
        steps=(holder_report, report),
        ranked=ranked,
        policy=policy.label,
        snapshot_id=snapshot.id,
        at=ctx.now,
        top_k=policy.top_k,
        extra={"relay": True},
    )


def upstream(
    snapshot: FleetSnapshot,
    tenant: str,
    stream: str,
    asker: Node | str,
    policy: Policy,
    now: float,
    *,
    ttl: float,
    origin_id: str | None = None,
) -> Decision:
    """The node a relay (``asker``) pulls ``tenant/stream`` from.

    Relays chain by tier so that no two ever pull from each other: an edge asker
    prefers a MEC of its region that holds the stream or can relay it (already
    pulling: no new backbone traffic), else the origin; a MEC or cloud asker pulls
    from the origin. The origin is the node of the stream's placement session
    (``origin_id``) or, without one, a holder that does not relay it. The origin is
    only asked to be alive: it is the one source of the stream.
    """

    def decided(
        node: Node | None,
        step: str,
        reason: str,
        steps: tuple[StepReport, ...],
        ranked: tuple[Candidate, ...],
        origin: str,
    ) -> Decision:
        return Decision(
            node=node,
            step=step,
            reason=reason,
            steps=steps,
            ranked=ranked,
            policy=policy.label,
            snapshot_id=snapshot.id,
            at=now,
            top_k=policy.top_k,
            extra={"origin": origin},
        )

    key = stream_key(tenant, stream)
    # An asker placement does not know yet (its id only: not registered) gets the origin.
    me = asker if isinstance(asker, Node) else None
    asker_id = me.id if me is not None else str(asker)
    # The asker's place, without its ISP: an upstream need not share it.
    location = (
        Location(city=me.city, region=me.region, lat=me.lat, lon=me.lon, source="node")
        if me is not None
        else Location()
    )
    ctx = resolve_context(
        snapshot,
        tenant,
        stream,
        location,
        policy,
        now,
        ttl=ttl,
        headroom=1.0,
        viewer=True,
        exclude=frozenset({asker_id}),
    )
    holders = {n.id: n for n in snapshot.by_stream.get(key, ())}
    relays = {n.id for n in snapshot.by_stream.get(RELAY_MARK + key, ())}
    if origin_id and origin_id == asker_id:
        # The stream's session is on the asker (its publisher is moving there): it is the
        # origin and pulls from nobody, or two relays could end up pulling from each other.
        summary = f"{asker_id} is the origin of {key}"
        return decided(
            None,
            "none",
            f"origin: {summary}",
            (StepReport("origin", 1, 0, {"asker": 1}, summary),),
            (),
            origin_id,
        )
    if origin_id:
        origin = snapshot.nodes.get(origin_id)
        origins = [origin] if origin is not None else []
    else:
        origins = [holders[k] for k in sorted(holders) if k not in relays]
    known_origin = origin_id or (origins[0].id if len(origins) == 1 else "")
    reports: list[StepReport] = []
    notes: list[str] = []
    if me is not None and me.tier is Tier.EDGE and me.region:
        pool = [
            n
            for n in snapshot.by_tier_region.get((Tier.MEC, me.region), ())
            if n.id != asker_id and (n.id in holders or can_relay(n))
        ]
        feasible, rejected, considered = _scan(pool, ctx, len(pool) or 1, key)
        feasible = [n for n in feasible if n.id in holders or n.state is NodeState.READY]
        summary = summarize(len(feasible), considered, rejected)
        reports.append(StepReport("mec", considered, len(feasible), rejected, summary))
        if feasible:
            scored = rank(feasible, ctx, policy.viewer_weights)
            # One that already holds the stream first: it pulls it already.
            ranked = tuple(sorted(scored, key=lambda c: c.node_id not in holders))
            node = snapshot.nodes[ranked[0].node_id]
            how = "holds" if node.id in holders else "can relay"
            notes.append(f"regional MEC: {node.id} {how} {key} ({summary})")
            return decided(node, "mec", "; ".join(notes), tuple(reports), ranked, known_origin)
        notes.append(f"regional MEC: {summary}")
    refused: dict[str, int] = {}
    alive: list[Node] = []
    for n in origins:
        why = (
            "asker"
            if n.id == asker_id
            else "no heartbeat"
            if now - n.last_heartbeat > ttl
            else "cordoned"
            if n.state is NodeState.CORDONED
            else None
        )
        if why is None:
            alive.append(n)
        else:
            refused[why] = refused.get(why, 0) + 1
    summary = summarize(len(alive), len(origins), refused)
    if not origins:
        summary = f"no origin of {key} known"
    reports.append(StepReport("origin", len(origins), len(alive), refused, summary))
    if not alive:
        notes.append(f"origin: {summary}")
        return decided(None, "none", "; ".join(notes), tuple(reports), (), known_origin)
    ranked = rank(alive, ctx, policy.viewer_weights)
    node = snapshot.nodes[ranked[0].node_id]
    notes.append(f"origin: {node.id} ({node.tier.value}, {summary})")
    return decided(node, "origin", "; ".join(notes), tuple(reports), ranked, node.id)
