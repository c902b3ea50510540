"""The transcode worker: one child process per live stream.

Run as ``python -m transcode.worker``. It reads framed compressed packets on
stdin (see :mod:`transcode.protocol`), decodes each once, scales and encodes
every rung of the ladder, and writes finished MPEG-TS segments on stdout.

Threading follows the measurements in the performance notes: the main thread
reads and decodes; one thread per rung scales (its own swscale context, one
swscale thread) and encodes. PyAV releases the GIL in decode, scale, encode and
mux, so the rungs run in parallel on all cores.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, BinaryIO

import av
import av.video.reformatter
from av.audio.resampler import AudioResampler
from av.video.frame import PictureType

from containers.cmaf import AudioFormat, CmafPackager, split_annexb
from containers.fmp4 import audio_specific_config
from containers.tsmux import TsSegmenter
from media import MediaPacket
from media.h264 import AvcConfig, split_nals, to_annexb
from transcode.cfr import FrameRateConverter, Timeline, exact_rate
from transcode.config import AudioProfile, Rendition
from transcode.ladder import Rung, plan
from transcode.protocol import (
    FrameReader,
    FrameType,
    decode_packet,
    encode_init,
    encode_json,
    encode_packet,
    encode_part,
    encode_segment,
)

log = logging.getLogger("transcode.worker")

MS = Fraction(1, 1000)
TICKS_PER_SECOND = 90_000
TICK = Fraction(1, TICKS_PER_SECOND)
# Opus for the WebRTC tap: 48 kHz, 20 ms frames (RFC 7587).
OPUS_RATE = 48_000
OPUS_FRAME = 960
_STOP = object()
# Overload steps, in the order they are taken (issue: graceful overload).
DEGRADE_STEPS = ("faster_preset", "drop_top_rung", "drop_frames")


@dataclass
class Spec:
    """What the node asks of a worker (sent as the START frame)."""

    stream: str
    ladder: list[Rendition]
    audio: AudioProfile = field(default_factory=AudioProfile)
    segment_duration: float = 2.0
    x264_threads: int = 0
    fps_hint: float = 0.0
    live: bool = True
    degrade_lag: float = 1.5
    recover_after: float = 10.0
    # "ts" (MPEG-TS segments) or "fmp4" (CMAF: INIT frame, then fMP4 segments).
    segment_format: str = "ts"
    # LL-HLS part target in seconds; 0 sends no PART frames. Only with "fmp4".
    part_duration: float = 0.0
    # Rendition whose encoded H.264 packets, plus the stream's audio as Opus,
    # are sent as TAP frames for WebRTC viewers; empty sends none.
    tap: str = ""
    # With "ts": also package CMAF (RECORD_INIT / RECORD_SEGMENT frames) for the
    # recorder, so recordings are fMP4 whatever the viewers' format.
    record_fmp4: bool = False

    def __post_init__(self) -> None:
        if self.segment_format not in ("ts", "fmp4"):
            raise ValueError(f"segment_format must be ts or fmp4, not {self.segment_format!r}")
        if self.part_duration < 0 or (self.part_duration and self.segment_format != "fmp4"):
            raise ValueError("part_duration needs segment_format fmp4 and must not be negative")

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Spec:
        return cls(
            stream=str(obj["stream"]),
            ladder=[Rendition(**r) for r in obj["ladder"]],
            audio=AudioProfile(**obj.get("audio", {})),
            segment_duration=float(obj.get("segment_duration", 2.0)),
            x264_threads=int(obj.get("x264_threads", 0)),
            fps_hint=float(obj.get("fps_hint", 0.0)),
            live=bool(obj.get("live", True)),
            degrade_lag=float(obj.get("degrade_lag", 1.5)),
            recover_after=float(obj.get("recover_after", 10.0)),
            segment_format=str(obj.get("segment_format", "ts")),
            part_duration=float(obj.get("part_duration", 0.0)),
            tap=str(obj.get("tap", "")),
            record_fmp4=bool(obj.get("record_fmp4", False)),
        )


class Output:
    """Thread-safe framed writer to the node."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._fh.write(data)
            self._fh.flush()


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
# x264 preset names mapped onto NVENC's p1 (fastest) .. p7 (best).
NVENC_PRESETS = {
    "ultrafast": "p1",
    "superfast": "p1",
    "veryfast": "p2",
    "faster": "p3",
    "fast": "p4",
    "medium": "p4",
    "slow": "p6",
}


