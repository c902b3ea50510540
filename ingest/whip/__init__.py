"""WebRTC ingest over WHIP (RFC 9725), with aiortc.

The server is :mod:`ingest.whip.server`; this package exports only its configuration, so
that reading the node's configuration does not import aiortc and FastAPI.
"""

from ingest.whip.config import WhipConfig

__all__ = ["WhipConfig"]
