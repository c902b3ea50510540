"""Fragmented MP4 / CMAF writer (pure: bytes in, bytes out).

Two products, as HLS needs them (RFC 8216bis §3.3, ISO/IEC 14496-12 and 23000-19):

- :func:`init_segment`: ``ftyp`` + ``moov`` (one ``trak`` per track, ``mvex``/``trex``),
  served as the ``EXT-X-MAP``;
- :func:`fragment`: ``moof`` (``mfhd``, per track ``traf`` with ``tfhd``
  default-base-is-moof, ``tfdt`` and a version-1 ``trun`` carrying per-sample
  duration, size, flags and signed composition offsets) + ``mdat``.

Tracks: H.264 (``avc1``/``avcC``), AAC (``mp4a``/``esds``) and Opus (``Opus``/``dOps``,
for the WebRTC tap's hidden rendition).

Written by hand rather than through libavformat's mp4 muxer so that the worker
decides exactly where a fragment ends: one fragment per LL-HLS part, flushed
the moment its last frame is encoded, with no muxer-side buffering.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# trun sample flags (ISO 14496-12 §8.8.3.1): a sync sample depends on nothing;
# any other video sample depends on others and is not a sync sample.
SYNC_FLAGS = 0x02000000
NON_SYNC_FLAGS = 0x01010000

_SAMPLE_RATES = [
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
]
_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | (flags & 0xFFFFFF)), *payload)


# -- codec configuration --------------------------------------------------------


def unescape_rbsp(nal: bytes) -> bytes:
    """Drop emulation-prevention bytes (H.264 §7.4.1): 00 00 03 -> 00 00."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.pos >> 3
        if byte >= len(self.data):
            raise ValueError("SPS is truncated")
        b = (self.data[byte] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return b

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("SPS has an invalid Exp-Golomb code")
        value = 1
        for _ in range(zeros):
            value = (value << 1) | self.bit()
        return value - 1


def sps_chroma(sps: bytes) -> tuple[int, int, int]:
    """``(chroma_format_idc, bit_depth_luma, bit_depth_chroma)`` of an SPS NAL unit."""
    if len(sps) < 4 or sps[0] & 0x1F != 7:
        raise ValueError("not an SPS NAL unit")
    profile = sps[1]
    if profile not in _HIGH_PROFILES:
        return 1, 8, 8
    bits = _Bits(unescape_rbsp(sps[4:]))
    bits.ue()  # seq_parameter_set_id
    chroma = bits.ue()
    if chroma > 3:
        raise ValueError(f"SPS chroma_format_idc {chroma} is invalid")
    if chroma == 3:
        bits.bit()  # separate_colour_plane_flag
    luma, chroma_depth = bits.ue() + 8, bits.ue() + 8
    if luma > 14 or chroma_depth > 14:
        raise ValueError("SPS bit depth is invalid")
    return chroma, luma, chroma_depth


def avcc_record(sps: Sequence[bytes], pps: Sequence[bytes]) -> bytes:
    """AVCDecoderConfigurationRecord (ISO 14496-15 §5.3.3.1), 4-byte NAL lengths."""
    if not sps or not pps:
        raise ValueError("an avcC needs at least one SPS and one PPS")
    if len(sps) > 31 or len(pps) > 255:
        raise ValueError("too many parameter sets for an avcC")
    first = sps[0]
    if len(first) < 4:
        raise ValueError("SPS is truncated")
    out = bytearray([1, first[1], first[2], first[3], 0xFC | 3, 0xE0 | len(sps)])
    for s in sps:
        out += struct.pack(">H", len(s)) + s
    out.append(len(pps))
    for p in pps:
        out += struct.pack(">H", len(p)) + p
    if first[1] in _HIGH_PROFILES:
        chroma, luma, cdepth = sps_chroma(first)
        out += bytes([0xFC | chroma, 0xF8 | (luma - 8), 0xF8 | (cdepth - 8), 0])
    return bytes(out)


def audio_specific_config(sample_rate: int, channels: int, object_type: int = 2) -> bytes:
    """The 2-byte AudioSpecificConfig (ISO 14496-3 §1.6.2.1) of AAC-LC and friends."""
    try:
        freq = _SAMPLE_RATES.index(sample_rate)
    except ValueError:
        raise ValueError(f"AAC sample rate {sample_rate} has no frequency index") from None
    if not 1 <= channels <= 7:
        raise ValueError(f"AAC channel configuration {channels} is invalid")
    if not 1 <= object_type <= 30:
        raise ValueError(f"AAC object type {object_type} is invalid")
    value = (object_type << 11) | (freq << 7) | (channels << 3)
    return struct.pack(">H", value)


# -- tracks and the init segment --------------------------------------------------


@dataclass(frozen=True, slots=True)
class VideoTrack:
    """An H.264 track: its size and parameter sets (the ``avcC``).

    ``edit_offset`` (ticks): the composition offset of the first picture, which
    an edit list (``elst`` media_time, as Shaka Packager and FFmpeg write for
    B-frames) takes off every presentation time, so that picture shows at its
    decode time (ISO/IEC 14496-12 §8.6.6).
    """

    track_id: int
    timescale: int
    width: int
    height: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]
    edit_offset: int = 0

    @property
    def codec_string(self) -> str:
        """RFC 6381 ``avc1.PPCCLL``, as the TS path writes it."""
        s = self.sps[0]
        return f"avc1.{s[1]:02X}{s[2]:02X}{s[3]:02X}"

    def sample_entry(self) -> bytes:
        avcc = box(b"avcC", avcc_record(self.sps, self.pps))
        pasp = box(b"pasp", struct.pack(">II", 1, 1))
        return box(
            b"avc1",
            bytes(6),
            struct.pack(">H", 1),  # data_reference_index
            bytes(16),  # pre_defined, reserved, pre_defined[3]
            struct.pack(">HH", self.width, self.height),
            struct.pack(">II", 0x00480000, 0x00480000),  # 72 dpi
            bytes(4),
            struct.pack(">H", 1),  # frame_count
            bytes(32),  # compressorname
            struct.pack(">Hh", 0x0018, -1),
            avcc,
            pasp,
        )