def open_video_encoder(
    rung: Rung, codec: str, threads: int, gop_frames: int, *, low_delay: bool = False
) -> av.VideoCodecContext:
    """``low_delay``: no B-frames and no lookahead (the WebRTC tap rendition)."""
    enc = av.CodecContext.create(codec, "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width = rung.width
    enc.height = rung.height
    enc.pix_fmt = "yuv420p"
    # 90 kHz: exact frame durations at every common rate (3003 ticks at 29.97).
    enc.time_base = TICK
    enc.framerate = exact_rate(rung.fps)
    enc.bit_rate = rung.video_bitrate
    enc.gop_size = gop_frames * 2
    enc.sample_aspect_ratio = Fraction(1, 1)
    tune = "zerolatency" if low_delay else rung.tune
    # AUTO threading must be chosen before the codec opens: PyAV's default
    # is SLICE, which costs 1.76x wall time on this ladder. zerolatency is the
    # exception: frame threads would hold back (threads - 1) pictures, and
    # FFmpeg only lets x264 use sliced threads when SLICE alone is asked for.
    enc.thread_type = "SLICE" if tune == "zerolatency" else "AUTO"
    enc.thread_count = threads
    opts = {
        "maxrate": str(rung.maxrate),
        "bufsize": str(rung.bufsize),
        "forced-idr": "1",
        "profile": rung.profile,
        "level": rung.level,
    }
    if codec == "libx264":
        opts["preset"] = rung.preset
        if tune:
            opts["tune"] = tune
        # IDRs come only from the PTS grid the decoder thread forces;
        # scene cuts would break cross-rendition alignment.
        opts["x264-params"] = f"keyint={gop_frames * 2}:min-keyint={gop_frames}:scenecut=0"
        if low_delay:
            opts["x264-params"] += ":bframes=0"
    elif codec.endswith("_nvenc"):
        opts["preset"] = NVENC_PRESETS.get(rung.preset, rung.preset)
        opts["no-scenecut"] = "1"
        opts["bf"] = "0"
        if tune in ("zerolatency", "ull", "ll"):
            opts["tune"] = "ull" if tune == "zerolatency" else tune
            opts["zerolatency"] = "1"
    else:
        opts["preset"] = rung.preset
    enc.options = opts
    enc.open()
    return enc


class _Segmenter:
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
            )

        if spec.segment_format == "fmp4":
            part_ticks = 0
            if spec.part_duration > 0:
                # Whole frames only, and never more than the part target (RFC 8216bis §4.4.4.9).
                per_part = max(1, math.floor(spec.part_duration * fps + Fraction(1, 10**6)))
                part_ticks = per_part * frame_ticks
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


