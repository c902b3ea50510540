"""Ingest metrics (STYLE rule 11: names are part of the interface)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # ingest_sessions{protocol,tenant}: publishers connected now. Tenants are
        # configured, so the label set stays bounded.
        self.sessions = Gauge(
            "ingest_sessions", "Publishers connected now", ["protocol", "tenant"], registry=registry
        )
        # ingest_bytes_total{protocol}: bytes read from publishers, all streams.
        self.bytes = Counter(
            "ingest_bytes_total", "Bytes received from publishers", ["protocol"], registry=registry
        )
        # ingest_frames_total{protocol,kind}: audio and video frames received.
        self.frames = Counter(
            "ingest_frames_total", "Media frames received", ["protocol", "kind"], registry=registry
        )
        # ingest_rejected_total{reason}: connections or publishes refused or dropped
        # for bad input; reason is one of a fixed set (protocol, handshake, tenant,
        # duplicate, codec, timeout, ...).
        self.rejected = Counter(
            "ingest_rejected_total",
            "Refused or dropped ingest connections",
            ["reason"],
            registry=registry,
        )
        # ingest_closed_total{reason}: live publishers the node disconnected; reason is
        # kicked (operator), takeover (a new publisher of the same stream) or bitrate
        # (over ingest.max_bitrate, also counted as ingest_rejected_total{reason="bitrate"}).
        self.closed = Counter(
            "ingest_closed_total",
            "Live publishers disconnected by the node",
            ["reason"],
            registry=registry,
        )
        # ingest_webhook_requests_total{outcome}: on_publish webhook calls by outcome:
        # allowed, denied, timeout or error (the last two then follow on_publish.fail_open).
        self.webhook = Counter(
            "ingest_webhook_requests_total",
            "on_publish webhook calls",
            ["outcome"],
            registry=registry,
        )