@dataclass(frozen=True, slots=True)
class AudioTrack:
    """An AAC track: its AudioSpecificConfig (carried in the ``esds``)."""

    track_id: int
    sample_rate: int
    channels: int
    config: bytes
    bitrate: int = 0

    @property
    def timescale(self) -> int:
        return self.sample_rate

    @property
    def codec_string(self) -> str:
        return f"mp4a.40.{self.config[0] >> 3 if self.config else 2}"

    def sample_entry(self) -> bytes:
        dsi = _descriptor(5, self.config)
        dcd = _descriptor(
            4,
            bytes([0x40, 0x15]),  # MPEG-4 audio, audio stream
            (0).to_bytes(3, "big"),  # bufferSizeDB
            struct.pack(">II", self.bitrate, self.bitrate),
            dsi,
        )
        es = _descriptor(3, struct.pack(">HB", self.track_id, 0), dcd, _descriptor(6, b"\x02"))
        return box(
            b"mp4a",
            bytes(6),
            struct.pack(">H", 1),
            bytes(8),
            struct.pack(">HHHH", self.channels, 16, 0, 0),
            struct.pack(">I", self.sample_rate << 16 if self.sample_rate < 65536 else 0),
            full_box(b"esds", 0, 0, es),
        )


@dataclass(frozen=True, slots=True)
class OpusTrack:
    """An Opus track, as "Encapsulation of Opus in ISO Base Media File Format"
    (opus-codec.org, v0.8.1) describes it: an ``Opus`` sample entry with a ``dOps``
    box, on a 48 kHz timescale (every Opus frame is a multiple of 2.5 ms at 48 kHz).

    ``pre_skip`` is the encoder's priming in 48 kHz samples; a live rendition that
    viewers join anywhere has none to signal and leaves it 0.
    """

    track_id: int
    channels: int
    pre_skip: int = 0
    input_sample_rate: int = 48000
    bitrate: int = 0

    @property
    def timescale(self) -> int:
        return 48000

    @property
    def codec_string(self) -> str:
        return "Opus"  # the sample entry four-cc (RFC 6381 §3.3)

    def sample_entry(self) -> bytes:
        return box(
            b"Opus",
            bytes(6),
            struct.pack(">H", 1),  # data_reference_index
            bytes(8),
            struct.pack(">HHHH", self.channels, 16, 0, 0),
            struct.pack(">I", 48000 << 16),
            box(b"dOps", opus_specific(self.channels, self.pre_skip, self.input_sample_rate)),
        )


