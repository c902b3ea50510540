"""Configuration of the edge pull relay (the ``relay:`` section)."""

from __future__ import annotations

from dataclasses import dataclass, field

from settings import check


@dataclass(frozen=True)
class RelayConfig:
    """A node asked for a stream it does not hold pulls it once from the node placement
    names, and serves its own viewers from its own store."""

    enabled: bool = False
    # No viewer request for this long: the relay stops pulling and frees the stream
    # (as OvenMediaEngine's UnusedStreamDeletionTimeout).
    idle_timeout: float = 60.0
    # Fleet relay keys (key id -> secret): a relay signs its pulls with one, and every
    # node accepts a pull signed with any of them for any guarded tenant.
    keys: dict[str, str] = field(default_factory=dict)
    # Key id this node signs its relay credentials with; empty: the first key listed.
    key_id: str = ""
    # Lifetime of one relay credential (seconds); it is renewed at half its lifetime.
    credential_lifetime: float = 300.0
    # How long a viewer's first request waits for the relay to have the playlist.
    first_wait: float = 4.0
    # Pull timeouts: connecting to the upstream, and reading one answer (a blocking
    # playlist request may be held three target durations on top of it).
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    # Streams relayed at once; a request for one more is answered 404.
    max_streams: int = 100

    def __post_init__(self) -> None:
        check(self.idle_timeout > 0, "idle_timeout", "must be greater than zero")
        for kid, secret in self.keys.items():
            check(bool(kid) and "." not in kid, f"keys.{kid}", "key id must be non-empty, no '.'")
            check(len(secret) >= 16, f"keys.{kid}", "secret must be at least 16 characters")
        check(not self.key_id or self.key_id in self.keys, "key_id", "must name one of 'keys'")
        check(
            30 <= self.credential_lifetime <= 86400,
            "credential_lifetime",
            "must be between 30 and 86400 seconds",
        )
        check(0 < self.first_wait <= 30, "first_wait", "must be greater than 0 and at most 30")
        check(self.connect_timeout > 0, "connect_timeout", "must be greater than zero")
        check(self.read_timeout > 0, "read_timeout", "must be greater than zero")
        check(self.max_streams >= 1, "max_streams", "must be at least 1")

    def signing_key(self) -> tuple[str, str] | None:
        """(key id, secret) relay credentials are signed with; None without keys."""
        if not self.keys:
            return None
        kid = self.key_id or next(iter(self.keys))
        return kid, self.keys[kid]
