"""Reads the clock stamps burnt into video frames (:mod:`media.clock`).

:class:`StampDecoder` decodes HLS segments or parts in order with one decoder;
:func:`luma` gives the plane the stamp is read from, for WHEP frames too.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

from media.clock import read_stamp
from nearcast.playout import ProbeError


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane of a decoded frame, without a colour conversion when it is planar YUV."""
    if frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "nv12"):
        plane = frame.planes[0]
        rows: np.ndarray = np.frombuffer(memoryview(plane), np.uint8)
        return rows.reshape(frame.height, plane.line_size)[:, : frame.width]
    return frame.to_ndarray(format="gray")


class StampDecoder:
    """Decodes segments or parts in order with one persistent decoder and reads their stamps.

    Each frame comes back with the ``tag`` of the blob that carried it (the probe
    passes the time the blob was downloaded): with B-frames a decoder returns a
    frame one or two blobs later, but a player had its data, and could show it,
    when the blob that carried it arrived.
    """

    def __init__(self) -> None:
        self.init = b""
        self._ctx: av.VideoCodecContext | None = None
        self._tb: Fraction | None = None
        self._tags: dict[int, float] = {}

    def set_init(self, data: bytes) -> None:
        if data != self.init:
            self.init = data
            self._ctx = None

    def decode(self, blob: bytes, tag: float = 0.0) -> list[tuple[float | None, int | None, float]]:
        """``(pts seconds, stamp ms or None, tag)`` for every frame ``blob`` completes."""
        out: list[tuple[float | None, int | None, float]] = []
        try:
            container = av.open(io.BytesIO(self.init + blob), "r")
        except av.error.FFmpegError as exc:
            raise ProbeError(f"undecodable media ({len(blob)} bytes): {exc}") from None
        with container:
            if not container.streams.video:
                return out
            stream = container.streams.video[0]
            if self._ctx is None:
                ctx = av.CodecContext.create(stream.codec_context.name, "r")
                assert isinstance(ctx, av.VideoCodecContext)
                if stream.codec_context.extradata:
                    ctx.extradata = stream.codec_context.extradata
                self._ctx = ctx
            self._tb = stream.time_base or Fraction(1, 90000)
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                packet.time_base = self._tb
                if packet.pts is not None:
                    self._tags[packet.pts] = tag
                try:
                    frames = self._ctx.decode(packet)
                except av.error.FFmpegError:
                    continue  # a part before the first IDR: skipped, as a player would
                for frame in frames:
                    out.append(self._frame(frame, tag))
        if len(self._tags) > 1000:  # frames that never came out (a decode error)
            self._tags.clear()
        return out

    def _frame(self, frame: av.VideoFrame, tag: float) -> tuple[float | None, int | None, float]:
        pts = float(frame.pts * self._tb) if frame.pts is not None and self._tb else None
        if frame.pts is not None:
            tag = self._tags.pop(frame.pts, tag)
        return pts, read_stamp(luma(frame)), tag