def opus_specific(channels: int, pre_skip: int = 0, input_sample_rate: int = 48000) -> bytes:
    """The ``dOps`` payload (Opus-in-ISOBMFF §4.3.2) of a mono or stereo stream.

    Channel mapping family 0 (RFC 7845 §5.1.1.1) covers one or two channels and
    needs no mapping table; it is big-endian, unlike the OpusHead it mirrors.
    """
    if channels not in (1, 2):
        raise ValueError(f"Opus channel count {channels} needs a mapping table; only 1 or 2")
    if not 0 <= pre_skip < 1 << 16:
        raise ValueError(f"Opus pre-skip {pre_skip} is out of range")
    if not 0 <= input_sample_rate < 1 << 32:
        raise ValueError(f"Opus input sample rate {input_sample_rate} is out of range")
    return struct.pack(">BBHIhB", 0, channels, pre_skip, input_sample_rate, 0, 0)


Track = VideoTrack | AudioTrack | OpusTrack


def _descriptor(tag: int, *payload: bytes) -> bytes:
    body = b"".join(payload)
    n = len(body)
    if n >= 1 << 28:
        raise ValueError("descriptor too large")
    # Four-byte expandable size (ISO 14496-1 §8.3.3), as most muxers write it.
    size = bytes(
        [0x80 | (n >> 21) & 0x7F, 0x80 | (n >> 14) & 0x7F, 0x80 | (n >> 7) & 0x7F, n & 0x7F]
    )
    return bytes([tag]) + size + body


def _trak(track: Track) -> bytes:
    video = isinstance(track, VideoTrack)
    width, height = (track.width, track.height) if isinstance(track, VideoTrack) else (0, 0)
    tkhd = full_box(
        b"tkhd",
        0,
        0x000003,  # enabled, in movie
        struct.pack(">IIIII", 0, 0, track.track_id, 0, 0),
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0 if video else 0x0100, 0),
        _MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, track.timescale, 0, 0x55C4, 0))
    handler, name = (b"vide", b"VideoHandler\0") if video else (b"soun", b"SoundHandler\0")
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), name)
    media_header = full_box(b"vmhd", 0, 1, bytes(8)) if video else full_box(b"smhd", 0, 0, bytes(4))
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), track.sample_entry()),
        full_box(b"stts", 0, 0, bytes(4)),
        full_box(b"stsc", 0, 0, bytes(4)),
        full_box(b"stsz", 0, 0, bytes(8)),
        full_box(b"stco", 0, 0, bytes(4)),
    )
    minf = box(b"minf", media_header, dinf, stbl)
    edts = b""
    if isinstance(track, VideoTrack) and track.edit_offset:
        if not 0 < track.edit_offset < 1 << 31:
            raise ValueError(
                f"track {track.track_id}: edit offset {track.edit_offset} is out of range"
            )
        # One edit: the whole media (duration 0, unknown in a fragmented file) from
        # media_time on, at rate 1.
        edts = box(
            b"edts", full_box(b"elst", 0, 0, struct.pack(">IIihh", 1, 0, track.edit_offset, 1, 0))
        )
    return box(b"trak", tkhd, edts, box(b"mdia", mdhd, hdlr, minf))


