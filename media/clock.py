"""Machine-readable wall-clock stamps burnt into video frames.

``nearcast publish --clock`` writes the capture time (Unix milliseconds) into
every frame; ``nearcast probe`` and the ``/watch`` page read it back from what
a viewer decodes, so latency is measured glass to glass, through the transcode
ladder, the encoders and the delivery protocol.

The stamp is a band of 2 x 32 large cells near the top edge. Each cell is
black (bit 0) or white (bit 1) in luma, with neutral chroma. Its geometry is
defined relative to the frame (cell = width/48 by height/27, square on 16:9),
so a rendition scaled to any size keeps the cells at the same relative place,
and a reader samples the inner half of each cell, away from the edges that
scaling and compression blur. At 320x180 a cell is still 6.7 px.

Layout of the 64 cells, row by row, most significant bit first::

    1010 | 48-bit milliseconds | CRC-8 of the 6 bytes | 0101

The sync nibbles give the reader one known-white and one known-black set to
threshold between (robust to levels changed by a player or a colour
conversion); the CRC rejects frames without a stamp or with one destroyed.

Pure functions on numpy arrays: no codec, no clock. The browser reader in
``distribute/web/watch.html`` implements the same layout.
"""

from __future__ import annotations

import numpy as np

COLS = 32
ROWS = 2
# Cell size as a fraction of the frame: width/48 by height/27.
GRID_W = 48
GRID_H = 27
# Top-left cell of the band, in cells.
ORIGIN_COL = 8
ORIGIN_ROW = 1
BITS = COLS * ROWS
SYNC_HEAD = (1, 0, 1, 0)
SYNC_TAIL = (0, 1, 0, 1)
MAX_MS = (1 << 48) - 1
BLACK = 16
WHITE = 235
# Minimum luma difference between the white and black sync cells of a stamp.
MIN_CONTRAST = 48


def crc8(data: bytes) -> int:
    """CRC-8 (polynomial 0x07, initial 0), as in ATM HEC without the XOR."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def stamp_bits(ms: int) -> list[int]:
    """The 64 cell values for timestamp ``ms``."""
    if not 0 <= ms <= MAX_MS:
        raise ValueError(f"clock stamp {ms} is outside 0..2^48-1 milliseconds")
    raw = ms.to_bytes(6, "big")
    data = [(ms >> (47 - i)) & 1 for i in range(48)]
    crc = crc8(raw)
    check = [(crc >> (7 - i)) & 1 for i in range(8)]
    return [*SYNC_HEAD, *data, *check, *SYNC_TAIL]


def bits_to_ms(bits: list[int]) -> int | None:
    """The timestamp the 64 cell values carry, or None if they are not a valid stamp."""
    if len(bits) != BITS:
        raise ValueError(f"a clock stamp has {BITS} cells, got {len(bits)}")
    if tuple(bits[:4]) != SYNC_HEAD or tuple(bits[-4:]) != SYNC_TAIL:
        return None
    ms = 0
    for b in bits[4:52]:
        ms = (ms << 1) | b
    crc = 0
    for b in bits[52:60]:
        crc = (crc << 1) | b
    return ms if crc8(ms.to_bytes(6, "big")) == crc else None


def cell_box(index: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel bounds ``(x0, y0, x1, y1)`` of cell ``index`` in a ``width`` x ``height`` frame."""
    row, col = divmod(index, COLS)
    c = ORIGIN_COL + col
    r = ORIGIN_ROW + row
    x0 = c * width // GRID_W
    x1 = (c + 1) * width // GRID_W
    y0 = r * height // GRID_H
    y1 = (r + 1) * height // GRID_H
    return x0, y0, x1, y1


def band_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel bounds of the whole band, one cell of margin around the cells."""
    x0 = (ORIGIN_COL - 1) * width // GRID_W
    x1 = (ORIGIN_COL + COLS + 1) * width // GRID_W
    y0 = (ORIGIN_ROW - 1) * height // GRID_H
    y1 = (ORIGIN_ROW + ROWS + 1) * height // GRID_H
    return x0, y0, x1, y1


def _check_size(width: int, height: int) -> None:
    if width < GRID_W * 2 or height < GRID_H * 2:
        raise ValueError(
            f"a {width}x{height} frame is too small for a clock stamp "
            f"(at least {GRID_W * 2}x{GRID_H * 2})"
        )


def stamp_yuv420p(planes: np.ndarray, ms: int) -> None:
    """Write the stamp of ``ms`` into a yuv420p frame array in place.

    ``planes`` is what ``VideoFrame.to_ndarray(format="yuv420p")`` returns: shape
    ``(height * 3 // 2, width)``, the Y plane followed by the U and V planes.
    The band (with a black margin) is drawn on luma; its chroma is set neutral.
    """
    h = planes.shape[0] * 2 // 3
    w = planes.shape[1]
    _check_size(w, h)
    bits = stamp_bits(ms)
    y = planes[:h]
    bx0, by0, bx1, by1 = band_box(w, h)
    y[by0:by1, bx0:bx1] = BLACK
    for i, bit in enumerate(bits):
        if bit:
            x0, y0, x1, y1 = cell_box(i, w, h)
            y[y0:y1, x0:x1] = WHITE
    # Chroma planes: U then V, each (h/2, w/2), stored as h/4 rows of w each.
    u = planes[h : h + h // 4].reshape(h // 2, w // 2)
    v = planes[h + h // 4 :].reshape(h // 2, w // 2)
    for plane in (u, v):
        plane[by0 // 2 : (by1 + 1) // 2, bx0 // 2 : (bx1 + 1) // 2] = 128


def stamp_luma(luma: np.ndarray, ms: int) -> None:
    """Write the stamp of ``ms`` into a luma (or grey) plane in place."""
    h, w = luma.shape[:2]
    _check_size(w, h)
    bx0, by0, bx1, by1 = band_box(w, h)
    luma[by0:by1, bx0:bx1] = BLACK
    for i, bit in enumerate(stamp_bits(ms)):
        if bit:
            x0, y0, x1, y1 = cell_box(i, w, h)
            luma[y0:y1, x0:x1] = WHITE


def cell_levels(luma: np.ndarray) -> list[float]:
    """Mean level of the inner half of each cell of a luma plane ``(height, width)``."""
    h, w = luma.shape[:2]
    out = []
    for i in range(BITS):
        x0, y0, x1, y1 = cell_box(i, w, h)
        qx = max(0, (x1 - x0) // 4)
        qy = max(0, (y1 - y0) // 4)
        inner = luma[y0 + qy : max(y0 + qy + 1, y1 - qy), x0 + qx : max(x0 + qx + 1, x1 - qx)]
        out.append(float(inner.mean()))
    return out


def read_stamp(luma: np.ndarray) -> int | None:
    """The millisecond stamp in a luma plane, or None if it has none (or it is unreadable)."""
    h, w = luma.shape[:2]
    if w < GRID_W * 2 or h < GRID_H * 2:
        return None
    levels = cell_levels(luma)
    white = [levels[i] for i, b in enumerate(stamp_bits(0)) if i < 4 or i >= 60 if b]
    black = [levels[i] for i, b in enumerate(stamp_bits(0)) if i < 4 or i >= 60 if not b]
    lo, hi = max(black), min(white)
    if hi - lo < MIN_CONTRAST:
        return None
    threshold = (sum(white) / len(white) + sum(black) / len(black)) / 2
    return bits_to_ms([1 if v > threshold else 0 for v in levels])
