"""Cut encoded packets of one rendition into MPEG-TS segments.

Runs in the transcode worker process, right after the encoders, so the node's
event loop only ever stores finished segments. A segment starts at every video
keyframe: the worker forces IDR frames on the same PTS grid in every rendition,
so segment ``n`` covers the same time range in all of them (RFC 8216bis §6.2.4
requires that for switching without a glitch).

Each segment gets its own MPEG-TS muxer, so it begins with PAT/PMT and can be
decoded on its own (RFC 8216bis §3.3). Its continuity counters are then rewritten
to carry on from the previous segment's (:func:`continue_counters`), as one muxer
writing the whole stream would have left them (FFmpeg's HLS muxer, nginx-rtmp): a
player that feeds segments into one demuxer sees no discontinuity at each boundary.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av

from media.segments import SegmentFrame

# RFC 6381 codec strings need the profile/level bytes of the SPS.
_SAMPLE_RATES = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000]


def adts_header(object_type: int, sample_rate: int, channels: int, payload_len: int) -> bytes:
    """ISO 14496-3 §1.A.2.2 fixed + variable header, no CRC (7 bytes)."""
    try:
        freq = _SAMPLE_RATES.index(sample_rate)
    except ValueError:
        raise ValueError(f"AAC sample rate {sample_rate} has no ADTS index") from None
    length = payload_len + 7
    if length > 0x1FFF:
        raise ValueError(f"AAC frame of {payload_len} bytes is too large for ADTS")
    profile = object_type - 1
    return bytes(
        [
            0xFF,
            0xF1,
            ((profile & 0x3) << 6) | (freq << 2) | ((channels >> 2) & 0x1),
            ((channels & 0x3) << 6) | ((length >> 11) & 0x3),
            (length >> 3) & 0xFF,
            ((length & 0x7) << 5) | 0x1F,
            0xFC,
        ]
    )


def h264_codec_string(annexb: bytes) -> str | None:
    """``avc1.PPCCLL`` from the first SPS NAL unit in an Annex B access unit."""
    i = 0
    n = len(annexb)
    while i + 4 < n:
        j = annexb.find(b"\x00\x00\x01", i)
        if j < 0 or j + 4 >= n:
            return None
        nal = annexb[j + 3]
        if nal & 0x1F == 7:
            p, c, lv = annexb[j + 4], annexb[j + 5], annexb[j + 6]
            return f"avc1.{p:02X}{c:02X}{lv:02X}"
        i = j + 3
    return None


TS_PACKET = 188
SYNC = b"\x47"


def continue_counters(buf: bytearray | memoryview, last: dict[int, int]) -> None:
    """Shift each PID's continuity counters in ``buf`` (whole 188-byte TS packets, written
    in place) to follow ``last[pid]``, the counter of that PID's last packet in the
    previous segment; ``last`` is updated to this segment's.

    ISO 13818-1 §2.4.3.3: the counter goes up by one per packet with a payload and
    stays put on an adaptation-field-only packet. A shift by a constant per PID keeps
    whatever order the muxer wrote within the segment. A buffer that is not whole TS
    packets is left unchanged (and ``last`` too). In place, on the muxer's own buffer:
    a segment is copied once, when it is taken out of that buffer, not once more here.
    """
    n = len(buf) // TS_PACKET
    if not n or len(buf) != n * TS_PACKET or bytes(buf[0::TS_PACKET]) != SYNC * n:
        return
    flags = bytearray(buf[3::TS_PACKET])
    # Each PID's packets (row numbers), in order.
    rows: dict[int, list[int]] = {}
    for row, (hi, lo) in enumerate(zip(buf[1::TS_PACKET], buf[2::TS_PACKET], strict=True)):
        pid = ((hi & 0x1F) << 8) | lo
        got = rows.get(pid)
        if got is None:
            rows[pid] = [row]
        else:
            got.append(row)
    changed = False
    for pid, where in rows.items():
        first = flags[where[0]]
        before = last.get(pid)
        if before is not None:
            # What the first packet's counter would be after ``before``.
            want = (before + 1) & 0x0F if first & 0x10 else before
            shift = (want - first) & 0x0F
            if shift:
                changed = True
                for row in where:
                    f = flags[row]
                    flags[row] = (f & 0xF0) | ((f + shift) & 0x0F)
        last[pid] = flags[where[-1]] & 0x0F
    if changed:
        buf[3::TS_PACKET] = flags


class TsSegmenter:
    def __init__(
        self,
        rendition: str,
        *,
        width: int,
        height: int,
        audio_rate: int | None,
        audio_channels: int = 2,
        on_segment: Callable[[SegmentFrame], None],
        min_duration: float = 0.0,
    ) -> None:
        self.rendition = rendition
        self._width = width
        self._height = height
        self._audio_rate = audio_rate
        self._audio_channels = audio_channels
        self._on_segment = on_segment
        # Transcoded rungs only have keyframes on the grid; a passed-through
        # source may have them more often, and must not make short segments.
        self._min_duration = min_duration
        # ADTS-framed AAC packets waiting for the video they sit under, each with its
        # time in seconds (worked out once: Fraction arithmetic is dear per packet).
        self._pending_audio: deque[tuple[float, av.Packet[Any]]] = deque()
        self._buf: io.BytesIO | None = None
        self._mux: av.container.OutputContainer | None = None
        self._vstream: av.stream.Stream | None = None
        self._astream: av.stream.Stream | None = None
        self._start = 0.0
        self._last_video_end = 0.0
        self._index = 0
        self._codecs = "avc1.640028"
        # Each PID's last continuity counter, carried from segment to segment.
        self._counters: dict[int, int] = {}
        self.segments = 0

    # -- segment lifecycle -------------------------------------------------

    def _open(self, start: float) -> None:
        self._buf = io.BytesIO()
        # A negative first DTS (B-frames) must not make libavformat shift this
        # segment alone: every segment must keep the worker's one timeline.
        mux = av.open(self._buf, "w", format="mpegts", options={"avoid_negative_ts": "disabled"})
        self._vstream = mux.add_mux_stream(
            "h264", width=self._width, height=self._height, time_base=Fraction(1, 90000)
        )
        if self._audio_rate:
            self._astream = mux.add_mux_stream(
                "aac", rate=self._audio_rate, time_base=Fraction(1, 90000)
            )
        self._mux = mux
        self._start = start

    def _close(self, end: float) -> None:
        if self._mux is None or self._buf is None:
            return
        self._mux.close()
        view = self._buf.getbuffer()
        try:
            continue_counters(view, self._counters)
        finally:
            view.release()
        data = self._buf.getvalue()
        self._on_segment(
            SegmentFrame(
                rendition=self.rendition,
                index=self._index,
                start=self._start,
                duration=max(0.0, end - self._start),
                codecs=self._codecs,
                data=data,
            )
        )
        self._index += 1
        self.segments += 1
        self._mux = None
        self._buf = None

    # -- packets -----------------------------------------------------------

    def _mux_audio_until(self, t: float | None) -> None:
        assert self._mux is not None
        while self._pending_audio:
            at, pkt = self._pending_audio[0]
            if t is not None and at >= t:
                break
            self._pending_audio.popleft()
            if self._astream is not None:
                pkt.stream = self._astream
                self._mux.mux_one(pkt)

    def video(self, packet: av.Packet[Any], index: int | None = None) -> None:
        """Mux one video packet; a keyframe may start segment ``index`` (the grid's number)."""
        if packet.pts is None or packet.dts is None:
            return
        # Seconds as float(Fraction) gives them (int / int rounds correctly), without
        # building a Fraction per timestamp.
        tb = packet.time_base
        num, den = tb.numerator, tb.denominator
        t = packet.pts * num / den
        if packet.is_keyframe and (self._mux is None or t - self._start >= self._min_duration):
            if self._mux is not None:
                self._mux_audio_until(t)
                self._close(t)
            if index is not None:
                self._index = index
            if self._index == 0 and self.segments == 0:
                codecs = h264_codec_string(bytes(packet))
                if codecs:
                    self._codecs = codecs
            self._open(t)
        if self._mux is None:
            return  # nothing before the first keyframe can be decoded
        self._mux_audio_until(packet.dts * num / den)
        assert self._vstream is not None
        packet.stream = self._vstream
        self._mux.mux_one(packet)
        dur = packet.duration * num / den if packet.duration else 0.0
        self._last_video_end = max(self._last_video_end, t + dur)

    def audio(self, packet: av.Packet[Any], object_type: int = 2) -> None:
        if self._audio_rate is None or packet.pts is None:
            return
        data = adts_header(object_type, self._audio_rate, self._audio_channels, packet.size)
        framed = av.Packet(data + bytes(packet))
        framed.pts = packet.pts
        framed.dts = packet.dts
        framed.time_base = tb = packet.time_base
        framed.duration = packet.duration
        self._pending_audio.append((packet.pts * tb.numerator / tb.denominator, framed))
        # Keep memory bounded if video stalls: audio older than a few segments
        # can never be placed and is dropped.
        while len(self._pending_audio) > 2000:
            self._pending_audio.popleft()

    def flush(self) -> None:
        if self._mux is not None:
            self._mux_audio_until(self._last_video_end)
            self._close(self._last_video_end)
        self._pending_audio.clear()

    @property
    def codecs(self) -> str:
        return self._codecs
