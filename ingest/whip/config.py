"""Configuration of WebRTC ingest (the ``whip:`` section of nearcast.yml).

WHIP's network settings (STUN/TURN servers, UDP ports, announced addresses) are
those of the ``webrtc:`` section, shared with WHEP playback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from settings import check


@dataclass(frozen=True)
class WhipConfig:
    # Moved to webrtc.ice_servers; kept only so that a file still naming it gets an
    # error saying where it went (an empty list, the old default, is accepted).
    ice_servers: list[str] = field(default_factory=list)
    connect_timeout: float = 15.0
    idle_timeout: float = 10.0
    keyframe_interval: float = 0.0
    max_offer_bytes: int = 65536

    def __post_init__(self) -> None:
        check(
            not self.ice_servers,
            "ice_servers",
            "has moved to 'webrtc.ice_servers', one list for WHIP and WHEP"
            " (its entries go there unchanged)",
        )
        check(self.connect_timeout > 0, "connect_timeout", "must be greater than zero")
        check(self.idle_timeout > 0, "idle_timeout", "must be greater than zero")
        check(self.keyframe_interval >= 0, "keyframe_interval", "must be zero or more")
        check(self.max_offer_bytes >= 4096, "max_offer_bytes", "must be at least 4096")
