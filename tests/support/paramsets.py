"""Real encoder parameter sets for tests: H.264 (x264), HEVC (x265) and VP8 (libvpx)
pictures of any size, encoded once per size with PyAV's bundled FFmpeg."""

from __future__ import annotations

import functools
from fractions import Fraction

import av
import numpy as np

from ingest.whip.bitstream import avc_decoder_config, split_annexb


def _encode(codec: str, width: int, height: int, fps: int, pix_fmt: str) -> tuple[bytes, bytes]:
    """(extradata, first packet) of one black frame."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = Fraction(fps)
    if codec != "libvpx":
        ctx.flags |= av.codec.context.Flags.global_header
        ctx.options = {"preset": "ultrafast"}
    ctx.open()
    rgb = np.zeros((height, width, 3), np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, "rgb24").reformat(format=pix_fmt)
    frame.pts = 0
    packets = [*ctx.encode(frame), *ctx.encode()]
    return bytes(ctx.extradata or b""), bytes(packets[0])


@functools.cache
def h264(width: int, height: int, fps: int = 30, pix_fmt: str = "yuv420p") -> tuple[bytes, bytes]:
    """(SPS NAL unit, AVCDecoderConfigurationRecord) of an x264 stream of that size."""
    nals = split_annexb(_encode("libx264", width, height, fps, pix_fmt)[0])
    sps = [n for n in nals if n[0] & 0x1F == 7]
    pps = [n for n in nals if n[0] & 0x1F == 8]
    return sps[0], avc_decoder_config(sps, pps)


@functools.cache
def hevc(width: int, height: int, fps: int = 30) -> tuple[bytes, bytes]:
    """(SPS NAL unit, HEVCDecoderConfigurationRecord) of an x265 stream of that size."""
    nals = split_annexb(_encode("libx265", width, height, fps, "yuv420p")[0])
    arrays = b""
    sps = b""
    for kind in (32, 33, 34):  # VPS, SPS, PPS
        found = [n for n in nals if (n[0] >> 1) & 0x3F == kind]
        if kind == 33:
            sps = found[0]
        arrays += bytes([0x80 | kind]) + len(found).to_bytes(2, "big")
        arrays += b"".join(len(n).to_bytes(2, "big") + n for n in found)
    # ISO 14496-15 §8.3.3.1.2: 22 bytes of profile and format fields, then the arrays.
    head = bytes([1]) + bytes(20) + bytes([0x0F])  # lengthSizeMinusOne 3
    return sps, head + bytes([3]) + arrays


@functools.cache
def vp8_keyframe(width: int, height: int) -> bytes:
    return _encode("libvpx", width, height, 30, "yuv420p")[1]
