"""H.264 bitstream helpers (pure): avcC parsing, AVCC -> Annex B (ISO 14496-15 §5.3.3),
and the picture size and frame rate an SPS declares (ISO 14496-10 §7.3.2.1.1)."""

from __future__ import annotations

from dataclasses import dataclass

from media.bits import BitReader, unescape

START = b"\x00\x00\x00\x01"


@dataclass(frozen=True, slots=True)
class AvcConfig:
    profile: int
    compatibility: int
    level: int
    length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]

    @property
    def codec_string(self) -> str:
        """RFC 6381 ``avc1.PPCCLL``."""
        return f"avc1.{self.profile:02X}{self.compatibility:02X}{self.level:02X}"

    @classmethod
    def parse(cls, data: bytes) -> AvcConfig:
        if len(data) < 7 or data[0] != 1:
            raise ValueError("AVCDecoderConfigurationRecord is invalid")
        length_size = (data[4] & 0x03) + 1
        sps, pos = _parameter_sets(data, 6, data[5] & 0x1F, "SPS")
        if pos >= len(data):
            raise ValueError("AVCDecoderConfigurationRecord has no PPS count")
        pps, _ = _parameter_sets(data, pos + 1, data[pos], "PPS")
        return cls(data[1], data[2], data[3], length_size, tuple(sps), tuple(pps))


def _parameter_sets(data: bytes, pos: int, count: int, what: str) -> tuple[list[bytes], int]:
    """``count`` 16-bit-length-prefixed parameter sets from ``pos``; returns them and the end."""
    sets: list[bytes] = []
    for _ in range(count):
        if pos + 2 > len(data):
            raise ValueError(f"AVCDecoderConfigurationRecord is truncated in its {what} list")
        size = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        if pos + size > len(data):
            raise ValueError(f"AVCDecoderConfigurationRecord {what} overruns the record")
        sets.append(data[pos : pos + size])
        pos += size
    return sets, pos


def split_nals(data: bytes, length_size: int = 4) -> list[bytes]:
    """Split a length-prefixed access unit into NAL units."""
    nals: list[bytes] = []
    pos = 0
    n = len(data)
    while pos < n:
        if pos + length_size > n:
            raise ValueError("NAL unit length prefix is truncated")
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > n:
            raise ValueError(f"NAL unit of {size} bytes overruns the access unit")
        nals.append(data[pos : pos + size])
        pos += size
    return nals


def to_annexb(data: bytes, config: AvcConfig, keyframe: bool) -> bytes:
    """Annex B access unit for MPEG-TS; parameter sets ahead of every IDR (ISO 13818-1 2.14)."""
    nals = split_nals(data, config.length_size)
    out = bytearray(START + b"\x09\xf0")  # access unit delimiter, as H.264 in TS expects
    types = {nal[0] & 0x1F for nal in nals}
    if keyframe and 7 not in types:
        for ps in config.sps + config.pps:
            out += START + ps
    for nal in nals:
        if nal[0] & 0x1F == 9:
            continue  # we wrote our own delimiter
        out += START + nal
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Sps:
    """What a sequence parameter set says of the picture: its cropped size, and its
    frame rate when the SPS carries VUI timing information (else 0)."""

    width: int
    height: int
    fps: float = 0.0


# ISO 14496-10 §7.3.2.1.1: the profiles whose SPS carries chroma_format_idc and more.
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def parse_sps(nal: bytes) -> Sps:
    """Read an H.264 SPS NAL unit (header byte included), ISO 14496-10 §7.3.2.1.1."""
    if len(nal) < 4 or nal[0] & 0x1F != 7:
        raise ValueError("H.264 SPS is not an SPS NAL unit")
    r = BitReader(unescape(nal[1:]), "H.264 SPS")
    profile = r.u(8)
    r.skip(16)  # constraint flags, level_idc
    r.ue()  # seq_parameter_set_id
    chroma = 1
    separate_planes = False
    if profile in _HIGH_PROFILES:
        chroma = r.ue()
        if chroma > 3:
            raise ValueError(f"H.264 SPS chroma_format_idc {chroma} is invalid")
        if chroma == 3:
            separate_planes = r.flag()
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.skip(1)  # qpprime_y_zero_transform_bypass_flag
        if r.flag():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.flag():
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        r.skip(1)
        r.se()
        r.se()
        cycle = r.ue()
        if cycle > 255:
            raise ValueError("H.264 SPS num_ref_frames_in_pic_order_cnt_cycle is over 255")
        for _ in range(cycle):
            r.se()
    elif poc_type != 2:
        raise ValueError(f"H.264 SPS pic_order_cnt_type {poc_type} is invalid")
    r.ue()  # max_num_ref_frames
    r.skip(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.u(1)
    if not frame_mbs_only:
        r.skip(1)  # mb_adaptive_frame_field_flag
    r.skip(1)  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (2 - frame_mbs_only) * height_units * 16
    if r.flag():  # frame_cropping_flag (§7.4.2.1.1, CropUnitX and CropUnitY)
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        if chroma == 0 or separate_planes:
            unit_x, unit_y = 1, 2 - frame_mbs_only
        else:
            unit_x = 2 if chroma in (1, 2) else 1
            unit_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
        if width <= 0 or height <= 0:
            raise ValueError("H.264 SPS crops the whole picture away")
    fps = 0.0
    if r.flag():  # vui_parameters_present_flag (Annex E.1.1)
        fps = _vui_fps(r)
    return Sps(width, height, fps)


def _skip_scaling_list(r: BitReader, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + r.se() + 256) % 256
        last = next_scale or last


def _vui_fps(r: BitReader) -> float:
    if r.flag():  # aspect_ratio_info_present_flag
        if r.u(8) == 255:  # Extended_SAR
            r.skip(32)
    if r.flag():  # overscan_info_present_flag
        r.skip(1)
    if r.flag():  # video_signal_type_present_flag
        r.skip(4)
        if r.flag():  # colour_description_present_flag
            r.skip(24)
    if r.flag():  # chroma_loc_info_present_flag
        r.ue()
        r.ue()
    if not r.flag():  # timing_info_present_flag
        return 0.0
    units, scale = r.u(32), r.u(32)
    # E.2.1: one frame is two ticks (a tick is a field).
    return scale / (2 * units) if units and scale else 0.0


def avc_sps(config: bytes) -> list[Sps]:
    """Every SPS of an AVCDecoderConfigurationRecord, read."""
    return [parse_sps(nal) for nal in AvcConfig.parse(config).sps]
