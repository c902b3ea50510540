"""Configuration of the ingest stage (the ``rtmp:`` section of nearcast.yml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nearcast.settings import check


@dataclass(frozen=True)
class RtmpConfig:
    listen: str = "0.0.0.0:1935"
    tenants: list[str] = field(default_factory=lambda: ["live"])
    chunk_size: int = 4096
    window_ack_size: int = 2_500_000
    handshake_timeout: float = 10.0
    idle_timeout: float = 20.0
    max_message_size: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        check(":" in self.listen, "listen", "must be HOST:PORT")
        check(len(self.tenants) > 0, "tenants", "must name at least one tenant")
        check(128 <= self.chunk_size <= 65536, "chunk_size", "must be between 128 and 65536")
        check(self.window_ack_size > 0, "window_ack_size", "must be greater than zero")
        check(self.handshake_timeout > 0, "handshake_timeout", "must be greater than zero")
        check(self.idle_timeout > 0, "idle_timeout", "must be greater than zero")
        check(self.max_message_size >= 65536, "max_message_size", "must be at least 65536")
