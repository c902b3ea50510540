"""VP8 key frame header (pure): the picture size, RFC 6386 §9.1 and §19.1."""

from __future__ import annotations

START_CODE = b"\x9d\x01\x2a"


def keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a VP8 key frame; ``None`` for an inter frame."""
    if len(frame) < 3:
        raise ValueError(f"VP8 frame of {len(frame)} bytes is shorter than its frame tag")
    if frame[0] & 0x01:
        return None  # P bit set: an inter frame
    if len(frame) < 10 or frame[3:6] != START_CODE:
        raise ValueError("VP8 key frame has no start code and size")
    # 14 bits of size, 2 bits of upscaling hint, little endian.
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height
