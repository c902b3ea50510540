"""Configuration of the placement client and service (the ``placement:`` section)."""

from __future__ import annotations

from dataclasses import dataclass, field

from settings import check
from tokens import TenantKeys


@dataclass(frozen=True)
class LivenessConfig:
    heartbeat_interval: float = 2.0
    ttl: float = 6.0
    full_stats_interval: float = 10.0
    autonomy_window: float = 10.0
    mass_disconnect_threshold: float = 0.55

    def __post_init__(self) -> None:
        check(0.05 <= self.heartbeat_interval <= 60, "heartbeat_interval", "must be 0.05-60")
        check(
            self.ttl >= 2 * self.heartbeat_interval,
            "ttl",
            "must be at least twice 'heartbeat_interval'",
        )
        check(
            self.full_stats_interval >= self.heartbeat_interval,
            "full_stats_interval",
            "must be at least 'heartbeat_interval'",
        )
        check(self.autonomy_window >= 0, "autonomy_window", "must not be negative")
        check(
            0 < self.mass_disconnect_threshold <= 1,
            "mass_disconnect_threshold",
            "must be greater than 0 and at most 1",
        )


@dataclass(frozen=True)
class GeoConfig:
    cidr_csv: str = ""
    # One .mmdb path, or a list (a City and an ISP/ASN database): asked in order.
    mmdb: str | tuple[str, ...] = ""


@dataclass(frozen=True)
class PlacementConfig:
    url: str = ""
    listen: str = "0.0.0.0:8090"
    operator_token: str = ""
    node_token: str = ""
    node_keys: dict[str, str] = field(default_factory=dict)
    # Per tenant, the keys of signed publish tokens (as in 'ingest.auth.tenants'): a
    # publisher holding one may ask POST /v1/sessions for its own stream.
    publish_keys: dict[str, TenantKeys] = field(default_factory=dict)
    metrics_token: str = ""
    max_body_bytes: int = 65536
    policy_file: str = ""
    key_prefix: str = "nc"
    snapshot_interval: float = 1.0
    snapshot_max_age: float = 30.0
    lease_ttl: float = 30.0
    degraded_headroom: float = 0.5
    decision_log_size: int = 1000
    replay_snapshots: int = 32
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    geo: GeoConfig = field(default_factory=GeoConfig)

    def __post_init__(self) -> None:
        check(
            self.url == "" or self.url.startswith(("http://", "https://")),
            "url",
            "must be empty or an http(s) URL",
        )
        check(":" in self.listen, "listen", "must be HOST:PORT")
        check(bool(self.key_prefix), "key_prefix", "must not be empty")
        check(
            "{" not in self.key_prefix and "}" not in self.key_prefix,
            "key_prefix",
            "must not contain braces (they delimit Redis Cluster hash tags)",
        )
        # Policy changes reach every instance on its next refresh: live within 5 s.
        check(0.05 <= self.snapshot_interval <= 5, "snapshot_interval", "must be 0.05-5")
        check(
            self.snapshot_max_age >= self.snapshot_interval,
            "snapshot_max_age",
            "must be at least 'snapshot_interval'",
        )
        check(self.lease_ttl >= 1, "lease_ttl", "must be at least 1")
        check(0 < self.degraded_headroom <= 1, "degraded_headroom", "must be in (0, 1]")
        check(self.decision_log_size >= 0, "decision_log_size", "must not be negative")
        check(self.replay_snapshots >= 0, "replay_snapshots", "must not be negative")
        for kid, secret in self.node_keys.items():
            check(
                bool(kid) and "." not in kid, f"node_keys.{kid}", "key id must be non-empty, no '.'"
            )
            check(len(secret) >= 16, f"node_keys.{kid}", "secret must be at least 16 characters")
        for tenant in self.publish_keys:
            check(bool(tenant), "publish_keys", "must name tenants (an empty name was given)")
        check(
            1024 <= self.max_body_bytes <= 16 * 1024 * 1024,
            "max_body_bytes",
            "must be 1024-16777216",
        )
