"""Cut one rendition's encoded samples into CMAF parts and segments (pure).

The packager sits right after the encoders in the worker (and, as
:class:`TapPackager`, after the WebRTC tap in the node). It receives video
access units (as NAL unit lists) and AAC (or Opus) frames with their timestamps and
emits, through callbacks:

- an :class:`~media.segments.InitFrame` before the first media, and again
  whenever the H.264 parameter sets change;
- with LL-HLS, a :class:`~media.segments.PartFrame` (one ``moof``+``mdat``
  holding the part's video and the audio of the same interval) the moment the
  part's last frame arrives, without waiting for the next one;
- at each segment boundary (an IDR on the forced grid), the
  :class:`~media.segments.SegmentFrame`: the concatenation of its parts.

Timing: the fMP4 timeline is the worker's media timeline shifted by one
offset, on every track alike. Decode times are the presentation times in
decode order, :data:`REORDER_FRAMES` early, whatever the encoder's own delay,
so decode and presentation spans agree and an encoder reopened with another
B-frame setting continues seamlessly. x264's B-frame reorder delay gives the
first frames a DTS before the first PTS; the offset keeps every decode time
non-negative and every composition offset positive, which all players read
the same way (FFmpeg's mov demuxer shifts video by the largest negative
offset, which would put it out of sync with audio). With an ``origin`` (the
worker's rungs) the offset makes a keyframe at the origin decode at 0, so a
stream's first part has a ``tfdt`` of 0, as its playlist's timeline starts
at 0: Shaka Player sets its per-append timestamp offset to the difference,
and a negative one drops parts not cut on a keyframe (shaka-player#10589).
Its init segment then carries an edit list that takes the reorder allowance
off video presentation (audio is placed to match): players map a part's
``tfdt`` to the start its playlist gives it, and without the edit its first
picture would show one allowance (0.1 s) later, a hole at the start of the
buffer as large as hls.js's ``maxBufferHole``. Without an origin (the node's
:class:`TapPackager`, read by relays) the offset is :data:`TIMELINE_OFFSET`
and there is no edit. Part boundaries
lie on a grid of ``part_ticks`` from the segment's first decode time, so no
part is longer than the part target (RFC 8216bis §4.4.4.9); only a segment's
last part may be shorter.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from containers.fmp4 import (
    AudioTrack,
    OpusTrack,
    Sample,
    Track,
    TrackRun,
    VideoTrack,
    fragment,
    init_segment,
)
from media import MediaPacket
from media.segments import InitFrame, PartFrame, SegmentFrame, lead_parts

VIDEO_TRACK = 1
AUDIO_TRACK = 2
_NAL_AUD, _NAL_SPS, _NAL_PPS, _NAL_IDR = 9, 7, 8, 5
# Seconds added to every timestamp in the fMP4 output without an origin (see the module
# docstring).
TIMELINE_OFFSET = 1
# Frames of B-frame reorder delay the decode timeline allows for (x264 uses at most 2).
REORDER_FRAMES = 3
# The video timescale of the WebRTC tap's rendition (TapPackager): ms * 90, exactly.
TAP_VIDEO_TIMESCALE = 90000


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B access unit (3- or 4-byte start codes)."""
    nals: list[bytes] = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        j = data.find(b"\x00\x00\x01", start)
        end = len(data) if j < 0 else j
        nal = data[start:end]
        # A 4-byte start code leaves a zero at the end of the previous NAL.
        nal = nal.rstrip(b"\x00") if j >= 0 else nal
        if nal:
            nals.append(nal)
        i = j
    return nals


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """The audio track of a rendition: AAC (``config`` its AudioSpecificConfig), or
    Opus (``codec="opus"``, 48 kHz; ``config`` unused: the ``dOps`` is derived)."""

    sample_rate: int
    channels: int
    config: bytes  # AudioSpecificConfig
    frame_samples: int = 1024
    bitrate: int = 0
    codec: str = "aac"

    def track(self, track_id: int) -> AudioTrack | OpusTrack:
        if self.codec == "opus":
            return OpusTrack(track_id, self.channels, bitrate=self.bitrate)
        return AudioTrack(track_id, self.sample_rate, self.channels, self.config, self.bitrate)


@dataclass(slots=True)
class _Video:
    nals: list[bytes]
    decode: int
    cts: int
    sync: bool
    duration: int = 0


