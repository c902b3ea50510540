"""The one internal media model (STYLE rule 2).

Every ingest protocol maps what it receives to :class:`MediaPacket`; the
transcode stage consumes them, and hands distribution the packaged media of
:mod:`media.segments`. All packet timestamps are integer milliseconds, the
native clock of RTMP/FLV.
"""

from media.model import AUDIO, VIDEO, MediaKind, MediaPacket, StreamKey

__all__ = ["AUDIO", "VIDEO", "MediaKind", "MediaPacket", "StreamKey"]
