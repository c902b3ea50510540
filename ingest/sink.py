"""The seam between an ingest protocol and the rest of the node.

Every protocol server (RTMP now, WHIP next) maps its wire format to
:class:`media.MediaPacket` and hands packets to a :class:`Publication` it got
from the node's :class:`IngestSink`. The protocol servers know nothing about
transcoding or HLS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from media import MediaPacket, StreamKey


class PublishRefused(Exception):
    """The node will not take this publish. ``reason`` is a short metric label."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


@dataclass
class PublishRequest:
    key: StreamKey
    protocol: str
    remote: str
    query: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    # The publish token (RTMP: ?token= on the URL or stream key; WHIP: the bearer token).
    token: str | None = None
    # Closes the publisher's connection; the node calls it to kick a publisher, on takeover
    # and when a limit is exceeded. The argument is the reason (a metric label).
    disconnect: Callable[[str], None] | None = None


class Publication(Protocol):
    async def media(self, packet: MediaPacket) -> None: ...
    def metadata(self, values: dict[str, Any]) -> None: ...
    async def close(self) -> None: ...


class IngestSink(Protocol):
    async def open_publish(self, request: PublishRequest) -> Publication: ...
