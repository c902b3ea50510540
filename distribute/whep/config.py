"""Configuration of WebRTC playback (the ``webrtc:`` section).

The section's network keys (``ice_servers``, ``udp_port_min``/``udp_port_max``,
``announce_ips``) serve WHIP publishers as well: the node hands both one
:class:`media.icegather.IceNetwork` built from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from media.ice import IceServer, address_problem, port_range_problem, server_problem
from settings import check


@dataclass(frozen=True)
class WebRtcConfig:
    enabled: bool = True
    rendition: str = "360p"
    # Plain URL strings are the older form of a STUN entry: {urls: [URL]}.
    ice_servers: list[IceServer | str] = field(default_factory=list)
    udp_port_min: int = 0
    udp_port_max: int = 0
    announce_ips: list[str] = field(default_factory=list)
    max_viewers: int = 500
    viewer_queue_packets: int = 256
    connect_timeout: float = 15.0

    def __post_init__(self) -> None:
        for i, entry in enumerate(self.ice_servers):
            problem = server_problem(entry)
            if problem is not None:
                check(False, f"ice_servers[{i}]{problem[0]}", problem[1])
        ports = port_range_problem(self.udp_port_min, self.udp_port_max)
        if ports is not None:
            check(False, *ports)
        for i, ip in enumerate(self.announce_ips):
            problem_ip = address_problem(ip)
            check(problem_ip is None, f"announce_ips[{i}]", problem_ip or "")
        check(self.max_viewers >= 1, "max_viewers", "must be at least 1")
        check(self.viewer_queue_packets >= 16, "viewer_queue_packets", "must be at least 16")
        check(self.connect_timeout > 0, "connect_timeout", "must be greater than zero")
