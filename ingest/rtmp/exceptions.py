"""Errors raised by the sans-I/O RTMP core.

Everything a hostile or broken peer can trigger surfaces as :class:`RtmpProtocolError`
(a ``ValueError``), so the adapter needs exactly one ``except`` clause around
``ServerSession.receive_data`` to log the message and drop the connection.
"""

from __future__ import annotations


class RtmpProtocolError(ValueError):
    """The peer sent bytes that violate RTMP, AMF0 or FLV framing."""


class UnsupportedCodec(RtmpProtocolError):
    """An FLV tag names a codec that has no FFmpeg decoder mapping.

    Codecs FFmpeg *can* decode (even legacy ones such as ``flv1`` or ``mp3``) are
    not errors: :mod:`ingest.rtmp.flv` returns packets naming them and the adapter
    decides what it is willing to transcode. This error is only for codec ids and
    FourCCs we cannot name at all, or layouts we do not demultiplex (multitrack).
    """
