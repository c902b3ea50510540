"""Prometheus metrics of the placement service (STYLE rule 11: part of the interface).

Label values are bounded: tiers, node states, outcomes and fallback reasons
are fixed sets; tenant and session ids never become labels. Node ids label only
``placement_node_heartbeat_age_seconds``, one series per node of the fleet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from placement.credentials import PUBLISH_REASONS
from placement.model import FleetSnapshot, NodeState, Tier
from tokens.node import NODE_REASONS

# tier: edge|mec|cloud|none; outcome: placed (session reserved), routed (viewer
# sent to a node), rejected (no capacity anywhere), conflict (every candidate's
# reservation was lost to a concurrent request).
DECISIONS = "placement_decisions_total"
# Wall time of one placement or route call, reservation included.
DECISION_SECONDS = "placement_decision_seconds"
# Nodes in the last snapshot; state is ready|draining|cordoned|stale (missed TTL).
NODES = "placement_nodes"
# Why a decision did not take the first choice. reason: edge_unavailable (fell
# past the local edge), mec_unavailable (fell to the cloud), reservation_conflict
# (lost a race, tried the next candidate), no_capacity, degraded (answered from
# the last snapshot), mass_disconnect (migrations frozen in a pool).
FALLBACKS = "placement_fallbacks_total"
# 1 while the registry (Redis) is unreachable and answers come from the last snapshot.
DEGRADED = "placement_degraded"
# Heartbeats and registrations refused, by reason: invalid_id (422: the node id breaks
# the id rule), a credential failure (401: missing, malformed, unknown_key, forged,
# wrong_node, expired) or a claim the credential does not allow (403: tier, region,
# city, isp, urls, tenants).
REGISTRATIONS_REJECTED = "placement_registrations_rejected_total"
# Seconds since each node's last heartbeat, as of the last fleet snapshot, computed at
# scrape time; labels node (its id) and tier. The node's series goes when it leaves the
# registry. Over placement.liveness.ttl the node is stale.
HEARTBEAT_AGE = "placement_node_heartbeat_age_seconds"

# POST /v1/sessions refused to a publish token, by reason: a token failure (401: missing,
# malformed, unknown_key, forged, wrong_action, expired, unknown_tenant: the tenant has
# no 'placement.publish_keys') or a body for another stream than the token's (403:
# wrong_stream). Requests with the operator token are never counted here.
SESSION_REQUESTS_REJECTED = "placement_session_requests_rejected_total"
# POST /v1/nodes/{id}/suspect reports from relays, by the verdict answered: dead (the
# probe failed: the node gets no placement or route until it beats again), alive (the
# probe answered), unknown (no such node, or no http URL to probe).
SUSPECT_REPORTS = "placement_suspect_reports_total"
# Probes of a suspected node's /healthz (at most one in flight per node, its result
# reused for about a second), by outcome: healthy (2xx), unhealthy (another status),
# timeout (no answer within 1 s), unreachable (connection refused, reset, DNS...).
SUSPECT_PROBES = "placement_suspect_probes_total"
SUSPECT_VERDICTS = ("dead", "alive", "unknown")
PROBE_OUTCOMES = ("healthy", "unhealthy", "timeout", "unreachable")

REGISTRATION_REASONS = (
    "invalid_id",
    *NODE_REASONS,
    "tier",
    "region",
    "city",
    "isp",
    "urls",
    "tenants",
)

FALLBACK_REASONS = (
    "edge_unavailable",
    "mec_unavailable",
    "reservation_conflict",
    "no_capacity",
    "degraded",
    "mass_disconnect",
)


class PlacementMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.decisions = Counter(
            DECISIONS,
            "Placement and routing decisions by chosen tier and outcome.",
            ["tier", "outcome"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            DECISION_SECONDS,
            "Seconds to take one placement or routing decision, reservation included.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.nodes = Gauge(
            NODES, "Nodes in the last fleet snapshot.", ["tier", "state"], registry=self.registry
        )
        self.fallbacks = Counter(
            FALLBACKS,
            "Decisions that could not take the first choice, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.degraded = Gauge(
            DEGRADED, "1 while answering from the last snapshot.", registry=self.registry
        )
        self.registrations_rejected = Counter(
            REGISTRATIONS_REJECTED,
            "Node heartbeats and registrations refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.session_requests_rejected = Counter(
            SESSION_REQUESTS_REJECTED,
            "Session requests refused to a publish token, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in PUBLISH_REASONS:
            self.session_requests_rejected.labels(reason)
        self.suspect_reports = Counter(
            SUSPECT_REPORTS,
            "Relays' reports of a node whose pulls fail, by the verdict answered.",
            ["verdict"],
            registry=self.registry,
        )
        for verdict in SUSPECT_VERDICTS:
            self.suspect_reports.labels(verdict)
        self.suspect_probes = Counter(
            SUSPECT_PROBES,
            "Health probes of suspected nodes, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in PROBE_OUTCOMES:
            self.suspect_probes.labels(outcome)
        for reason in REGISTRATION_REASONS:
            self.registrations_rejected.labels(reason)
        for tier in Tier:
            for state in [*(s.value for s in NodeState), "stale"]:
                self.nodes.labels(tier.value, state).set(0)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason)
        self.heartbeat_ages = _HeartbeatAges()
        self.registry.register(self.heartbeat_ages)

    def watch_heartbeats(
        self, snapshot: Callable[[], FleetSnapshot | None], clock: Callable[[], float]
    ) -> None:
        """Export each node's heartbeat age from ``snapshot()`` (the service's last one),
        read at scrape time against ``clock()`` (the service's clock)."""
        self.heartbeat_ages.snapshot = snapshot
        self.heartbeat_ages.clock = clock


class _HeartbeatAges(Collector):
    """No series until a service gives it its snapshots (``watch_heartbeats``)."""

    def __init__(self) -> None:
        self.snapshot: Callable[[], FleetSnapshot | None] = lambda: None
        self.clock: Callable[[], float] = time.time

    def collect(self) -> Iterator[Metric]:
        ages = GaugeMetricFamily(
            HEARTBEAT_AGE,
            "Seconds since each node's last heartbeat, as of the last fleet snapshot.",
            labels=["node", "tier"],
        )
        snap = self.snapshot()
        if snap is not None:
            now = self.clock()
            for node in snap.nodes.values():
                ages.add_metric([node.id, node.tier.value], max(0.0, now - node.last_heartbeat))
        yield ages

    def describe(self) -> Iterator[Metric]:
        return iter(())
