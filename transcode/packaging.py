"""Packaging fan-out: where a rung's encoded packets go.

:class:`Segmenter` feeds one rung's packets to the muxers: the MPEG-TS
segmenter, or the CMAF packager (init, LL-HLS parts, segments), plus a second
CMAF packager for the recorder beside MPEG-TS. :func:`tap_video` sends the tap
rendition's pictures to WebRTC viewers as TAP frames.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import av

from containers.cmaf import AudioFormat, CmafPackager, split_annexb
from containers.tsmux import TsSegmenter
from media import MediaPacket
from transcode.encoder import TICKS_PER_SECOND
from transcode.ladder import Rung
from transcode.output import Output
from transcode.protocol import (
    FrameType,
    encode_init,
    encode_packet,
    encode_part,
    encode_segment,
)
from transcode.spec import Spec


class Segmenter:
    """The rung's packaging: MPEG-TS segments, or CMAF init + parts + segments."""

    def __init__(
        self,
        rung: Rung,
        spec: Spec,
        audio: AudioFormat | None,
        out: Output,
        fps: Fraction,
        min_duration: float = 0.0,
    ) -> None:
        self.cmaf: CmafPackager | None = None
        self.ts: TsSegmenter | None = None
        # CMAF for the recorder beside MPEG-TS for viewers: the same encoded
        # packets, packaged twice, so recordings are fMP4 whatever viewers get.
        self.record: CmafPackager | None = None
        frame_ticks = max(1, round(TICKS_PER_SECOND / fps))
        # Where the stream's fMP4 timeline starts (see :class:`~containers.cmaf.CmafPackager`).
        origin_ms = spec.timeline_origin_ms
        origin = None if origin_ms is None else origin_ms * TICKS_PER_SECOND // 1000

        def cmaf(part_ticks: int, init: FrameType, seg: FrameType) -> CmafPackager:
            return CmafPackager(
                rung.name,
                width=rung.width,
                height=rung.height,
                frame_ticks=frame_ticks,
                audio=audio,
                part_ticks=part_ticks,
                on_init=lambda f: out.write(encode_init(f, init)),
                on_part=lambda f: out.write(encode_part(f)),
                on_segment=lambda f: out.write(encode_segment(f, seg)),
                timescale=TICKS_PER_SECOND,
                min_duration=min_duration,
                origin=origin,
            )

        if spec.segment_format == "fmp4":
            part_ticks = 0
            if spec.part_duration > 0:
                part_ticks = frames_per_part(spec.part_duration, fps) * frame_ticks
            self.cmaf = cmaf(part_ticks, FrameType.INIT, FrameType.SEGMENT)
        else:
            self.ts = TsSegmenter(
                rung.name,
                width=rung.width,
                height=rung.height,
                audio_rate=audio.sample_rate if audio else None,
                audio_channels=audio.channels if audio else 2,
                on_segment=lambda s: out.write(encode_segment(s)),
                min_duration=min_duration,
            )
            if spec.record_fmp4:
                self.record = cmaf(0, FrameType.RECORD_INIT, FrameType.RECORD_SEGMENT)

    def video(self, p: av.Packet[Any], nals: list[bytes] | None, index: int | None) -> None:
        """An encoded packet (90 kHz); ``nals`` its NAL units, for CMAF."""
        for cmaf in (self.cmaf, self.record):
            if cmaf is None or p.pts is None or p.dts is None:
                continue
            if nals is None:
                nals = split_annexb(bytes(p))
            cmaf.video(nals, int(p.pts), int(p.dts), p.is_keyframe, index)
        if self.ts is not None:  # last: muxing assigns the packet to the TS stream
            self.ts.video(p, index)

    def audio(self, ap: av.Packet[Any]) -> None:
        for cmaf in (self.cmaf, self.record):
            if cmaf is not None and ap.pts is not None:
                cmaf.audio(bytes(ap), int(ap.pts))
        if self.ts is not None:  # last: muxing assigns the packet to the TS stream
            self.ts.audio(ap)

    def flush(self) -> None:
        for packager in (self.cmaf, self.ts, self.record):
            if packager is not None:
                packager.flush()


def frames_per_part(part_duration: float, fps: Fraction) -> int:
    """Frames in an LL-HLS part: whole frames only, and never more than the part target
    (RFC 8216bis §4.4.4.9)."""
    return max(1, math.floor(part_duration * fps + Fraction(1, 10**6)))


def tap_video(out: Output, data: bytes, pts: int, dts: int, keyframe: bool, arrival: float) -> None:
    """One encoded picture for WebRTC viewers: Annex B, timestamps in ms."""
    mp = MediaPacket("video", "h264", round(pts / 90), round(dts / 90), data, keyframe)
    out.write(encode_packet(mp, arrival, FrameType.TAP))
