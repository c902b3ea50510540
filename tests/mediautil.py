"""Helpers shared by the media tests: read a file's packets as the ingest would see them."""

from __future__ import annotations

from collections.abc import Iterator

import av

from media import MediaPacket


def file_packets(path: str, limit_s: float | None = None) -> Iterator[MediaPacket]:
    """Config records first, then every packet in ms, as RTMP would carry them."""
    with av.open(path) as src:
        v = src.streams.video[0]
        a = src.streams.audio[0] if src.streams.audio else None
        yield MediaPacket("video", "h264", 0, 0, bytes(v.codec_context.extradata), config=True)
        if a is not None:
            yield MediaPacket("audio", "aac", 0, 0, bytes(a.codec_context.extradata), config=True)
        for pkt in src.demux():
            if pkt.size == 0 or pkt.pts is None or pkt.dts is None:
                continue
            tb = pkt.time_base
            pts, dts = int(pkt.pts * tb * 1000), int(pkt.dts * tb * 1000)
            if limit_s is not None and dts > limit_s * 1000:
                break
            kind = "video" if pkt.stream.type == "video" else "audio"
            codec = "h264" if kind == "video" else "aac"
            yield MediaPacket(kind, codec, pts, dts, bytes(pkt), pkt.is_keyframe)
