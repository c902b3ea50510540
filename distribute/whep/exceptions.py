"""Errors of WHEP session handling; the HTTP edge maps them to status codes."""


class WhepError(Exception):
    """Base class; the message names the stream or session at fault."""


class StreamNotFound(WhepError):
    """No live stream of that name offers WebRTC playback (404)."""


class SessionNotFound(WhepError):
    """No session with that id on that stream (404)."""


class BadOffer(WhepError, ValueError):
    """The SDP offer cannot be parsed or negotiated (400)."""


class TooManyViewers(WhepError):
    """The node's WebRTC viewer limit is reached (503)."""


class NoUdpPort(WhepError):
    """Every port of the node's WebRTC UDP range is in use (503)."""
