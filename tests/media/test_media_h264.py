from __future__ import annotations

import pytest

from media.h264 import AvcConfig, split_nals, to_annexb

SPS = bytes([0x67, 0x64, 0x00, 0x1F, 0xAC])
PPS = bytes([0x68, 0xEE, 0x3C, 0x80])
AVCC = bytes([1, 0x64, 0x00, 0x1F, 0xFF, 0xE1, 0, len(SPS)]) + SPS + bytes([1, 0, len(PPS)]) + PPS


def test_parse_avcc() -> None:
    cfg = AvcConfig.parse(AVCC)
    assert cfg.sps == (SPS,) and cfg.pps == (PPS,) and cfg.length_size == 4
    assert cfg.codec_string == "avc1.64001F"


@pytest.mark.parametrize("cut", [3, 8, 10, len(AVCC) - 1])
def test_truncated_avcc_is_a_clear_error(cut: int) -> None:
    with pytest.raises(ValueError, match="AVCDecoderConfigurationRecord"):
        AvcConfig.parse(AVCC[:cut])


def test_annexb_puts_parameter_sets_before_idr() -> None:
    cfg = AvcConfig.parse(AVCC)
    idr = bytes([0x65, 1, 2, 3])
    au = len(idr).to_bytes(4, "big") + idr
    out = to_annexb(au, cfg, keyframe=True)
    start = b"\x00\x00\x00\x01"
    assert out == start + b"\x09\xf0" + start + SPS + start + PPS + start + idr
    assert split_nals(au) == [idr]
    with pytest.raises(ValueError):
        split_nals(au[:-1])
