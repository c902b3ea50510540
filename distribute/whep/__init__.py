"""WebRTC playback (WHEP): viewers get the already-encoded packets of one rendition.

One :class:`~distribute.whep.fanout.TapFanout` per stream receives the worker's
TAP packets (H.264 of the chosen rendition, the stream's audio as Opus) and
hands each viewer its own bounded feed; aiortc only packetizes them into RTP.
Nothing is encoded per viewer.

The server is :mod:`distribute.whep.server`; this package exports only its
configuration, so that reading the node's configuration does not import aiortc.
"""

from distribute.whep.config import WebRtcConfig

__all__ = ["WebRtcConfig"]
