"""The largest source a publisher may send, checked as soon as its size is known.

A 4K or 240 fps source costs a transcode worker several times what a 1080p60 one
does, and its publisher need not be honest about it. :class:`SourceGuard` is the
same for every protocol and does no I/O: the adapter hands it the publisher's
onMetaData and its video packets, and it raises
:class:`~ingest.sink.PublishRefused` when the source is over its
:class:`SourceLimits`:

- ``source_too_large``: onMetaData, an H.264 or HEVC SPS, or a VP8 key frame gives a
  picture size or frame rate over the limit;
- ``source_invalid``: a sequence header whose SPS cannot be read.

The SPS is what the decoder will use, so it decides: every sequence header is
checked (a publisher may change resolution mid-stream), and so is an SPS carried in
a key frame. onMetaData is only what the publisher claims; a claim over the limit is
refused all the same, since it arrives first. Codecs without a parser here (AV1,
VP9, the legacy FLV ones) are held to their onMetaData alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ingest.sink import PublishRefused
from media import VIDEO, MediaPacket, hevc, vp8
from media.h264 import AvcConfig, Sps
from media.h264 import parse_sps as parse_avc_sps

# A frame rate this close over the limit is the limit (59.94 and 60.0 both fit 60).
_FPS_SLACK = 1.001
# NAL units of a key frame looked at for an in-band SPS: encoders put it first.
_INBAND_NALS = 8


@dataclass(frozen=True, slots=True)
class SourceLimits:
    """Largest picture (either orientation: 1080x1920 fits 1920x1080) and frame rate;
    0 means no limit."""

    max_width: int = 0
    max_height: int = 0
    max_fps: float = 0.0

    def size_problem(self, width: float, height: float) -> str | None:
        if not (self.max_width or self.max_height):
            return None
        w: float = self.max_width or math.inf
        h: float = self.max_height or math.inf

        def fits(a: float, b: float) -> bool:
            return a <= w and b <= h

        if fits(width, height) or fits(height, width):
            return None
        return f"{width:g}x{height:g} is larger than {self._size()}"

    def fps_problem(self, fps: float) -> str | None:
        if self.max_fps and fps > self.max_fps * _FPS_SLACK:
            return f"{fps:g} fps is over {self.max_fps:g} fps"
        return None

    def _size(self) -> str:
        return f"{self.max_width or 'any'}x{self.max_height or 'any'}"

    @property
    def unlimited(self) -> bool:
        return not (self.max_width or self.max_height or self.max_fps)


class SourceGuard:
    """One publish's source, held to ``limits``. ``where`` names the stream in messages."""

    def __init__(self, limits: SourceLimits, where: str) -> None:
        self.limits = limits
        self.where = where
        self._length_size = 4  # of H.264 access units, from the latest avcC

    def _refuse(self, what: str, problem: str) -> PublishRefused:
        return PublishRefused(
            "source_too_large",
            f"{self.where}: the source is too large ({what}: {problem}); "
            "this node takes at most "
            f"{self.limits._size()} at {self.limits.max_fps or 'any'} fps "
            "(ingest.max_width, ingest.max_height, ingest.max_fps)",
        )

    def metadata(self, values: dict[str, Any]) -> None:
        """Check what onMetaData claims (width, height, framerate)."""
        if self.limits.unlimited:
            return
        width, height = _number(values.get("width")), _number(values.get("height"))
        if width and height:
            problem = self.limits.size_problem(width, height)
            if problem:
                raise self._refuse("onMetaData", problem)
        fps = _number(values.get("framerate")) or _number(values.get("fps"))
        if fps:
            problem = self.limits.fps_problem(fps)
            if problem:
                raise self._refuse("onMetaData", problem)

    def packet(self, packet: MediaPacket) -> None:
        """Check a video packet: sequence headers, and key frames that carry a size."""
        if packet.kind != VIDEO or self.limits.unlimited:
            return
        if packet.config:
            self._config(packet)
        elif packet.keyframe:
            if packet.codec == "h264":
                self._inband_h264(packet.data)
            elif packet.codec == "vp8":
                try:
                    size = vp8.keyframe_size(packet.data)
                except ValueError:
                    return  # the decoder drops it; no size to hold against the limit
                if size is not None:
                    self._check(Sps(*size), "VP8 key frame")

    def _config(self, packet: MediaPacket) -> None:
        try:
            if packet.codec == "h264":
                avc = AvcConfig.parse(packet.data)
                self._length_size = avc.length_size
                found = [parse_avc_sps(nal) for nal in avc.sps]
            elif packet.codec == "hevc":
                found = [hevc.parse_sps(nal) for nal in hevc.hvcc_sps(packet.data)]
            else:
                return
        except ValueError as exc:
            raise PublishRefused(
                "source_invalid", f"{self.where}: the {packet.codec} sequence header: {exc}"
            ) from None
        for sps in found:
            self._check(sps, f"{packet.codec} SPS")

    def _inband_h264(self, data: bytes) -> None:
        for nal in _first_nals(data, self._length_size, _INBAND_NALS):
            if nal and nal[0] & 0x1F == 7:
                try:
                    sps = parse_avc_sps(nal)
                except ValueError as exc:
                    raise PublishRefused(
                        "source_invalid", f"{self.where}: an in-band H.264 SPS: {exc}"
                    ) from None
                self._check(sps, "h264 SPS")

    def _check(self, sps: Sps, what: str) -> None:
        problem = self.limits.size_problem(sps.width, sps.height)
        if problem is None and sps.fps:
            problem = self.limits.fps_problem(sps.fps)
        if problem:
            raise self._refuse(what, problem)


def _number(value: Any) -> float:
    """A positive finite AMF number, else 0 (absent, a string, NaN...)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) and value > 0 else 0.0


def _first_nals(data: bytes, length_size: int, count: int) -> list[bytes]:
    """Up to ``count`` length-prefixed NAL units from the start of ``data``: a bounded
    walk, whatever number of NAL units a hostile access unit holds."""
    out: list[bytes] = []
    pos = 0
    while len(out) < count and pos + length_size <= len(data):
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        out.append(data[pos : pos + size])
        pos += size
    return out
