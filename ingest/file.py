"""A media file as a source: its packets as a protocol server would deliver them.

``nearcast transcode`` feeds the ladder from a file this way, and tests and
benchmarks use it to drive a worker without a publisher.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import av

from media import MediaPacket


def file_packets(path: str) -> Iterator[MediaPacket]:
    """A file's packets as the ingest would deliver them: configs first, ms timestamps."""
    with av.open(path) as src:
        v = src.streams.video[0] if src.streams.video else None
        a = src.streams.audio[0] if src.streams.audio else None
        if v is None:
            raise ValueError(f"{path}: no video stream")
        streams = [s for s in (v, a) if s is not None]
        for s in streams:
            kind: Literal["video", "audio"] = "video" if s is v else "audio"
            extradata = s.codec_context.extradata
            if extradata:
                yield MediaPacket(kind, s.codec_context.name, 0, 0, bytes(extradata), config=True)
        for pkt in src.demux(streams):
            if pkt.size == 0 or pkt.pts is None or pkt.dts is None:
                continue
            tb = pkt.time_base
            pkind: Literal["video", "audio"] = "video" if pkt.stream is v else "audio"
            yield MediaPacket(
                pkind,
                pkt.stream.codec_context.name,
                int(pkt.pts * tb * 1000),
                int(pkt.dts * tb * 1000),
                bytes(pkt),
                pkt.is_keyframe,
            )
