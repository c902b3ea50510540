"""The stream's audio, encoded once: AAC for every rung, Opus for the WebRTC tap.

Decoded audio is resampled and encoded to AAC on the publisher's clock, with
sample counting so that AAC frames abut; each AAC packet goes to every rung's
packaging. With a tap rendition the same audio is also encoded to Opus (48 kHz,
20 ms frames) and sent to the node as TAP frames the moment it is encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
from av.audio.resampler import AudioResampler

from containers.cmaf import AudioFormat
from containers.fmp4 import audio_specific_config
from media import MediaPacket
from transcode.output import Output
from transcode.protocol import FrameType, encode_packet
from transcode.spec import Spec

# One logger name for the whole worker process, whichever module logs.
log = logging.getLogger("transcode.worker")

# Opus for the WebRTC tap: 48 kHz, 20 ms frames (RFC 7587).
OPUS_RATE = 48_000
OPUS_FRAME = 960


class AudioEncoder:
    """Opened with the ladder; ``on_packet`` receives every AAC packet."""

    def __init__(
        self, spec: Spec, out: Output, on_packet: Callable[[av.Packet[Any]], None]
    ) -> None:
        self.spec = spec
        self.out = out
        self._on_packet = on_packet
        self._audio_next: int | None = None  # next audio pts, in samples
        self._opus: av.AudioCodecContext | None = None
        self._opus_resampler: AudioResampler | None = None
        self._opus_next: int | None = None
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
        self.format = AudioFormat(
            a.sample_rate, a.channels, asc, aenc.frame_size or 1024, a.bitrate
        )
        if self.spec.tap:
            try:
                self._open_opus()
            except (av.error.FFmpegError, ValueError) as exc:
                # WebRTC viewers then get video only; HLS is unaffected.
                log.warning("[%s] no Opus encoder for the tap (%s)", self.spec.stream, exc)
                self._opus = None

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

    def encode(self, frames: list[Any], expected_ms: int) -> None:
        """The decoded frames of one packet whose pts is ``expected_ms``."""
        rate = self.spec.audio.sample_rate
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
                    self._on_packet(ap)
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

    def flush(self) -> None:
        """At the end of the stream: the encoders' last packets, Opus first."""
        if self._opus is not None:
            self._encode_opus(None)
        for ap in self._aenc.encode(None):
            self._on_packet(ap)
