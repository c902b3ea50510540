"""The seam between an ingest protocol and the rest of the node.

Every protocol server (RTMP now, WHIP next) maps its wire format to
:class:`media.MediaPacket` and hands packets to a :class:`Publication` it got
from the node's :class:`IngestSink`. The protocol servers know nothing about
transcoding or HLS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from media import MediaPacket, StreamKey

if TYPE_CHECKING:
    from ingest.source import SourceLimits


class PublishRefused(Exception):
    """The node will not take this publish. ``reason`` is a short metric label;
    ``retry_after`` (seconds, 0 for none) says when trying again may succeed."""

    def __init__(self, reason: str, description: str, retry_after: float = 0.0) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description
        self.retry_after = retry_after


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
    # Exempt from the per-address publish rate limit: for publishers that authenticate as
    # nodes of this fleet (relays), never for a client's own claim.
    exempt: bool = False
    # The largest source this publisher may send; the sink sets it when it accepts the
    # publish, and the protocol adapter holds the media to it (None: no limit).
    source_limits: SourceLimits | None = None


class Publication(Protocol):
    async def media(self, packet: MediaPacket) -> None: ...
    def metadata(self, values: dict[str, Any]) -> None: ...
    async def close(self) -> None: ...


class IngestSink(Protocol):
    async def open_publish(self, request: PublishRequest) -> Publication: ...
