"""Metrics of the pull relay (STYLE rule 11: names are part of the interface)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

# Reasons a pull from the upstream failed (relay_pull_errors_total{reason}): a closed set.
PULL_ERRORS = ("connect", "timeout", "reset", "status", "refused", "protocol", "missing")


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # relay_inbound_bytes_total{origin,kind}: body bytes pulled from an upstream node
        # (origin: the node the bytes came from), kind media (init, parts, segments) or
        # playlist: the backbone cost of the relay, beside hls_outbound_bytes_total.
        self.inbound = Counter(
            "relay_inbound_bytes",
            "Body bytes this relay pulled from its upstream nodes",
            ["origin", "kind"],
            registry=registry,
        )
        # relay_streams_active: streams this node relays right now.
        self.active = Gauge(
            "relay_streams_active", "Streams this node relays from another node", registry=registry
        )
        # relay_pull_errors_total{reason}: failed pulls (see PULL_ERRORS).
        self.errors = Counter(
            "relay_pull_errors",
            "Pulls from an upstream node that failed, by reason",
            ["reason"],
            registry=registry,
        )
        # relay_failovers_total: times a relayed stream moved to another upstream node.
        self.failovers = Counter(
            "relay_failovers",
            "Relayed streams moved to another upstream after theirs failed",
            registry=registry,
        )
        # relay_started_total / relay_stopped_total{reason}: relays started; stopped
        # (idle, ended, gone, published here, stopped with the node, unknown, unavailable).
        self.started = Counter("relay_started", "Relays started on demand", registry=registry)
        self.stopped = Counter(
            "relay_stopped", "Relays stopped, by reason", ["reason"], registry=registry
        )
        for reason in PULL_ERRORS:
            self.errors.labels(reason)
