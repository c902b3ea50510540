"""Configuration of the distribution stage (``http:`` and ``hls:`` sections)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from settings import check
from tokens import TenantKeys


@dataclass(frozen=True)
class HttpConfig:
    """The node's HTTP server (``http:`` section); the limits are enforced by the
    protocol every request passes through (:mod:`distribute.fastpath`)."""

    # Empty: no plain HTTP (then HTTPS must be configured).
    listen: str = "0.0.0.0:8080"
    cors_origin: str = "*"
    # Bearer token GET /metrics requires; empty leaves /metrics open.
    metrics_token: str = ""
    # HTTPS: served on tls_listen when both a certificate and a key are configured.
    tls_listen: str = "0.0.0.0:8443"
    tls_cert: str = ""
    tls_key: str = ""
    # Request limits, nginx's defaults or tighter: 414, 431, 408 and 413 beyond them.
    max_url_bytes: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    header_timeout: float = 10.0
    max_body_bytes: int = 1024 * 1024
    write_timeout: float = 30.0
    # Seconds a connection may wait for its next request before it is closed.
    keep_alive_timeout: int = 30
    # Connections open (or requests in progress) at which requests get 503; 0: no limit.
    limit_concurrency: int = 4096

    def __post_init__(self) -> None:
        check(self.listen == "" or ":" in self.listen, "listen", "must be HOST:PORT or empty")
        check(":" in self.tls_listen, "tls_listen", "must be HOST:PORT")
        check(
            bool(self.tls_cert) == bool(self.tls_key),
            "tls_cert",
            "and 'tls_key' must be set together (HTTPS needs both) or both left empty",
        )
        check(
            bool(self.listen) or self.tls,
            "listen",
            "may be empty only when HTTPS is configured (tls_cert and tls_key)",
        )
        check(self.max_url_bytes >= 1024, "max_url_bytes", "must be at least 1024")
        check(self.max_header_bytes >= 4096, "max_header_bytes", "must be at least 4096")
        check(self.max_headers >= 16, "max_headers", "must be at least 16")
        check(self.header_timeout > 0, "header_timeout", "must be greater than zero")
        check(self.max_body_bytes >= 65536, "max_body_bytes", "must be at least 65536")
        check(self.write_timeout > 0, "write_timeout", "must be greater than zero")
        check(self.keep_alive_timeout >= 1, "keep_alive_timeout", "must be at least 1")
        check(self.limit_concurrency >= 0, "limit_concurrency", "must not be negative")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)


@dataclass(frozen=True)
class HlsConfig:
    segment_duration: float = 2.0
    window: int = 6
    max_segment_bytes: int = 16 * 1024 * 1024
    grace_period: float = 10.0
    retain_ended: float = 60.0
    segment_format: str = "fmp4"
    low_latency: bool = True
    part_duration: float = 0.25
    # Parts in the lead of each run's first segment, listed as a media segment of its own
    # so that players start from parts sooner; 0 (the default): no lead.
    lead_parts: int = 0
    # tenant -> "ts", "fmp4" or "llhls" (fMP4 with low latency): that tenant's streams
    # are delivered so, whatever segment_format and low_latency say for the others.
    tenants: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.segment_format in ("ts", "fmp4"), "segment_format", "must be ts or fmp4")
        for tenant, mode in self.tenants.items():
            check(mode in DELIVERY, f"tenants.{tenant}", "must be ts, fmp4 or llhls")
        check(
            not self.low_latency or self.segment_format == "fmp4",
            "low_latency",
            "needs segment_format fmp4",
        )
        check(0.2 <= self.part_duration <= 1.0, "part_duration", "must be between 0.2 and 1.0")
        check(0.5 <= self.segment_duration <= 10, "segment_duration", "must be between 0.5 and 10")
        check(0 <= self.lead_parts <= 10, "lead_parts", "must be between 0 and 10")
        check(3 <= self.window <= 100, "window", "must be between 3 and 100")
        check(self.max_segment_bytes >= 65536, "max_segment_bytes", "must be at least 65536")
        check(self.grace_period >= 0, "grace_period", "must not be negative")
        check(self.retain_ended >= 0, "retain_ended", "must not be negative")

    def for_tenant(self, tenant: str) -> HlsConfig:
        """The HLS settings of one tenant's streams (``tenants`` overrides the format)."""
        mode = self.tenants.get(tenant)
        if mode is None:
            return self
        fmt, low = DELIVERY[mode]
        if (fmt, low) == (self.segment_format, self.low_latency):
            return self
        return replace(self, segment_format=fmt, low_latency=low, tenants={})


# hls.tenants values: (segment_format, low_latency).
DELIVERY = {"ts": ("ts", False), "fmp4": ("fmp4", False), "llhls": ("fmp4", True)}


@dataclass(frozen=True)
class RecordConfig:
    """Recording of live streams to disk as HLS video on demand (``record:`` section)."""

    dir: str = "recordings"
    # tenant -> "all" (every rendition) or "source" (the top rendition only).
    tenants: dict[str, str] = field(default_factory=dict)
    quota_bytes: int = 50 * 1024**3
    fsync: bool = True

    def __post_init__(self) -> None:
        check(bool(self.dir), "dir", "must not be empty")
        for tenant, mode in self.tenants.items():
            check(mode in ("all", "source"), f"tenants.{tenant}", "must be all or source")
        check(self.quota_bytes >= 1024 * 1024, "quota_bytes", "must be at least 1048576")


@dataclass(frozen=True)
class PlaybackConfig:
    """Signed playback tokens (action "play"), per tenant."""

    tenants: dict[str, TenantKeys] = field(default_factory=dict)

    def keys_for(self, tenant: str) -> dict[str, str] | None:
        """The tenant's keys when its viewers need a token, else None."""
        t = self.tenants.get(tenant)
        return t.keys if t is not None and t.require_token else None
