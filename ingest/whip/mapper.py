"""WebRTC encoded frames -> the node's media model (sans-I/O).

One :class:`TrackMapper` per received track turns depayloaded frames with
their RTP timestamps into :class:`media.MediaPacket` on the node's millisecond
timeline. Both tracks of a session share one :class:`Timeline`: each track is
anchored to the arrival time of its first frame (RTP timestamps of audio and
video start at unrelated random values), then follows its own RTP clock, so
the media keeps its exact cadence and lip sync is as good as arrival jitter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.whip.bitstream import AnnexBToAvcc, opus_head, vp8_keyframe
from media import AUDIO, VIDEO, MediaPacket

# RTP codec name (as in SDP rtpmap, case-insensitive) -> FFmpeg decoder name.
VIDEO_CODECS = {"h264": "h264", "vp8": "vp8"}
AUDIO_CODECS = {"opus": "opus"}


@dataclass
class Timeline:
    """The session's time origin: the arrival of its first frame, in seconds."""

    origin: float | None = None

    def ms(self, arrival: float) -> float:
        if self.origin is None:
            self.origin = arrival
        return (arrival - self.origin) * 1000.0


@dataclass
class TrackMapper:
    kind: str
    codec: str  # FFmpeg name
    clock_rate: int
    timeline: Timeline
    channels: int = 2
    # Video before the first decodable keyframe is useless to the decoder.
    waiting_keyframe: bool = True
    frames: int = 0
    dropped: int = 0
    _anchor_ms: float | None = None
    _last_ms: int = -1
    _h264: AnnexBToAvcc = field(default_factory=AnnexBToAvcc)
    _configured: bool = False

    @classmethod
    def for_codec(
        cls,
        kind: str,
        rtp_name: str,
        clock_rate: int,
        timeline: Timeline,
        channels: int | None = None,
    ) -> TrackMapper:
        names = VIDEO_CODECS if kind == VIDEO else AUDIO_CODECS
        codec = names.get(rtp_name.lower())
        if codec is None:
            raise ValueError(
                f"{kind} codec {rtp_name} is not accepted (accepted: {', '.join(names)})"
            )
        if clock_rate <= 0:
            raise ValueError(f"{rtp_name} clock rate {clock_rate} is invalid")
        return cls(kind, codec, clock_rate, timeline, channels or 2, waiting_keyframe=kind == VIDEO)

    def announce(self) -> MediaPacket | None:
        """The Opus configuration, to send before any video reaches the transcoder.

        The worker opens its ladder on the first video picture and gives it audio only if
        it knows of an audio track by then; RTP audio may well arrive after that picture.
        """
        if self.codec != "opus" or self._configured:
            return None
        self._configured = True
        return MediaPacket(AUDIO, "opus", 0, 0, opus_head(self.channels), config=True)

    def map(self, data: bytes, rtp_time: int, arrival: float) -> list[MediaPacket]:
        """Packets for one encoded frame. ``rtp_time`` is unwrapped and starts near 0.

        Raises :class:`ValueError` for a frame that is not valid for its codec.
        """
        now_ms = self.timeline.ms(arrival)
        if self._anchor_ms is None:
            self._anchor_ms = now_ms - rtp_time * 1000.0 / self.clock_rate
        ms = int(round(self._anchor_ms + rtp_time * 1000.0 / self.clock_rate))
        if ms <= self._last_ms:
            ms = self._last_ms + 1  # keep decode order strictly increasing
        out: list[MediaPacket] = []
        if self.codec == "h264":
            au = self._h264.convert(data)
            if au is None:
                return out
            payload, keyframe = au.data, au.keyframe
            if au.config is not None:
                out.append(MediaPacket(VIDEO, "h264", ms, ms, au.config, config=True))
                self._configured = True
            if not self._configured:
                keyframe = False  # no parameter sets yet: not decodable
        elif self.codec == "vp8":
            payload, keyframe = data, vp8_keyframe(data)
        else:
            if not data:
                return out
            payload, keyframe = data, True
            if not self._configured:
                out.append(
                    MediaPacket(AUDIO, "opus", ms, ms, opus_head(self.channels), config=True)
                )
                self._configured = True
        if self.waiting_keyframe:
            if not keyframe:
                self.dropped += 1
                return [p for p in out if p.config]
            self.waiting_keyframe = False
        self._last_ms = ms
        self.frames += 1
        out.append(MediaPacket(self.kind, self.codec, ms, ms, payload, keyframe=keyframe))  # type: ignore[arg-type]
        return out
