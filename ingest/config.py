"""Configuration of the ingest stage (the ``rtmp:`` section of nearcast.yml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.source import SourceLimits
from settings import check
from tokens import TenantKeys as TenantAuth


@dataclass(frozen=True)
class RtmpConfig:
    listen: str = "0.0.0.0:1935"
    tenants: list[str] = field(default_factory=lambda: ["live"])
    chunk_size: int = 4096
    window_ack_size: int = 2_500_000
    handshake_timeout: float = 10.0
    idle_timeout: float = 20.0
    max_message_size: int = 16 * 1024 * 1024
    # Commands, data and control messages, and every message before a publish is accepted.
    max_command_size: int = 64 * 1024
    # Seconds a write to a peer may wait for its socket to drain.
    write_timeout: float = 10.0
    # Open connections, RTMP and RTMPS together, and from one IP address (0: no limit).
    max_connections: int = 1000
    max_connections_per_ip: int = 16
    # Share of one core a connection's parsing may use, averaged over parse_burst seconds.
    parse_budget: float = 0.25
    parse_burst: float = 0.5
    # RTMPS: served on tls_listen when both a certificate and a key are configured.
    tls_listen: str = "0.0.0.0:1936"
    tls_cert: str = ""
    tls_key: str = ""

    def __post_init__(self) -> None:
        check(":" in self.listen, "listen", "must be HOST:PORT")
        check(len(self.tenants) > 0, "tenants", "must name at least one tenant")
        for t in self.tenants:
            # The HTTP paths /v1/... and /static/... belong to the API and the pages.
            check(
                t not in ("v1", "static") and t.isprintable() and "/" not in t and bool(t),
                "tenants",
                f"{t!r} cannot be a tenant name (reserved or not a path segment)",
            )
        check(128 <= self.chunk_size <= 65536, "chunk_size", "must be between 128 and 65536")
        check(self.window_ack_size > 0, "window_ack_size", "must be greater than zero")
        check(self.handshake_timeout > 0, "handshake_timeout", "must be greater than zero")
        check(self.idle_timeout > 0, "idle_timeout", "must be greater than zero")
        check(self.max_message_size >= 65536, "max_message_size", "must be at least 65536")
        check(
            4096 <= self.max_command_size <= self.max_message_size,
            "max_command_size",
            "must be between 4096 and max_message_size",
        )
        check(self.write_timeout > 0, "write_timeout", "must be greater than zero")
        check(self.max_connections >= 0, "max_connections", "must be >= 0 (0: no limit)")
        check(
            self.max_connections_per_ip >= 0,
            "max_connections_per_ip",
            "must be >= 0 (0: no limit)",
        )
        check(0 < self.parse_budget <= 1, "parse_budget", "must be in (0, 1]")
        check(0 < self.parse_burst <= 10, "parse_burst", "must be in (0, 10] seconds")
        check(":" in self.tls_listen, "tls_listen", "must be HOST:PORT")
        check(
            bool(self.tls_cert) == bool(self.tls_key),
            "tls_cert",
            "and 'tls_key' must be set together (RTMPS needs both) or both left empty",
        )

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)


@dataclass(frozen=True)
class AuthConfig:
    # Tenants not listed here need no token to publish.
    tenants: dict[str, TenantAuth] = field(default_factory=dict)


@dataclass(frozen=True)
class WebhookConfig:
    """on_publish: ask an HTTP service before accepting a publish (as SRS, nginx-rtmp do)."""

    url: str = ""
    timeout: float = 3.0
    fail_open: bool = False

    def __post_init__(self) -> None:
        check(
            not self.url or self.url.startswith(("http://", "https://")),
            "url",
            "must be an http(s) URL or empty",
        )
        check(0 < self.timeout <= 30, "timeout", "must be between 0 and 30 seconds")


@dataclass(frozen=True)
class TenantIngest:
    """One tenant's own source limits (``ingest.tenants``); a key left out is the node's."""

    max_width: int | None = None
    max_height: int | None = None
    max_fps: float | None = None

    def __post_init__(self) -> None:
        for key in ("max_width", "max_height"):
            value = getattr(self, key)
            check(value is None or value >= 0, key, "must be >= 0 (0: no limit)")
        check(self.max_fps is None or self.max_fps >= 0, "max_fps", "must be >= 0 (0: no limit)")


@dataclass(frozen=True)
class IngestConfig:
    """Protocol-independent publish policy: limits, takeover, authentication, control."""

    max_publishers: int = 32
    max_publishers_per_tenant: int = 0
    max_bitrate: int = 0
    bitrate_window: float = 3.0
    takeover: bool = False
    operator_token: str = ""
    # Publish attempts (RTMP and WHIP together) from one IP address (IPv6: one /64) per
    # publish_attempts_window seconds; 0: no limit. The table of addresses is bounded.
    max_publish_attempts_per_ip: int = 10
    publish_attempts_window: float = 60.0
    publish_attempts_tracked_ips: int = 4096
    # Largest source picture (either orientation) and frame rate; 0: no limit.
    max_width: int = 1920
    max_height: int = 1080
    max_fps: float = 60.0
    # Per-tenant source limits, overriding the three above.
    tenants: dict[str, TenantIngest] = field(default_factory=dict)
    auth: AuthConfig = field(default_factory=AuthConfig)
    on_publish: WebhookConfig = field(default_factory=WebhookConfig)

    def __post_init__(self) -> None:
        check(self.max_publishers >= 0, "max_publishers", "must be >= 0 (0: no limit)")
        check(
            self.max_publishers_per_tenant >= 0,
            "max_publishers_per_tenant",
            "must be >= 0 (0: no limit)",
        )
        check(self.max_bitrate >= 0, "max_bitrate", "must be >= 0 (0: no limit)")
        check(0.5 <= self.bitrate_window <= 30, "bitrate_window", "must be between 0.5 and 30")
        check(
            self.max_publish_attempts_per_ip >= 0,
            "max_publish_attempts_per_ip",
            "must be >= 0 (0: no limit)",
        )
        check(
            1 <= self.publish_attempts_window <= 3600,
            "publish_attempts_window",
            "must be between 1 and 3600 seconds",
        )
        check(
            1024 <= self.publish_attempts_tracked_ips <= 1_000_000,
            "publish_attempts_tracked_ips",
            "must be between 1024 and 1000000",
        )
        check(self.max_width >= 0, "max_width", "must be >= 0 (0: no limit)")
        check(self.max_height >= 0, "max_height", "must be >= 0 (0: no limit)")
        check(self.max_fps >= 0, "max_fps", "must be >= 0 (0: no limit)")
        for tenant in self.tenants:
            check(bool(tenant), "tenants", "must name tenants (an empty name was given)")

    def source_limits(self, tenant: str) -> SourceLimits:
        """The largest source ``tenant`` may publish (``ingest.tenants``, else the node's)."""
        own = self.tenants.get(tenant, TenantIngest())
        return SourceLimits(
            self.max_width if own.max_width is None else own.max_width,
            self.max_height if own.max_height is None else own.max_height,
            self.max_fps if own.max_fps is None else own.max_fps,
        )
