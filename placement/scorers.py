"""Scorers: each maps a feasible node to [0, 1]; the policy weights combine them."""

from __future__ import annotations

from collections.abc import Callable

from placement.filters import Context, estimate_rtt_ms
from placement.model import Node, Tier

Scorer = Callable[[Node, Context], float]


def locality(node: Node, ctx: Context) -> float:
    """Same city+ISP > same city > same region > MEC > cloud."""
    if node.tier is Tier.EDGE:
        if ctx.city and node.city == ctx.city:
            return 1.0 if ctx.isp and node.isp == ctx.isp else 0.8
        return 0.6 if ctx.region and node.region == ctx.region else 0.3
    if node.tier is Tier.MEC:
        return 0.4 if ctx.region and node.region == ctx.region else 0.2
    return 0.1 if ctx.region and node.region == ctx.region else 0.0


def load(node: Node, ctx: Context) -> float:
    cap = node.capacity
    extra_slots, extra_egress = ctx.pending.get(node.id, (0, 0.0))
    slots = max(node.reserved_slots, node.load.transcodes) + extra_slots
    egress = max(node.reserved_egress_mbps, node.load.egress_mbps) + extra_egress
    slot_use = slots / cap.slots if cap.slots else 1.0
    egress_use = egress / cap.egress_mbps if cap.egress_mbps else 1.0
    busiest = max(node.load.cpu, slot_use, egress_use)
    return min(1.0, max(0.0, 1.0 - busiest))


def cost(node: Node, ctx: Context) -> float:
    costs = ctx.policy.cost_per_gb
    top = max(costs.edge, costs.mec, costs.cloud)
    return 1.0 - float(getattr(costs, node.tier.value)) / top if top > 0 else 1.0


def latency(node: Node, ctx: Context) -> float:
    limit = ctx.policy.filters.max_rtt_ms
    return 1.0 - min(estimate_rtt_ms(node, ctx), limit) / limit


def affinity(node: Node, ctx: Context) -> float:
    """Prefer a node that already holds or relays the stream (no extra backbone copy)."""
    return 1.0 if ctx.stream_key in node.streams else 0.0


SCORERS: dict[str, Scorer] = {
    "locality": locality,
    "load": load,
    "cost": cost,
    "latency": latency,
    "affinity": affinity,
}
