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
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, BinaryIO

import av
import av.video.reformatter
from av.audio.resampler import AudioResampler
from av.video.frame import PictureType

from distribute.hls.tsmux import TsSegmenter
from media import MediaPacket
from media.h264 import AvcConfig, to_annexb
from transcode.config import AudioProfile, Rendition
from transcode.ladder import Rung, plan
from transcode.protocol import (
    FrameReader,
    FrameType,
    decode_packet,
    encode_json,
)

log = logging.getLogger("transcode.worker")

MS = Fraction(1, 1000)
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
NVENC_PRESETS = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3",
                 "fast": "p4", "medium": "p4", "slow": "p6"}


def open_video_encoder(rung: Rung, codec: str, threads: int, gop_frames: int) -> av.VideoCodecContext:
    enc = av.CodecContext.create(codec, "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width = rung.width
    enc.height = rung.height
    enc.pix_fmt = "yuv420p"
    enc.time_base = MS
    enc.framerate = Fraction(rung.fps).limit_denominator(1001)
    enc.bit_rate = rung.video_bitrate
    enc.gop_size = gop_frames * 2
    enc.sample_aspect_ratio = Fraction(1, 1)
    # AUTO threading must be chosen before the codec opens: PyAV's default
    # is SLICE, which costs 1.76x wall time on this ladder.
    enc.thread_type = "AUTO"
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
        # IDRs come only from the PTS grid the decoder thread forces;
        # scene cuts would break cross-rendition alignment.
        opts["x264-params"] = f"keyint={gop_frames * 2}:min-keyint={gop_frames}:scenecut=0"
    elif codec.endswith("_nvenc"):
        opts["preset"] = NVENC_PRESETS.get(rung.preset, rung.preset)
        opts["no-scenecut"] = "1"
        opts["bf"] = "0"
    else:
        opts["preset"] = rung.preset
    enc.options = opts
    enc.open()
    return enc


class RungEncoder:
    """Scale + encode + segment one rung, on its own thread."""

    def __init__(
        self, rung: Rung, spec: Spec, audio_rate: int | None, out: Output, gop_frames: int
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
        self._active = True
        self._spec = spec
        self._gop_frames = gop_frames
        self._scaler = av.video.reformatter.VideoReformatter()
        self._indexes: deque[int] = deque()
        self.codec = rung.codec
        try:
            enc = open_video_encoder(rung, rung.codec, spec.x264_threads, gop_frames)
        except (av.error.FFmpegError, ValueError) as exc:
            if rung.codec == "libx264":
                raise
            # A profile may name a hardware encoder the node does not have (no
            # GPU, no driver, sessions exhausted): serve the rung with x264.
            log.warning(
                "[%s] %s: encoder %s unavailable (%s); falling back to libx264",
                spec.stream, rung.name, rung.codec, exc,
            )
            self.codec = "libx264"
            enc = open_video_encoder(rung, "libx264", spec.x264_threads, gop_frames)
        self._enc = enc
        self._preset = rung.preset
        self._seg = TsSegmenter(
            rung.name,
            width=rung.width,
            height=rung.height,
            audio_rate=audio_rate,
            on_segment=lambda s: out.write(s.encode()),
        )
        self.thread = threading.Thread(target=self._run, name=f"rung-{rung.name}", daemon=True)

    def _drain(self, packets: Any) -> None:
        for p in packets:
            if p.is_keyframe:
                self._seg.video(p, self._indexes.popleft() if self._indexes else None)
            else:
                self._seg.video(p)

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
        rung = dataclasses.replace(self.rung, preset=preset)
        self._enc = open_video_encoder(rung, self.codec, self._spec.x264_threads, self._gop_frames)
        self._preset = preset

    def _run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is _STOP:
                    if self._active:
                        self._drain(self._enc.encode(None))
                    self._seg.flush()
                    return
                kind, obj, index, arrival = item
                if kind == "a":
                    self._seg.audio(obj)
                    continue
                if index is not None:
                    self._boundary()
                if not self._active:
                    continue
                frame = obj
                if frame.width != self.rung.width or frame.height != self.rung.height or (
                    frame.format.name != "yuv420p"
                ):
                    frame = self._scaler.reformat(
                        frame,
                        width=self.rung.width,
                        height=self.rung.height,
                        format="yuv420p",
                        interpolation="BICUBIC",
                        threads=1,
                    )
                if index is not None:
                    frame.pict_type = PictureType.I
                    self._indexes.append(index)
                else:
                    frame.pict_type = PictureType.NONE
                self._drain(self._enc.encode(frame))
                self.frames_out += 1
                if arrival:
                    self.lag = time.time() - arrival
        except BaseException as exc:  # reported to the node by the main thread
            self.error = exc
            log.exception("rung %s failed", self.rung.name)
            while True:  # keep draining so the decoder never blocks on us
                if self.queue.get() is _STOP:
                    return


class SourceRung:
    """The ``copy`` rendition: the publisher's own H.264, re-framed for MPEG-TS, no encode."""

    def __init__(
        self, rung: Rung, spec: Spec, audio_rate: int | None, out: Output, avc: AvcConfig
    ) -> None:
        self.rung = rung
        self.codec = "copy"
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=64)
        self.frames_out = 0
        self.error: BaseException | None = None
        self.avc = avc
        self._seg = TsSegmenter(
            rung.name,
            width=rung.width,
            height=rung.height,
            audio_rate=audio_rate,
            on_segment=lambda s: out.write(s.encode()),
            min_duration=spec.segment_duration * 0.9,
        )
        self.thread = threading.Thread(target=self._run, name=f"rung-{rung.name}", daemon=True)

    def _run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is _STOP:
                    self._seg.flush()
                    return
                kind, obj, _, _ = item
                if kind == "a":
                    self._seg.audio(obj)
                    continue
                if kind != "src":
                    continue
                mp: MediaPacket = obj
                try:
                    data = to_annexb(mp.data, self.avc, mp.keyframe)
                except ValueError as exc:
                    log.warning("[source %s] packet at %d ms dropped: %s", self.rung.name, mp.dts, exc)
                    continue
                p = av.Packet(data)
                p.pts, p.dts, p.time_base = mp.pts, mp.dts, MS
                p.is_keyframe = mp.keyframe
                self._seg.video(p)
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
        self._vdec: av.CodecContext | None = None
        self._adec: av.CodecContext | None = None
        self._aenc: av.AudioCodecContext | None = None
        self._resampler: AudioResampler | None = None
        self._rungs: list[RungEncoder | SourceRung] = []
        self._avc: AvcConfig | None = None
        self._t0: int | None = None
        self._next_boundary = 0
        self._seg_ms = int(round(spec.segment_duration * 1000))
        self._video_dts: list[int] = []
        self._audio_seen = False
        self._audio_next: int | None = None  # next audio pts, in samples
        self.frames_in = 0
        self.frames_dropped = 0
        self.level = 0
        self._stride = 1
        self._frame_no = 0
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
                    log.warning("[%s] %s; the source cannot be passed through", self.spec.stream, exc)
        dec.thread_type = "AUTO"
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
        gop_frames = max(1, int(round(fps * self.spec.segment_duration)))
        audio_rate = self.spec.audio.sample_rate if self._audio_seen else None
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
        if any(r.codec == "copy" for r in rungs) and self._avc is None:
            raise ValueError("only H.264 with a sequence header can be passed through as 'copy'")
        self._rungs = [
            SourceRung(r, self.spec, audio_rate, self.out, self._avc)  # type: ignore[arg-type]
            if r.codec == "copy"
            else RungEncoder(r, self.spec, audio_rate, self.out, gop_frames)
            for r in rungs
        ]
        for r in self._rungs:
            r.thread.start()
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

    def _estimate_fps(self) -> float:
        d = sorted(b - a for a, b in zip(self._video_dts, self._video_dts[1:], strict=False) if b > a)
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
            self._decode_video(pkt, arrival)
        else:
            if pkt.config or self._adec is None:
                self._open_audio(pkt)
                if pkt.config:
                    return
            self._decode_audio(pkt)
        now = time.monotonic()
        if self.spec.live and now - self._last_control >= 0.5:
            self._last_control = now
            self._control(now)
        self._maybe_stats()

    def _decode_video(self, pkt: MediaPacket, arrival: float) -> None:
        assert self._vdec is not None
        if len(self._video_dts) < 30:
            self._video_dts.append(pkt.dts)
        for r in self._rungs:
            if isinstance(r, SourceRung):
                r.queue.put(("src", pkt, None, 0.0))
        if self._rungs and not self._encoders:
            return  # passthrough only: no picture is ever needed again
        if arrival:
            self._arrivals[pkt.pts] = arrival
            if len(self._arrivals) > 256:
                self._arrivals.pop(next(iter(self._arrivals)))
        frames = self._decode(self._vdec, pkt)
        for frame in frames:
            self._on_frame(frame)  # type: ignore[arg-type]

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
            self._next_boundary = t
        index: int | None = None
        if t >= self._next_boundary:
            index = (t - self._t0) // self._seg_ms
            self._next_boundary = self._t0 + (index + 1) * self._seg_ms
        self._media_ms = t
        if index is None:
            self._frame_no += 1
            # Overload step 3: encode every other frame; far behind, only boundaries.
            if self._stride > 1 and self._frame_no % self._stride:
                self.frames_dropped += 1
                return
            if self._catching_up():
                self.frames_dropped += 1
                return
        for r in self._encoders:
            r.queue.put(("v", frame, index, arrival))

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
            self.spec.stream, "degrading:" if up else "recovering:", step, lag,
        )
        self.level = level
        self._level_changed = now
        for r in self._encoders:
            r.preset_override = "ultrafast" if level >= 1 else None
        if len(self._encoders) > 1:
            top = max(self._encoders, key=lambda r: r.rung.width * r.rung.height)
            top.suspended = level >= 2
        self._stride = 2 if level >= 3 else 1
        self.out.write(
            encode_json(
                FrameType.STATS,
                {"degradation": {"level": level, "step": step, "up": up, "lag": lag}},
            )
        )

    @property
    def _encoders(self) -> list[RungEncoder]:
        return [r for r in self._rungs if isinstance(r, RungEncoder)]

    def _decode(self, dec: av.CodecContext, pkt: MediaPacket) -> list[Any]:
        """Decode one ms-timestamped packet; a corrupt one is dropped, not fatal."""
        p = av.Packet(pkt.data)
        p.pts, p.dts, p.time_base = pkt.pts, pkt.dts, MS
        try:
            return list(dec.decode(p))
        except av.error.InvalidDataError:
            log.warning("[%s] undecodable %s packet at %d ms dropped", self.spec.stream, pkt.kind, pkt.dts)
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
        for frame in frames:
            frame.pts = None
            for rf in self._resampler.resample(frame):  # type: ignore[arg-type]
                rf.pts = self._audio_next
                rf.time_base = Fraction(1, rate)
                self._audio_next += rf.samples
                for ap in self._aenc.encode(rf):
                    for r in self._rungs:
                        r.queue.put(("a", ap, None, 0.0))

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
                    self._on_frame(frame)  # type: ignore[arg-type]
            except av.error.FFmpegError:
                pass
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
                pipeline = Pipeline(Spec.from_json(json.loads(payload)), out)
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
