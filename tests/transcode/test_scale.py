"""A rung's pictures are scaled as the FFmpeg CLI's ``scale`` filter scales them."""

from __future__ import annotations

from fractions import Fraction

import av
import av.filter
import numpy as np
import pytest

from transcode.scale import Scaler


def decoded_h264(width: int = 1280, height: int = 720) -> av.VideoFrame:
    """A picture as the worker gets it: decoded H.264, chroma sited left (no VUI info),
    with fine chroma detail that any re-siting would move."""
    rng = np.random.default_rng(7)
    yuv = rng.integers(16, 236, (height * 3 // 2, width), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, 30)
    enc.options = {"qp": "0", "preset": "ultrafast"}
    frame.pts = 0
    packets = [*enc.encode(frame), *enc.encode(None)]
    dec = av.CodecContext.create("h264", "r")
    frames = [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))
    out = frames[0]
    assert isinstance(out, av.VideoFrame)
    return out


def cli_scale(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """What ``ffmpeg -vf scale=W:H:flags=bicubic`` makes of ``frame``."""
    graph = av.filter.Graph()
    src = graph.add_buffer(
        width=frame.width, height=frame.height, format=frame.format.name, time_base=Fraction(1, 30)
    )
    scale = graph.add("scale", f"{width}:{height}:flags=bicubic")
    sink = graph.add("buffersink")
    src.link_to(scale)
    scale.link_to(sink)
    graph.configure()
    graph.push(frame)
    out = graph.pull()
    assert isinstance(out, av.VideoFrame)
    return out.to_ndarray()


@pytest.mark.parametrize("width,height", [(854, 480), (640, 360), (1280, 360), (640, 720)])
def test_scaled_picture_is_the_cli_scale_filters_bit_for_bit(width: int, height: int) -> None:
    frame = decoded_h264()
    out = Scaler(width, height).scale(frame)
    assert (out.width, out.height, out.format.name) == (width, height, "yuv420p")
    # Chroma included: a re-sited chroma plane differs by ~41 dB PSNR here.
    assert np.array_equal(out.to_ndarray(), cli_scale(frame, width, height))


def test_a_picture_already_the_rungs_size_is_not_touched() -> None:
    frame = decoded_h264(640, 360)
    assert Scaler(640, 360).scale(frame) is frame


def test_a_new_source_size_reopens_the_scaler() -> None:
    scaler = Scaler(640, 360)
    big, small = decoded_h264(1280, 720), decoded_h264(960, 540)
    for frame in (big, small, big):
        assert np.array_equal(scaler.scale(frame).to_ndarray(), cli_scale(frame, 640, 360))
