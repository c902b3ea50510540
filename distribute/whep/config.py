"""Configuration of WebRTC playback (the ``webrtc:`` section)."""

from __future__ import annotations

from dataclasses import dataclass, field

from settings import check


@dataclass(frozen=True)
class WebRtcConfig:
    enabled: bool = True
    rendition: str = "360p"
    ice_servers: list[str] = field(default_factory=list)
    max_viewers: int = 500
    viewer_queue_packets: int = 256
    connect_timeout: float = 15.0

    def __post_init__(self) -> None:
        for i, url in enumerate(self.ice_servers):
            check(
                url.startswith(("stun:", "turn:", "turns:")),
                f"ice_servers[{i}]",
                "must be a stun:, turn: or turns: URL",
            )
        check(self.max_viewers >= 1, "max_viewers", "must be at least 1")
        check(self.viewer_queue_packets >= 16, "viewer_queue_packets", "must be at least 16")
        check(self.connect_timeout > 0, "connect_timeout", "must be greater than zero")