class CmafPackager:
    def __init__(
        self,
        rendition: str,
        *,
        width: int,
        height: int,
        frame_ticks: int,
        audio: AudioFormat | None,
        part_ticks: int,
        on_init: Callable[[InitFrame], None],
        on_part: Callable[[PartFrame], None] | None,
        on_segment: Callable[[SegmentFrame], None],
        timescale: int = 90000,
        min_duration: float = 0.0,
        origin: int | None = None,
    ) -> None:
        """``part_ticks`` 0 makes one fragment per segment and no parts (plain fMP4 HLS).

        ``origin`` (ticks of the media timeline): where the fMP4 timeline starts, a
        keyframe there decoded at 0; None adds :data:`TIMELINE_OFFSET` instead.
        """
        if frame_ticks <= 0:
            raise ValueError(f"frame duration {frame_ticks} must be positive")
        self.rendition = rendition
        self._width = width
        self._height = height
        self._frame_ticks = frame_ticks
        self._audio = audio
        self._part_ticks = part_ticks
        self._on_init = on_init
        self._on_part = on_part if part_ticks > 0 else None
        self._on_segment = on_segment
        self.timescale = timescale
        # A passed-through source may have keyframes more often than the grid.
        self._min_ticks = int(min_duration * timescale)
        self._params: tuple[tuple[bytes, ...], tuple[bytes, ...]] | None = None
        self._codecs = "avc1.640028"
        self._sequence = 0
        # Decode times are presentation times in decode order, REORDER_FRAMES
        # early: the same for every encoder, so a reopened x264 with another
        # B-frame delay (overload's faster preset) continues without a gap.
        self._reorder_allowance = REORDER_FRAMES * frame_ticks
        self._reorder = 0  # the current encoder's pts - dts at its IDR
        self._offset = (
            TIMELINE_OFFSET * timescale if origin is None else self._reorder_allowance - origin
        )
        # With an origin, the init segment's edit list takes the reorder allowance off
        # every video presentation time: a keyframe shows at its decode time, where
        # players (hls.js, Shaka Player) put the start its playlist gives its part,
        # so the buffer starts with no hole before the first picture.
        self._edit = self._reorder_allowance if origin is not None else 0
        # Audio on the same presentation timeline, in samples (within half a sample).
        self._audio_offset = (
            round((self._offset - self._edit) * audio.sample_rate / timescale) if audio else 0
        )
        self._seg_pts = 0  # presentation time of the segment's IDR
        self._last_decode: int | None = None
        self._seg_open = False
        self._seg_index = 0
        self._seg_start = 0  # decode time of the segment's IDR
        self._seg_parts: list[bytes] = []
        self._part_no = 0
        self._part_start = 0
        self._pending: list[_Video] = []
        self._audio_q: deque[tuple[int, bytes]] = deque()
        self._audio_floor: int | None = None  # audio before the first segment is dropped
        self.segments = 0
        self.parts = 0

    @property
    def codecs(self) -> str:
        return self._codecs

    # -- input -------------------------------------------------------------------

    def audio(self, data: bytes, pts: int) -> None:
        """One AAC (or Opus) frame; ``pts`` in samples of the audio's sample rate."""
        if self._audio is None:
            return
        self._audio_q.append((pts, data))
        # Bounded if video stalls: audio that old can never be placed.
        while len(self._audio_q) > 2000:
            self._audio_q.popleft()

    def video(
        self, nals: list[bytes], pts: int, dts: int, keyframe: bool, index: int | None = None
    ) -> None:
        """One access unit (NAL units, no start codes or lengths) in ``timescale`` ticks.

        A keyframe starts segment ``index`` (the grid's number) when one is given;
        without one, a keyframe at least ``min_duration`` after the segment start does.
        """
        sps = tuple(n for n in nals if n and n[0] & 0x1F == _NAL_SPS)
        pps = tuple(n for n in nals if n and n[0] & 0x1F == _NAL_PPS)
        body = [n for n in nals if n and n[0] & 0x1F not in (_NAL_AUD, _NAL_SPS, _NAL_PPS)]
        if not body:
            return
        new_params = bool(sps and pps) and (sps, pps) != self._params
        if keyframe and (
            not self._seg_open
            or index is not None
            or new_params
            or pts - self._seg_pts >= self._min_ticks > 0
        ):
            if self._seg_open:
                if self._pending and not self._pending[-1].duration:
                    last = self._pending[-1]
                    last.duration = max(
                        1, max(0, pts + self._offset - self._reorder_allowance) - last.decode
                    )
                self._close_segment()
            if new_params:
                self._params = (sps, pps)
                self._send_init()
            if self._params is None:
                return  # no parameter sets yet: nothing can be decoded
            self._seg_open = True
            if index is not None:
                self._seg_index = index
            elif self.segments:
                self._seg_index += 1
            self._reorder = pts - dts
            self._seg_start = self._decode_time(dts)
            if self._last_decode is not None:
                self._seg_start = max(self._seg_start, self._last_decode + 1)
            self._seg_pts = pts
            self._part_no = 0
            if self._audio_floor is None:
                self._audio_floor = self._to_audio(pts)
        if not self._seg_open:
            return
        decode = self._decode_time(dts)
        if self._last_decode is not None and decode <= self._last_decode:
            decode = self._last_decode + 1  # never let a jittery DTS run backwards
        if self._on_part is not None and self._pending and decode >= self._part_end():
            self._pending[-1].duration = decode - self._pending[-1].decode
            self._close_part()
        if self._pending:
            prev = self._pending[-1]
            prev.duration = decode - prev.decode
        else:
            self._part_start = decode
        self._pending.append(_Video(body, decode, pts + self._offset - decode, keyframe))
        self._last_decode = decode
        if self._on_part is not None and decode + self._frame_ticks >= self._part_end():
            # The part's last frame: emit now rather than wait for the next one.
            self._close_part()

    def flush(self) -> None:
        if self._seg_open:
            self._close_segment()
        self._audio_q.clear()

    # -- output ------------------------------------------------------------------

    def _part_end(self) -> int:
        # Parts follow each other on a grid from the IDR; after a gap in the
        # input the grid restarts at the next frame, so no part is ever longer.
        return self._part_start + self._part_ticks

    def _to_audio(self, ticks: int) -> int:
        """Media-timeline ticks (no offset) in audio samples."""
        return 0 if self._audio is None else ticks * self._audio.sample_rate // self.timescale

    def _decode_time(self, dts: int) -> int:
        return max(0, dts + self._reorder + self._offset - self._reorder_allowance)

    def _media_time(self, decode: int) -> float:
        """Seconds on the worker's timeline of a decode time within the current segment."""
        return (self._seg_pts + decode - self._seg_start) / self.timescale

    def _send_init(self) -> None:
        assert self._params is not None
        sps, pps = self._params
        tracks: list[Track] = [
            VideoTrack(VIDEO_TRACK, self.timescale, self._width, self._height, sps, pps, self._edit)
        ]
        if self._audio is not None:
            tracks.append(self._audio.track(AUDIO_TRACK))
        self._codecs = tracks[0].codec_string
        self._on_init(InitFrame(self.rendition, self._codecs, init_segment(tracks)))

    def _close_part(self) -> None:
        if not self._pending:
            return
        last = self._pending[-1]
        if not last.duration:
            last.duration = self._frame_ticks
        start = self._pending[0].decode
        end = last.decode + last.duration
        if self._on_part is not None:
            # Never longer than the part target, whatever the last frame's guess.
            end = min(end, self._part_end()) if self._part_ticks else end
            last.duration = max(1, end - last.decode)
        runs = [
            TrackRun(
                VIDEO_TRACK,
                start,
                [
                    Sample(
                        b"".join(len(n).to_bytes(4, "big") + n for n in v.nals),
                        v.duration,
                        v.sync,
                        v.cts,
                    )
                    for v in self._pending
                ],
            )
        ]
        if self._audio is not None:
            # The audio that plays alongside this part's pictures, as far as it has arrived
            # (audio is encoded ahead of video, which waits in the encoder's reorder queue).
            shown_end = max(v.decode + v.cts + v.duration for v in self._pending) - self._offset
            runs.append(self._audio_run(self._to_audio(shown_end)))
        self._sequence += 1
        data = fragment(self._sequence, runs)
        independent = self._pending[0].sync
        self._pending = []
        self._seg_parts.append(data)
        if self._on_part is not None:
            self._on_part(
                PartFrame(
                    rendition=self.rendition,
                    index=self._seg_index,
                    part=self._part_no,
                    start=self._media_time(start),
                    duration=(end - start) / self.timescale,
                    independent=independent,
                    data=data,
                )
            )
            self.parts += 1
        self._part_no += 1
        self._part_start = end

    def _audio_run(self, until: int) -> TrackRun:
        assert self._audio is not None
        floor = self._audio_floor or 0
        # Audio that ends before the first picture, or would start before the fMP4
        # timeline (a frame overlapping a first picture at its origin), is dropped.
        while self._audio_q and (
            self._audio_q[0][0] + self._audio.frame_samples <= floor
            or self._audio_q[0][0] + self._audio_offset < 0
        ):
            self._audio_q.popleft()
        taken: list[tuple[int, bytes]] = []
        while self._audio_q and self._audio_q[0][0] < until:
            taken.append(self._audio_q.popleft())
        samples = []
        for i, (pts, data) in enumerate(taken):
            nxt = taken[i + 1][0] if i + 1 < len(taken) else pts + self._audio.frame_samples
            samples.append(Sample(data, max(1, nxt - pts)))
        base = taken[0][0] + self._audio_offset if taken else 0
        return TrackRun(AUDIO_TRACK, max(0, base), samples, video=False)

    def _close_segment(self) -> None:
        self._close_part()
        if self._seg_parts:
            self._on_segment(
                SegmentFrame(
                    rendition=self.rendition,
                    index=self._seg_index,
                    start=self._seg_pts / self.timescale,
                    duration=max(0, self._part_start - self._seg_start) / self.timescale,
                    codecs=self._codecs,
                    data=b"".join(self._seg_parts),
                )
            )
            self.segments += 1
        self._seg_parts = []
        self._seg_open = False