def init_segment(tracks: Sequence[Track]) -> bytes:
    """``ftyp`` + ``moov`` for fragmented playback of ``tracks``."""
    if not tracks:
        raise ValueError("an init segment needs at least one track")
    ids = [t.track_id for t in tracks]
    if len(set(ids)) != len(ids) or min(ids) < 1:
        raise ValueError("track ids must be distinct and positive")
    ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6cmfcdashmp41")
    mvhd = full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, 0),
        struct.pack(">IH", 0x00010000, 0x0100),
        bytes(10),
        _MATRIX,
        bytes(24),
        struct.pack(">I", max(ids) + 1),
    )
    trex = [full_box(b"trex", 0, 0, struct.pack(">IIIII", t.track_id, 1, 0, 0, 0)) for t in tracks]
    moov = box(b"moov", mvhd, *(_trak(t) for t in tracks), box(b"mvex", *trex))
    return ftyp + moov


# -- fragments ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One access unit. ``cts`` is presentation minus decode time (may be negative)."""

    data: bytes
    duration: int
    sync: bool = True
    cts: int = 0


@dataclass(frozen=True, slots=True)
class TrackRun:
    """The samples of one track in one fragment, in decode order."""

    track_id: int
    base_decode_time: int
    samples: Sequence[Sample] = field(default_factory=tuple)
    video: bool = True


_TRUN_DATA_OFFSET = 0x000001
_TRUN_DURATION = 0x000100
_TRUN_SIZE = 0x000200
_TRUN_FLAGS = 0x000400
_TRUN_CTS = 0x000800
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000


def _traf(run: TrackRun, data_offset: int) -> bytes:
    if run.base_decode_time < 0:
        raise ValueError(
            f"track {run.track_id}: base decode time {run.base_decode_time} is negative"
        )
    flags = _TRUN_DATA_OFFSET | _TRUN_DURATION | _TRUN_SIZE
    if run.video:
        flags |= _TRUN_FLAGS | _TRUN_CTS
    entries = bytearray()
    for s in run.samples:
        if not 0 <= s.duration < 1 << 32:
            raise ValueError(f"track {run.track_id}: sample duration {s.duration} is out of range")
        entries += struct.pack(">II", s.duration, len(s.data))
        if run.video:
            if not -(1 << 31) <= s.cts < 1 << 31:
                raise ValueError(
                    f"track {run.track_id}: composition offset {s.cts} is out of range"
                )
            entries += struct.pack(">Ii", SYNC_FLAGS if s.sync else NON_SYNC_FLAGS, s.cts)
    return box(
        b"traf",
        full_box(b"tfhd", 0, _TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", run.track_id)),
        full_box(b"tfdt", 1, 0, struct.pack(">Q", run.base_decode_time)),
        # Version 1: signed composition offsets, so B-frames need no edit list (CMAF §7.5.17).
        full_box(
            b"trun", 1, flags, struct.pack(">Ii", len(run.samples), data_offset), bytes(entries)
        ),
    )


def fragment(sequence: int, runs: Iterable[TrackRun]) -> bytes:
    """``moof`` + ``mdat`` holding ``runs`` (empty runs are left out)."""
    runs = [r for r in runs if r.samples]
    if not runs:
        raise ValueError("a fragment needs at least one sample")
    if not 0 < sequence < 1 << 32:
        raise ValueError(f"fragment sequence number {sequence} is out of range")
    mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", sequence))
    # The moof's size does not depend on the offsets' values: size it first.
    draft = [_traf(r, 0) for r in runs]
    moof_size = 8 + len(mfhd) + sum(len(t) for t in draft)
    offset = moof_size + 8  # past the mdat header
    trafs = []
    for r in runs:
        trafs.append(_traf(r, offset))
        offset += sum(len(s.data) for s in r.samples)
    payload = b"".join(s.data for r in runs for s in r.samples)
    return box(b"moof", mfhd, *trafs) + box(b"mdat", payload)
