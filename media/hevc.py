"""HEVC parameter sets (pure): the picture size an SPS declares (ITU-T H.265 §7.3.2.2),
from an HEVCDecoderConfigurationRecord (ISO 14496-15 §8.3.3.1) or an SPS NAL unit."""

from __future__ import annotations

from media.bits import BitReader, unescape
from media.h264 import Sps

NAL_SPS = 33


def hvcc_sps(config: bytes) -> list[bytes]:
    """The SPS NAL units of an HEVCDecoderConfigurationRecord."""
    if len(config) < 23 or config[0] != 1:
        raise ValueError("HEVCDecoderConfigurationRecord is invalid")
    pos = 23
    out: list[bytes] = []
    for _ in range(config[22]):
        if pos + 3 > len(config):
            raise ValueError("HEVCDecoderConfigurationRecord is truncated in its arrays")
        kind = config[pos] & 0x3F
        count = int.from_bytes(config[pos + 1 : pos + 3], "big")
        pos += 3
        for _ in range(count):
            if pos + 2 > len(config):
                raise ValueError("HEVCDecoderConfigurationRecord is truncated in a NAL unit")
            size = int.from_bytes(config[pos : pos + 2], "big")
            pos += 2
            if pos + size > len(config):
                raise ValueError("HEVCDecoderConfigurationRecord NAL unit overruns the record")
            if kind == NAL_SPS:
                out.append(config[pos : pos + size])
            pos += size
    return out


def parse_sps(nal: bytes) -> Sps:
    """Read an HEVC SPS NAL unit (2-byte header included) up to its conformance window.

    The frame rate sits in the VUI, past the reference picture sets; it is not read (0).
    """
    if len(nal) < 3 or (nal[0] >> 1) & 0x3F != NAL_SPS:
        raise ValueError("HEVC SPS is not an SPS NAL unit")
    r = BitReader(unescape(nal[2:]), "HEVC SPS")
    r.skip(4)  # sps_video_parameter_set_id
    sub_layers = r.u(3)  # sps_max_sub_layers_minus1
    r.skip(1)  # sps_temporal_id_nesting_flag
    # profile_tier_level(1, sps_max_sub_layers_minus1), §7.3.3
    r.skip(88)  # general profile space, tier, profile, compatibility and constraint flags
    r.skip(8)  # general_level_idc
    present = [(r.flag(), r.flag()) for _ in range(sub_layers)]
    if sub_layers:
        r.skip(2 * (8 - sub_layers))  # reserved_zero_2bits
    for profile_present, level_present in present:
        r.skip((88 if profile_present else 0) + (8 if level_present else 0))
    r.ue()  # sps_seq_parameter_set_id
    chroma = r.ue()
    if chroma > 3:
        raise ValueError(f"HEVC SPS chroma_format_idc {chroma} is invalid")
    if chroma == 3 and r.flag():  # separate_colour_plane_flag: ChromaArrayType 0
        chroma = 0
    width, height = r.ue(), r.ue()
    if r.flag():  # conformance_window_flag, in chroma samples (§7.4.3.2.1)
        sub_w = 2 if chroma in (1, 2) else 1
        sub_h = 2 if chroma == 1 else 1
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        width -= sub_w * (left + right)
        height -= sub_h * (top + bottom)
    if width <= 0 or height <= 0:
        raise ValueError(f"HEVC SPS picture size {width}x{height} is invalid")
    return Sps(width, height)
