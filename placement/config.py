"""Configuration of the placement client and service (the ``placement:`` section)."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field

from settings import check
from tokens import TenantKeys

# An operator's name: it is written in the audit log and the logs, so a short plain word.
OPERATOR_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


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
    # Named operators (the console's login): name -> bearer token. Every operator
    # action is recorded with the name (GET /v1/audit); 'operator_token' is the
    # unnamed one.
    operators: dict[str, str] = field(default_factory=dict)
    # The nodes' 'ingest.operator_token': placement presents it to a session's node
    # when an operator kicks its publisher (POST /v1/sessions/{id}/kick).
    node_operator_token: str = ""
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
        self._check_operators()
        for tenant in self.publish_keys:
            check(bool(tenant), "publish_keys", "must name tenants (an empty name was given)")
        check(
            1024 <= self.max_body_bytes <= 16 * 1024 * 1024,
            "max_body_bytes",
            "must be 1024-16777216",
        )

    def _check_operators(self) -> None:
        seen: dict[str, str] = {}
        if self.operator_token:
            seen[self.operator_token] = "operator_token"
        for name, token in self.operators.items():
            key = f"operators.{name}"
            check(
                isinstance(name, str) and OPERATOR_NAME.match(name) is not None,
                key,
                "name must be 1-32 of a-z 0-9 _ -, starting with a letter",
            )
            check(isinstance(token, str) and token.strip() != "", key, "token must not be empty")
            other = seen.get(token)
            check(other is None, key, f"token must differ from the token of '{other}'")
            seen[token] = key

    def operator_named(self, token: str) -> str | None:
        """The name of the operator whose token ``token`` is (constant-time per token);
        ``"operator"`` for 'operator_token', None for no operator."""
        found = None
        for name, expected in self.operators.items():
            if _same_token(token, expected):
                found = name
        if _same_token(token, self.operator_token):
            found = found or UNNAMED_OPERATOR
        return found


UNNAMED_OPERATOR = "operator"


def _same_token(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())
