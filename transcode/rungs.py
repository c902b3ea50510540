"""The rung threads: one per rendition, fed by the decode loop through a queue.

:class:`RungEncoder` puts decoded pictures on the rung's constant-rate grid,
scales and encodes them, and applies the overload controller's settings at
segment boundaries. :class:`SourceRung` is the ``copy`` rendition: the
publisher's own H.264, re-framed without an encode. Both hand their packets to
a :class:`~transcode.packaging.Segmenter`.

Queue items are ``(kind, obj, t_ms, arrival)``: ``"v"`` a decoded picture,
``"src"`` a source packet, ``"a"`` an encoded audio packet; :data:`STOP` ends
the thread after a flush.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from fractions import Fraction
from typing import Any

import av
from av.video.frame import PictureType

from containers.cmaf import AudioFormat, split_annexb
from media import MediaPacket
from media.h264 import AvcConfig, split_nals, to_annexb
from media.ratelog import RateLimitedLog
from media.segments import lead_parts
from transcode.cfr import FrameRateConverter, exact_rate
from transcode.encoder import TICK, TICKS_PER_SECOND, faster_x264, open_video_encoder
from transcode.ladder import Rung
from transcode.output import Output
from transcode.packaging import Segmenter, frames_per_part, tap_video
from transcode.scale import Scaler
from transcode.spec import Spec

# One logger name for the whole worker process, whichever module logs.
log = logging.getLogger("transcode.worker")

STOP = object()


class RungEncoder:
    """Constant-rate, scale, encode and segment one rung, on its own thread."""

    def __init__(
        self,
        rung: Rung,
        spec: Spec,
        audio: AudioFormat | None,
        out: Output,
        origin_ms: int,
        max_gap_ms: int = 5_000,
    ) -> None:
        """``origin_ms``: this run's first picture, where the rung's grid starts."""
        self.rung = rung
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=4)
        self.frames_out = 0
        self.error: BaseException | None = None
        # Seconds from the node receiving a frame to this rung having encoded it.
        self.lag = 0.0
        # Set by the overload controller; applied on the next segment boundary,
        # where an IDR starts a new segment anyway, so the switch is invisible.
        self.preset_override: str | None = None
        self.suspended = False
        # Overload step 3: encode only every stride-th grid slot (IDRs always);
        # catch_up: only the IDRs, while far behind.
        self.stride = 1
        self.catch_up = False
        self.dropped = 0
        self._active = True
        self._spec = spec
        # Per-packet warnings, rate-limited: the input is the publisher's to choose.
        self._warn = RateLimitedLog(log)
        self._out = out
        self.tap = spec.tap == rung.name
        self.fps = exact_rate(rung.fps)
        self._frame_ticks = TICKS_PER_SECOND / self.fps  # exact Fraction
        self._origin = round(origin_ms * TICKS_PER_SECOND / 1000)
        # Segment n spans grid slots [n * fps * seg, (n + 1) * fps * seg).
        self._slots_per_segment = self.fps * Fraction(round(spec.segment_duration * 1000), 1000)
        self._gop_frames = max(1, round(self._slots_per_segment))
        # LL-HLS with hls.lead_parts: the store lists the run's first segment as a lead
        # of that many parts and the rest; a keyframe where the rest starts lets a player
        # that picks its start by time alone begin there (slots from the run's first
        # frame; None: none).
        lead = lead_parts(spec.segment_duration, spec.part_duration, spec.lead_parts)
        self._lead_keyframe: int | None = (
            lead * frames_per_part(spec.part_duration, self.fps) if lead else None
        )
        self._run_first_slot: int | None = None
        self._cfr = FrameRateConverter(
            self.fps, origin_ms, max_fill=math.ceil(max_gap_ms * self.fps / 1000) + 1
        )
        self._last_index: int | None = None
        self._last_frame: av.VideoFrame | None = None
        self._scaler = Scaler(rung.width, rung.height)
        self._indexes: dict[int, int] = {}
        self._arrivals: dict[int, float] = {}
        self.codec = rung.codec
        try:
            enc = self._open(rung.codec, rung)
        except (av.error.FFmpegError, ValueError) as exc:
            if rung.codec == "libx264":
                raise
            # A profile may name a hardware encoder the node does not have (no
            # GPU, no driver, sessions exhausted): serve the rung with x264.
            log.warning(
                "[%s] %s: encoder %s unavailable (%s); falling back to libx264",
                spec.stream,
                rung.name,
                rung.codec,
                exc,
            )
            self.codec = "libx264"
            enc = self._open("libx264", rung)
        if self.tap:
            log.info(
                "[%s] %s is the WebRTC tap: encoded without B-frames or lookahead "
                "(tune zerolatency)",
                spec.stream,
                rung.name,
            )
        self._enc = enc
        self._preset = rung.preset
        self._seg = Segmenter(rung, spec, audio, out, self.fps)
        self.thread = threading.Thread(target=self._run, name=f"rung-{rung.name}", daemon=True)

    def _open(self, codec: str, rung: Rung, x264_params: str = "") -> av.VideoCodecContext:
        return open_video_encoder(
            rung,
            codec,
            self._spec.x264_threads,
            self._gop_frames,
            low_delay=self.tap,
            x264_params=x264_params,
        )

    @property
    def duplicated(self) -> int:
        return self._cfr.duplicated

    def _drain(self, packets: Any) -> None:
        for p in packets:
            index = None
            if p.is_keyframe and p.pts is not None:
                index = self._indexes.pop(int(p.pts), None)
            nals = None
            if self.tap and p.pts is not None and p.dts is not None:
                data = bytes(p)
                nals = split_annexb(data)
                if p.is_keyframe and not any(n[0] & 0x1F == 7 for n in nals if n):
                    self._warn.warning("tap_idr", "[%s] tap IDR without SPS/PPS", self._spec.stream)
                tap_video(
                    self._out,
                    data,
                    int(p.pts),
                    int(p.dts),
                    p.is_keyframe,
                    self._arrivals.pop(int(p.pts), 0.0),
                )
            self._seg.video(p, nals, index)

    def _boundary(self) -> None:
        """At a grid boundary: apply preset changes and suspension."""
        want = self.preset_override or self.rung.preset
        if self.suspended and self._active:
            self._drain(self._enc.encode(None))
            self._seg.flush()
            self._active = False
            self._reopen(want)
        elif not self.suspended and not self._active:
            self._active = True
        if self._active and want != self._preset and self.codec == "libx264":
            self._drain(self._enc.encode(None))
            self._reopen(want)

    def _reopen(self, preset: str) -> None:
        if preset == self.rung.preset or self.codec != "libx264":
            self._enc = self._open(self.codec, dataclasses.replace(self.rung, preset=preset))
        else:
            # Overload's faster preset, with the rung's own parameter sets where x264
            # can keep them: the same init segment goes on (transcode.encoder).
            threads, gop = self._spec.x264_threads, self._gop_frames
            name, params, kept = faster_x264(self.rung, preset, threads, gop, low_delay=self.tap)
            log.info(
                "[%s] %s: x264 preset %s%s, %s",
                self._spec.stream,
                self.rung.name,
                name,
                f" ({params})" if params else "",
                "same parameter sets" if kept else "new parameter sets and init segment",
            )
            self._enc = self._open(self.codec, dataclasses.replace(self.rung, preset=name), params)
        self._preset = preset

    def _scaled(self, frame: av.VideoFrame) -> av.VideoFrame:
        return self._scaler.scale(frame)

    def _slot(self, frame: av.VideoFrame, n: int, arrival: float) -> None:
        """Encode ``frame`` as grid slot ``n`` (an IDR when a new segment starts there)."""
        index = int(n * self._slots_per_segment.denominator // self._slots_per_segment.numerator)
        boundary = index != self._last_index
        if boundary:
            self._last_index = index
            self._boundary()
        if not self._active:
            return
        if not boundary and (self.catch_up or (self.stride > 1 and n % self.stride)):
            self.dropped += 1
            return
        pts = self._origin + round(n * self._frame_ticks)
        frame.pts = pts
        frame.time_base = TICK
        if self._run_first_slot is None:
            self._run_first_slot = n
        if boundary:
            frame.pict_type = PictureType.I
            self._indexes[pts] = index
        elif (
            self._lead_keyframe is not None
            and index == 0
            and n - self._run_first_slot == self._lead_keyframe
        ):
            # Within segment 0 (no index: the segment goes on), where its lead ends.
            frame.pict_type = PictureType.I
        else:
            frame.pict_type = PictureType.NONE
        if self.tap and arrival:
            self._arrivals[pts] = arrival
            while len(self._arrivals) > 64:
                self._arrivals.pop(next(iter(self._arrivals)))
        self._drain(self._enc.encode(frame))
        self.frames_out += 1

    def _run(self) -> None:
        stopped = False
        try:
            while True:
                item = self.queue.get()
                if item is STOP:
                    # Taken now: the final flush below may fail (a node gone, a pipe
                    # broken), and the drain loop must not wait for a second STOP.
                    stopped = True
                    if self._active:
                        self._drain(self._enc.encode(None))
                    self._seg.flush()
                    return
                kind, obj, t_ms, arrival = item
                if kind == "a":
                    self._seg.audio(obj)
                    continue
                fill, slot = self._cfr.push(t_ms)
                if self._last_frame is not None:
                    # An input gap or a late frame: repeat the last picture,
                    # as FFmpeg's fps filter does.
                    for n in fill:
                        self._slot(self._last_frame, n, 0.0)
                if slot is not None:
                    scaled = self._scaled(obj)
                    self._last_frame = scaled
                    self._slot(scaled, slot, arrival)
                if arrival:
                    self.lag = time.time() - arrival
        except BaseException as exc:  # reported to the node by the main thread
            self.error = exc
            log.exception("rung %s failed", self.rung.name)
            while not stopped:  # keep draining so the decoder never blocks on us
                stopped = self.queue.get() is STOP


class SourceRung:
    """The ``copy`` rendition: the publisher's own H.264, re-framed, no encode.

    Its timing is the publisher's (mapped onto the worker's monotonic timeline):
    without an encode there is no constant frame rate to enforce.
    """

    def __init__(
        self, rung: Rung, spec: Spec, audio: AudioFormat | None, out: Output, avc: AvcConfig
    ) -> None:
        self.rung = rung
        self.codec = "copy"
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=64)
        self.frames_out = 0
        self.error: BaseException | None = None
        self.avc = avc
        self.tap = spec.tap == rung.name
        self._out = out
        self._spec = spec
        # Per-packet warnings, rate-limited: the input is the publisher's to choose.
        self._warn = RateLimitedLog(log)
        self._seg = Segmenter(
            rung,
            spec,
            audio,
            out,
            exact_rate(rung.fps or 30.0),
            min_duration=spec.segment_duration * 0.9,
        )
        self._warned_bframes = False
        self.thread = threading.Thread(target=self._run, name=f"rung-{rung.name}", daemon=True)

    def _run(self) -> None:
        stopped = False
        try:
            while True:
                item = self.queue.get()
                if item is STOP:
                    stopped = True  # as in RungEncoder._run
                    self._seg.flush()
                    return
                kind, obj, _, arrival = item
                if kind == "a":
                    self._seg.audio(obj)
                    continue
                if kind != "src":
                    continue
                mp: MediaPacket = obj
                try:
                    nals = split_nals(mp.data, self.avc.length_size)
                    data = to_annexb(mp.data, self.avc, mp.keyframe)
                except ValueError as exc:
                    self._warn.warning(
                        "dropped",
                        "[source %s] packet at %d ms dropped: %s",
                        self.rung.name,
                        mp.dts,
                        exc,
                    )
                    continue
                if mp.keyframe:
                    nals = [*self.avc.sps, *self.avc.pps, *nals]
                p = av.Packet(data)
                p.pts, p.dts, p.time_base = mp.pts * 90, mp.dts * 90, TICK
                p.is_keyframe = mp.keyframe
                if self.tap:
                    if mp.pts != mp.dts and not self._warned_bframes:
                        self._warned_bframes = True
                        log.warning(
                            "[%s] the source has B-frames: WebRTC viewers of %s will see stutter",
                            self._spec.stream,
                            self.rung.name,
                        )
                    tap_video(self._out, data, mp.pts * 90, mp.dts * 90, mp.keyframe, arrival)
                self._seg.video(p, nals, None)
                self.frames_out += 1
        except BaseException as exc:
            self.error = exc
            log.exception("source rung %s failed", self.rung.name)
            while not stopped:
                stopped = self.queue.get() is STOP
