"""WebRTC ingest over WHIP (RFC 9725), with aiortc."""

from ingest.whip.config import WhipConfig
from ingest.whip.server import PublishAuthorizer, WhipServer, allow_all, check_offer

__all__ = ["PublishAuthorizer", "WhipConfig", "WhipServer", "allow_all", "check_offer"]
