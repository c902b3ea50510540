"""Configuration of WebRTC ingest (the ``whip:`` section of nearcast.yml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from settings import check


@dataclass(frozen=True)
class WhipConfig:
    ice_servers: list[str] = field(default_factory=list)
    connect_timeout: float = 15.0
    idle_timeout: float = 10.0
    keyframe_interval: float = 0.0
    max_offer_bytes: int = 65536

    def __post_init__(self) -> None:
        for url in self.ice_servers:
            check(
                url.split(":", 1)[0] in ("stun", "stuns"),
                "ice_servers",
                f"entry {url!r} must be a stun: or stuns: URL",
            )
        check(self.connect_timeout > 0, "connect_timeout", "must be greater than zero")
        check(self.idle_timeout > 0, "idle_timeout", "must be greater than zero")
        check(self.keyframe_interval >= 0, "keyframe_interval", "must be zero or more")
        check(self.max_offer_bytes >= 4096, "max_offer_bytes", "must be at least 4096")
