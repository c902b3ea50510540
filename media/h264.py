"""H.264 bitstream helpers (pure): avcC parsing and AVCC -> Annex B (ISO 14496-15 §5.3.3)."""

from __future__ import annotations

from dataclasses import dataclass

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