def _tap_video(
    out: Output, data: bytes, pts: int, dts: int, keyframe: bool, arrival: float
) -> None:
    """One encoded picture for WebRTC viewers: Annex B, timestamps in ms."""
    mp = MediaPacket("video", "h264", round(pts / 90), round(dts / 90), data, keyframe)
    out.write(encode_packet(mp, arrival, FrameType.TAP))


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
        self._out = out
        self.tap = spec.tap == rung.name
        self.fps = exact_rate(rung.fps)
        self._frame_ticks = TICKS_PER_SECOND / self.fps  # exact Fraction
        self._origin = round(origin_ms * TICKS_PER_SECOND / 1000)
        # Segment n spans grid slots [n * fps * seg, (n + 1) * fps * seg).
        self._slots_per_segment = self.fps * Fraction(round(spec.segment_duration * 1000), 1000)
        self._gop_frames = max(1, round(self._slots_per_segment))
        self._cfr = FrameRateConverter(
            self.fps, origin_ms, max_fill=math.ceil(max_gap_ms * self.fps / 1000) + 1
        )
        self._last_index: int | None = None
        self._last_frame: av.VideoFrame | None = None
        self._scaler = av.video.reformatter.VideoReformatter()
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
        self._seg = _Segmenter(rung, spec, audio, out, self.fps)
        self.thread = threading.Thread(target=self._run, name=f"rung-{rung.name}", daemon=True)

    def _open(self, codec: str, rung: Rung) -> av.VideoCodecContext:
        return open_video_encoder(
            rung, codec, self._spec.x264_threads, self._gop_frames, low_delay=self.tap
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
                    log.warning("[%s] tap IDR without SPS/PPS", self._spec.stream)
                _tap_video(
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
        self._enc = self._open(self.codec, dataclasses.replace(self.rung, preset=preset))
        self._preset = preset

    def _scaled(self, frame: av.VideoFrame) -> av.VideoFrame:
        if (
            frame.width != self.rung.width
            or frame.height != self.rung.height
            or (frame.format.name != "yuv420p")
        ):
            return self._scaler.reformat(
                frame,
                width=self.rung.width,
                height=self.rung.height,
                format="yuv420p",
                interpolation="BICUBIC",
                threads=1,
            )
        return frame

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
        if boundary:
            frame.pict_type = PictureType.I
            self._indexes[pts] = index
        else:
            frame.pict_type = PictureType.NONE
        if self.tap and arrival:
            self._arrivals[pts] = arrival
            while len(self._arrivals) > 64:
                self._arrivals.pop(next(iter(self._arrivals)))
        self._drain(self._enc.encode(frame))
        self.frames_out += 1

    def _run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is _STOP:
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
            while True:  # keep draining so the decoder never blocks on us
                if self.queue.get() is _STOP:
                    return


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
        self._seg = _Segmenter(
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
        try:
            while True:
                item = self.queue.get()
                if item is _STOP:
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
                    log.warning(
                        "[source %s] packet at %d ms dropped: %s", self.rung.name, mp.dts, exc
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
                    _tap_video(self._out, data, mp.pts * 90, mp.dts * 90, mp.keyframe, arrival)
                self._seg.video(p, nals, None)
                self.frames_out += 1
        except BaseException as exc:
            self.error = exc
            log.exception("source rung %s failed", self.rung.name)
            while self.queue.get() is not _STOP:
                pass


class Pipeline:
    def __init__(self, spec: Spec, out: Output) -> None:
        self.spec = spec
        self.out = out
        self._vdec: Any = None  # av.VideoCodecContext once the first video packet arrives
        self._adec: Any = None  # av.AudioCodecContext
        self._aenc: av.AudioCodecContext | None = None
        self._resampler: AudioResampler | None = None
        self._rungs: list[RungEncoder | SourceRung] = []
        self._avc: AvcConfig | None = None
        self._t0: int | None = None
        self._timeline = Timeline()
        self._video_dts: list[int] = []
        self._audio_seen = False
        self._audio_next: int | None = None  # next audio pts, in samples
        self.frames_in = 0
        self.level = 0
        self._opus: av.AudioCodecContext | None = None
        self._opus_resampler: AudioResampler | None = None
        self._opus_next: int | None = None
        self._src_backlog: list[tuple[MediaPacket, float]] = []
        self._arrivals: dict[int, float] = {}
        self._last_control = time.monotonic()
        self._level_changed = 0.0
        self._calm_since: float | None = None
        self._last_stats = time.monotonic()
        self._started = time.monotonic()
        self._media_ms = 0

    # -- decoders ------------------------------------------------------------

    def _open_video(self, pkt: MediaPacket) -> None:
        if pkt.codec not in ("h264", "hevc", "av1", "vp8", "vp9"):
            raise ValueError(f"video codec {pkt.codec!r} cannot be transcoded")
        dec = av.CodecContext.create(pkt.codec, "r")
        if pkt.config:
            dec.extradata = pkt.data
            if pkt.codec == "h264":
                try:
                    self._avc = AvcConfig.parse(pkt.data)
                except ValueError as exc:
                    log.warning(
                        "[%s] %s; the source cannot be passed through", self.spec.stream, exc
                    )
        # Frame threads hold back (threads - 1) pictures; with LL-HLS parts or a
        # WebRTC tap that latency matters more than the decoder's throughput
        # (decode runs ~25x real time on one core anyway).
        low_latency = self.spec.part_duration > 0 or bool(self.spec.tap)
        dec.thread_type = "SLICE" if low_latency else "AUTO"
        self._vdec = dec

    def _open_audio(self, pkt: MediaPacket) -> None:
        if pkt.codec not in ("aac", "opus", "mp3"):
            raise ValueError(f"audio codec {pkt.codec!r} cannot be transcoded")
        dec = av.CodecContext.create(pkt.codec, "r")
        if pkt.config:
            dec.extradata = pkt.data
        self._adec = dec
        self._audio_seen = True

    def _start_rungs(self, frame: av.VideoFrame) -> None:
        fps = self.spec.fps_hint or self._estimate_fps()
        rungs = plan(self.spec.ladder, frame.width, frame.height, fps)
        audio_rate = self.spec.audio.sample_rate if self._audio_seen else None
        audio: AudioFormat | None = None
        if audio_rate:
            a = self.spec.audio
            aenc = av.CodecContext.create(a.codec, "w")
            assert isinstance(aenc, av.AudioCodecContext)
            aenc.sample_rate = a.sample_rate
            aenc.layout = "stereo" if a.channels == 2 else "mono"
            aenc.format = "fltp"
            aenc.bit_rate = a.bitrate
            aenc.time_base = Fraction(1, a.sample_rate)
            aenc.open()
            self._aenc = aenc
            self._resampler = AudioResampler(
                format="fltp", layout=aenc.layout, rate=a.sample_rate, frame_size=aenc.frame_size
            )
            asc = bytes(aenc.extradata or b"") or audio_specific_config(a.sample_rate, a.channels)
            audio = AudioFormat(a.sample_rate, a.channels, asc, aenc.frame_size or 1024, a.bitrate)
            if self.spec.tap:
                try:
                    self._open_opus()
                except (av.error.FFmpegError, ValueError) as exc:
                    # WebRTC viewers then get video only; HLS is unaffected.
                    log.warning("[%s] no Opus encoder for the tap (%s)", self.spec.stream, exc)
                    self._opus = None
        if any(r.codec == "copy" for r in rungs) and self._avc is None:
            raise ValueError("only H.264 with a sequence header can be passed through as 'copy'")
        self._rungs = [
            SourceRung(r, self.spec, audio, self.out, self._avc)  # type: ignore[arg-type]
            if r.codec == "copy"
            else RungEncoder(
                r, self.spec, audio, self.out, int(frame.pts or 0), self._timeline.max_gap_ms
            )
            for r in rungs
        ]
        if self.spec.tap and not any(r.tap for r in self._rungs):
            log.warning(
                "[%s] tap rendition %r is not in this stream's ladder; WebRTC gets no video",
                self.spec.stream,
                self.spec.tap,
            )
        for r in self._rungs:
            r.thread.start()
            if isinstance(r, SourceRung):
                for pkt, arrival in self._src_backlog:
                    r.queue.put(("src", pkt, None, arrival))
        self._src_backlog.clear()
        self.out.write(
            encode_json(
                FrameType.RENDITIONS,
                {
                    "source": {"width": frame.width, "height": frame.height, "fps": fps},
                    "audio": bool(audio_rate),
                    "renditions": [
                        {
                            "name": r.name,
                            "width": r.width,
                            "height": r.height,
                            "fps": r.fps,
                            "video_bitrate": r.video_bitrate,
                            "maxrate": r.maxrate,
                            "audio_bitrate": self.spec.audio.bitrate if audio_rate else 0,
                            "encoder": enc.codec,
                        }
                        for r, enc in zip(rungs, self._rungs, strict=True)
                    ],
                },
            )
        )
        log.info(
            "[%s] source %dx%d@%.2f -> %s",
            self.spec.stream,
            frame.width,
            frame.height,
            fps,
            ", ".join(f"{r.name} {r.width}x{r.height}" for r in rungs),
        )

    def _open_opus(self) -> None:
        """The tap's audio: encoded to Opus once per stream, whatever the viewers."""
        a = self.spec.audio
        enc = av.CodecContext.create("libopus", "w")
        assert isinstance(enc, av.AudioCodecContext)
        enc.sample_rate = OPUS_RATE
        enc.layout = "stereo" if a.channels == 2 else "mono"
        enc.format = "flt"
        enc.bit_rate = min(a.bitrate, 128_000)
        enc.time_base = Fraction(1, OPUS_RATE)
        enc.options = {"frame_duration": "20", "application": "audio"}
        enc.open()
        self._opus = enc
        self._opus_resampler = AudioResampler(
            format="flt", layout=enc.layout, rate=OPUS_RATE, frame_size=OPUS_FRAME
        )

    def _estimate_fps(self) -> float:
        d = sorted(
            b - a for a, b in zip(self._video_dts, self._video_dts[1:], strict=False) if b > a
        )
        if not d:
            return 30.0
        median = d[len(d) // 2]
        fps = 1000.0 / median
        # Snap to the common broadcast rates; ms timestamps jitter by one tick.
        for std in (60.0, 59.94, 50.0, 30.0, 29.97, 25.0, 24.0, 23.976, 15.0):
            if abs(fps - std) / std < 0.04:
                return std
        return round(fps, 3)

    # -- packets ---------------------------------------------------------------

    def feed(self, pkt: MediaPacket, arrival: float = 0.0) -> None:
        if pkt.kind == "video":
            if pkt.config or self._vdec is None:
                self._open_video(pkt)
                if pkt.config:
                    return
            self._decode_video(self._map(pkt, 33), arrival)
        else:
            if pkt.config or self._adec is None:
                self._open_audio(pkt)
                if pkt.config:
                    return
            self._decode_audio(self._map(pkt, 21))
        now = time.monotonic()
        if self.spec.live and now - self._last_control >= 0.5:
            self._last_control = now
            self._control(now)
        self._maybe_stats()

    def _map(self, pkt: MediaPacket, step_ms: int) -> MediaPacket:
        """The packet on the worker's monotonic timeline (see :class:`transcode.cfr.Timeline`)."""
        jumps = self._timeline.jumps
        dts = self._timeline.map(pkt.kind, pkt.dts, step_ms)
        if self._timeline.jumps != jumps:
            log.warning(
                "[%s] %s clock jumped at %d ms; continuing the timeline at %d ms",
                self.spec.stream,
                pkt.kind,
                pkt.dts,
                dts,
            )
        off = dts - pkt.dts
        if not off:
            return pkt
        return dataclasses.replace(pkt, pts=pkt.pts + off, dts=dts)

    def _decode_video(self, pkt: MediaPacket, arrival: float) -> None:
        assert self._vdec is not None
        if len(self._video_dts) < 30:
            self._video_dts.append(pkt.dts)
        if not self._rungs:
            # The ladder opens on the first decoded picture, frames after the first
            # packet: hold what a passthrough rung will need, its first IDR included.
            self._src_backlog.append((pkt, arrival))
            del self._src_backlog[:-256]
        for r in self._rungs:
            if isinstance(r, SourceRung):
                r.queue.put(("src", pkt, None, arrival))
        if self._rungs and not self._encoders:
            return  # passthrough only: no picture is ever needed again
        if arrival:
            self._arrivals[pkt.pts] = arrival
            if len(self._arrivals) > 256:
                self._arrivals.pop(next(iter(self._arrivals)))
        frames = self._decode(self._vdec, pkt)
        for frame in frames:
            self._on_frame(frame)

    def _on_frame(self, frame: av.VideoFrame) -> None:
        if frame.pts is None:
            return
        self.frames_in += 1
        if not self._rungs:
            self._start_rungs(frame)
        t = int(frame.pts)
        arrival = self._arrivals.pop(t, 0.0)
        if self._t0 is None:
            self._t0 = t
        self._media_ms = max(self._media_ms, t)
        # Far behind: only the segment boundaries' IDRs are encoded until caught up.
        catch_up = self._catching_up()
        for r in self._encoders:
            r.catch_up = catch_up
            r.queue.put(("v", frame, t, arrival))

    # -- overload --------------------------------------------------------------------

    def _lag(self) -> float:
        return max((r.lag for r in self._encoders if not r.suspended), default=0.0)

    def _catching_up(self) -> bool:
        return self.spec.live and self.level >= 3 and self._lag() > 3 * self.spec.degrade_lag

    def _control(self, now: float) -> None:
        """Step down when behind real time, back up when calm (logged, counted by the node)."""
        if not self._encoders:
            return
        lag = self._lag()
        limit = self.spec.degrade_lag
        if lag > limit:
            self._calm_since = None
            if self.level < 3 and now - self._level_changed >= 2.0:
                self._set_level(self.level + 1, lag, now)
        elif lag < limit / 2:
            if self._calm_since is None:
                self._calm_since = now
            elif self.level > 0 and now - self._calm_since >= self.spec.recover_after:
                self._set_level(self.level - 1, lag, now)
                self._calm_since = now
        else:
            self._calm_since = None

    def _set_level(self, level: int, lag: float, now: float) -> None:
        up = level > self.level
        step = DEGRADE_STEPS[max(level, self.level) - 1]
        log.warning(
            "[%s] %s %s (lag %.2f s)",
            self.spec.stream,
            "degrading:" if up else "recovering:",
            step,
            lag,
        )
        self.level = level
        self._level_changed = now
        for r in self._encoders:
            r.preset_override = "ultrafast" if level >= 1 else None
        if len(self._encoders) > 1:
            top = max(self._encoders, key=lambda r: r.rung.width * r.rung.height)
            top.suspended = level >= 2
        for r in self._encoders:
            r.stride = 2 if level >= 3 else 1
        self.out.write(
            encode_json(
                FrameType.STATS,
                {"degradation": {"level": level, "step": step, "up": up, "lag": lag}},
            )
        )

    @property
    def frames_dropped(self) -> int:
        return sum(r.dropped for r in self._encoders)

    @property
    def _encoders(self) -> list[RungEncoder]:
        return [r for r in self._rungs if isinstance(r, RungEncoder)]

    def _decode(self, dec: Any, pkt: MediaPacket) -> list[Any]:
        """Decode one ms-timestamped packet; a corrupt one is dropped, not fatal."""
        p = av.Packet(pkt.data)
        p.pts, p.dts, p.time_base = pkt.pts, pkt.dts, MS
        try:
            return list(dec.decode(p))
        except av.error.InvalidDataError:
            log.warning(
                "[%s] undecodable %s packet at %d ms dropped", self.spec.stream, pkt.kind, pkt.dts
            )
            return []

    def _decode_audio(self, pkt: MediaPacket) -> None:
        if self._adec is None:
            return
        frames = self._decode(self._adec, pkt)
        if self._aenc is None or self._resampler is None:
            return  # audio before the first video frame: the ladder isn't open yet
        rate = self.spec.audio.sample_rate
        expected_ms = pkt.pts
        anchor = expected_ms * rate // 1000
        if self._audio_next is None or anchor - self._audio_next > rate // 5:
            # First audio, or a gap/jump of more than 200 ms: re-anchor on the
            # publisher's clock; otherwise count samples so AAC frames abut.
            self._audio_next = anchor
        elif self._audio_next - anchor > rate // 5:
            # The samples counted ran 200 ms ahead of the publisher's clock (a source
            # whose audio outlasts its timestamps, e.g. at every `-stream_loop` pass):
            # re-anchoring back would hand the muxers non-monotonic audio and fail the
            # stream, so drop this packet's audio until the clock catches up.
            return
        if self._opus is not None and (
            self._opus_next is None or expected_ms * 48 - self._opus_next > OPUS_RATE // 5
        ):
            # Forward jumps only, like AAC above: Opus packets must stay monotonic too.
            self._opus_next = expected_ms * 48
        for frame in frames:
            frame.pts = None
            for rf in self._resampler.resample(frame):
                rf.pts = self._audio_next
                rf.time_base = Fraction(1, rate)
                self._audio_next += rf.samples
                for ap in self._aenc.encode(rf):
                    for r in self._rungs:
                        r.queue.put(("a", ap, None, 0.0))
            if self._opus is not None:
                self._encode_opus(frame)

    def _encode_opus(self, frame: av.AudioFrame | None) -> None:
        """Opus packets for WebRTC viewers, sent the moment they are encoded."""
        assert self._opus is not None and self._opus_resampler is not None
        if frame is None:
            packets = list(self._opus.encode(None))
        else:
            packets = []
            for rf in self._opus_resampler.resample(frame):
                assert self._opus_next is not None
                rf.pts = self._opus_next
                rf.time_base = Fraction(1, OPUS_RATE)
                self._opus_next += rf.samples
                packets += self._opus.encode(rf)
        for op in packets:
            if op.pts is None:
                continue
            ms = int(op.pts) * 1000 // OPUS_RATE
            mp = MediaPacket("audio", "opus", ms, ms, bytes(op), True)
            self.out.write(encode_packet(mp, 0.0, FrameType.TAP))

    def _maybe_stats(self) -> None:
        now = time.monotonic()
        if now - self._last_stats < 2.0:
            return
        self._last_stats = now
        self.out.write(
            encode_json(
                FrameType.STATS,
                {
                    "frames_in": self.frames_in,
                    "media_seconds": (self._media_ms - (self._t0 or 0)) / 1000.0,
                    "wall_seconds": now - self._started,
                    "renditions": {r.rung.name: r.frames_out for r in self._rungs},
                    "lag": self._lag(),
                    "level": self.level,
                    "frames_dropped": self.frames_dropped,
                },
            )
        )

    def finish(self) -> None:
        if self._vdec is not None:
            try:
                for frame in self._vdec.decode(None):
                    self._on_frame(frame)
            except av.error.FFmpegError:
                pass
        if self._opus is not None:
            self._encode_opus(None)
        if self._aenc is not None:
            for ap in self._aenc.encode(None):
                for r in self._rungs:
                    r.queue.put(("a", ap, None, 0.0))
        for r in self._rungs:
            r.queue.put(_STOP)
        for r in self._rungs:
            r.thread.join()


def run(stdin: BinaryIO, stdout: BinaryIO) -> int:
    out = Output(stdout)
    reader = FrameReader()
    pipeline: Pipeline | None = None
    while True:
        chunk = stdin.read1(1 << 16) if hasattr(stdin, "read1") else stdin.read(1 << 16)
        if not chunk:
            break
        for ftype, payload in reader.feed(chunk):
            if ftype is FrameType.START:
                try:
                    spec = Spec.from_json(json.loads(payload))
                except (ValueError, KeyError, TypeError) as exc:
                    out.write(encode_json(FrameType.FATAL, {"error": f"invalid spec: {exc}"}))
                    return 2
                pipeline = Pipeline(spec, out)
            elif ftype is FrameType.PACKET:
                if pipeline is None:
                    raise ValueError("packet before START")
                try:
                    pipeline.feed(*decode_packet(payload))
                except ValueError as exc:
                    out.write(encode_json(FrameType.FATAL, {"error": str(exc)}))
                    return 2
                for r in pipeline._rungs:
                    if r.error is not None:
                        out.write(encode_json(FrameType.FATAL, {"error": str(r.error)}))
                        return 3
            elif ftype is FrameType.END:
                if pipeline is not None:
                    pipeline.finish()
                out.write(encode_json(FrameType.DONE, {}))
                return 0
    if pipeline is not None:
        pipeline.finish()
    out.write(encode_json(FrameType.DONE, {}))
    return 0


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("NEARCAST_WORKER_LOG", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    av.logging.set_level(av.logging.ERROR)
    try:
        return run(sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main())
