"""Clock stamps survive scaling and lossy compression; anything else reads as no stamp."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.clock import (
    BITS,
    MAX_MS,
    bits_to_ms,
    read_stamp,
    stamp_bits,
    stamp_luma,
    stamp_yuv420p,
)

SIZES = [(1280, 720), (854, 480), (640, 360), (426, 240), (320, 180)]


def _frame(width: int, height: int, seed: int) -> av.VideoFrame:
    rng = np.random.default_rng(seed)
    planes = rng.integers(0, 256, (height * 3 // 2, width), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(planes, format="yuv420p")


def _stamped(width: int, height: int, seed: int, ms: int) -> av.VideoFrame:
    planes = _frame(width, height, seed).to_ndarray(format="yuv420p")
    stamp_yuv420p(planes, ms)
    return av.VideoFrame.from_ndarray(planes, format="yuv420p")


def _luma(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="yuv420p")[: frame.height]


@given(st.integers(0, MAX_MS))
def test_bits_round_trip(ms: int) -> None:
    assert bits_to_ms(stamp_bits(ms)) == ms


@given(st.integers(0, MAX_MS), st.integers(0, BITS - 1))
def test_a_flipped_cell_is_rejected(ms: int, index: int) -> None:
    bits = stamp_bits(ms)
    bits[index] ^= 1
    assert bits_to_ms(bits) is None


def test_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="outside"):
        stamp_bits(1 << 48)
    with pytest.raises(ValueError, match="too small"):
        stamp_luma(np.zeros((40, 60), np.uint8), 1)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, MAX_MS),
    st.sampled_from(SIZES[:3]),
    st.sampled_from(SIZES[2:]),
    st.integers(0, 2**32 - 1),
    st.floats(0.0, 12.0),
    st.integers(20, 90),
)
def test_survives_scaling_noise_and_jpeg(
    ms: int, src: tuple[int, int], dst: tuple[int, int], seed: int, noise: float, quality: int
) -> None:
    frame = _stamped(*src, seed, ms)
    scaled = frame.reformat(
        width=dst[0], height=dst[1], format="yuvj420p", interpolation="BILINEAR"
    )
    luma = _luma(scaled).astype(np.float64)
    luma += np.random.default_rng(seed).normal(0, noise, luma.shape)
    grey = np.clip(luma, 0, 255).astype(np.uint8)
    # JPEG round trip, FFmpeg's mjpeg: block artefacts like a starved encoder.
    enc = av.CodecContext.create("mjpeg", "w")
    enc.width, enc.height, enc.pix_fmt = dst[0], dst[1], "yuvj420p"
    enc.time_base = Fraction(1, 25)
    enc.options = {"qmin": str(2 + (90 - quality) // 3), "qmax": str(2 + (90 - quality) // 3)}
    planes = scaled.to_ndarray(format="yuvj420p")
    planes[: dst[1]] = grey
    packets = enc.encode(av.VideoFrame.from_ndarray(planes, format="yuvj420p"))
    dec = av.CodecContext.create("mjpeg", "r")
    out = [f for p in packets for f in dec.decode(p)]
    assert read_stamp(_luma(out[0])) == ms


@given(st.integers(0, 2**32 - 1), st.sampled_from(SIZES))
def test_unstamped_frames_read_as_none(seed: int, size: tuple[int, int]) -> None:
    assert read_stamp(_luma(_frame(*size, seed))) is None
    assert read_stamp(np.full((size[1], size[0]), 128, np.uint8)) is None


def test_survives_the_ladder_through_x264() -> None:
    """720p stamped, scaled to 360p and 180p, x264 at low bitrates, decoded: every frame reads."""
    start = 1_764_000_000_000
    frames = [_stamped(1280, 720, i, start + 33 * i) for i in range(20)]
    for width, height, rate in ((640, 360, 300_000), (320, 180, 120_000)):
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as out:
            s = out.add_stream("libx264", rate=30)
            s.width, s.height, s.pix_fmt, s.bit_rate = width, height, "yuv420p", rate
            s.options = {"preset": "veryfast"}
            for f in frames:
                scaled = f.reformat(width=width, height=height)
                scaled.pts = None
                out.mux(s.encode(scaled))
            out.mux(s.encode())
        buf.seek(0)
        with av.open(buf) as inp:
            got = [read_stamp(_luma(f)) for f in inp.decode(video=0)]
        assert got == [start + 33 * i for i in range(20)], (width, got)
