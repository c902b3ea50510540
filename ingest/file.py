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
        # Per stream: its kind, codec name and time base as integers (a packet's
        # Fraction arithmetic costs more than the rest of its conversion).
        info: dict[int, tuple[Literal["video", "audio"], str, int, int]] = {}
        for s in streams:
            kind: Literal["video", "audio"] = "video" if s is v else "audio"
            ctx = s.codec_context
            tb = s.time_base
            assert tb is not None
            info[s.index] = (kind, ctx.name, tb.numerator * 1000, tb.denominator)
            if ctx.extradata:
                yield MediaPacket(kind, ctx.name, 0, 0, bytes(ctx.extradata), config=True)
        for pkt in src.demux(streams):
            if pkt.size == 0 or pkt.pts is None or pkt.dts is None:
                continue
            pkind, codec, num, den = info[pkt.stream_index]
            yield MediaPacket(
                pkind,
                codec,
                _ms(pkt.pts * num, den),
                _ms(pkt.dts * num, den),
                bytes(pkt),
                pkt.is_keyframe,
            )


def _ms(ticks: int, den: int) -> int:
    """``int(Fraction(ticks, den))``: rounded toward zero, as before."""
    return ticks // den if ticks >= 0 else -(-ticks // den)