class TapPackager:
    """The WebRTC tap's packets as a CMAF rendition, repackaged without decoding.

    The tap (what a worker sends WHEP viewers) is H.264 without B-frames, Annex B
    with SPS/PPS in-band on every IDR, and 20 ms Opus packets, all with millisecond
    timestamps (:class:`~media.MediaPacket`). Here they become a
    :class:`CmafPackager` rendition on a 90 kHz video and a 48 kHz Opus timeline, so
    both map back to the same milliseconds exactly: what
    :mod:`distribute.whep.cmaf_source` reads on another node.

    Segments start at IDRs. With ``grid`` (an encoded tap rung, whose IDRs are forced
    on the segment grid) a segment's number follows from its IDR's time, so it gets
    the number of the same segment of every other rendition, and a rung suspended
    for a while leaves a gap rather than a shift; the IDR the worker forces where a
    run's LL-HLS lead ends (or any less than half a segment after the segment's own)
    only starts an independent part, as it does in the other renditions. Without
    (a passed-through source, keyframes where the publisher put them) an IDR at least
    0.9 segment after the previous segment's starts the next, numbered in sequence as
    the worker numbers that rung's own segments.
    """

    def __init__(
        self,
        rendition: str,
        *,
        width: int,
        height: int,
        fps: float,
        channels: int | None,
        segment_duration: float,
        part_duration: float,
        grid: bool,
        lead: int = 0,
        on_init: Callable[[InitFrame], None],
        on_part: Callable[[PartFrame], None] | None,
        on_segment: Callable[[SegmentFrame], None],
    ) -> None:
        if fps <= 0 or segment_duration <= 0:
            raise ValueError(f"tap rendition {rendition}: fps and segment duration must be > 0")
        nominal = max(1, round(TAP_VIDEO_TIMESCALE / fps))
        part_ticks = 0
        self._frame_ms = 1000 / fps
        # Where the worker forces an IDR inside a run's first segment (rungs.py): the
        # end of the LL-HLS lead, ``lead`` parts in (hls.lead_parts; 0: no lead).
        self._lead_ms: float | None = None
        if part_duration > 0:
            # Whole frames, never more than the part target (RFC 8216bis §4.4.4.9).
            per_part = max(1, math.floor(part_duration * fps + 1e-6))
            part_ticks = per_part * nominal
            count = lead_parts(segment_duration, part_duration, lead)
            if count:
                self._lead_ms = count * per_part * self._frame_ms
        self._segment_ms = segment_duration * 1000
        self._grid = grid
        self._index = -1
        self._seg_ms = 0
        self._packager = CmafPackager(
            rendition,
            width=width,
            height=height,
            # Millisecond timestamps put each frame up to half a millisecond off the
            # frame grid: one more millisecond of frame duration lets a part close on
            # its last frame whichever way that frame was rounded.
            frame_ticks=nominal + TAP_VIDEO_TIMESCALE // 1000,
            audio=(
                AudioFormat(48000, channels, b"", 960, codec="opus")
                if channels is not None
                else None
            ),
            part_ticks=part_ticks,
            on_init=on_init,
            on_part=on_part,
            on_segment=on_segment,
            timescale=TAP_VIDEO_TIMESCALE,
            min_duration=0.0 if grid else segment_duration * 0.9,
        )

    @property
    def segments(self) -> int:
        return self._packager.segments

    def packet(self, packet: MediaPacket) -> None:
        """One tap packet, in the order the tap sends them."""
        if packet.config:
            return  # the tap sends parameter sets in-band
        if packet.kind == "audio":
            if packet.codec == "opus":
                self._packager.audio(packet.data, packet.pts * 48)
            return
        if packet.codec != "h264":
            return
        index = None
        if packet.keyframe and self._grid:
            since = packet.pts - self._seg_ms
            steps = round(since / self._segment_ms)
            lead = (
                self._index == 0
                and self._lead_ms is not None
                and abs(since - self._lead_ms) <= self._frame_ms / 2
            )
            if self._index < 0 or (steps >= 1 and not lead):
                self._index = 0 if self._index < 0 else self._index + steps
                self._seg_ms = packet.pts
                index = self._index
            # Otherwise an IDR within the segment (the worker's where a run's LL-HLS
            # lead ends): it starts an independent part, not a segment, as in the rungs'.
        ticks = TAP_VIDEO_TIMESCALE // 1000
        self._packager.video(
            split_annexb(packet.data),
            packet.pts * ticks,
            packet.dts * ticks,
            packet.keyframe,
            index,
        )

    def flush(self) -> None:
        self._packager.flush()
