"""Picture size and frame rate from real encoders' parameter sets."""

from __future__ import annotations

import av
import pytest
from nodeutil import LECTURE, SMALL
from paramsets import h264, hevc, vp8_keyframe

from media import hevc as hevc_ps
from media import vp8
from media.bits import BitReader, unescape
from media.h264 import AvcConfig, Sps, parse_sps


@pytest.mark.parametrize(
    ("width", "height", "fps", "pix_fmt"),
    [
        (1280, 720, 30, "yuv420p"),
        (1920, 1080, 60, "yuv420p"),  # cropped: 1088 coded lines
        (854, 480, 25, "yuv420p"),
        (1080, 1920, 30, "yuv420p"),  # portrait
        (3840, 2160, 50, "yuv420p"),
        (642, 362, 24, "yuv444p"),  # High 4:4:4: chroma_format_idc 3
        (642, 362, 24, "yuv422p"),
    ],
)
def test_h264_sps_of_x264(width: int, height: int, fps: int, pix_fmt: str) -> None:
    sps, avcc = h264(width, height, fps, pix_fmt)
    assert parse_sps(sps) == Sps(width, height, float(fps))
    assert [parse_sps(n) for n in AvcConfig.parse(avcc).sps] == [Sps(width, height, float(fps))]


@pytest.mark.parametrize(("path", "size"), [(SMALL, (640, 360)), (LECTURE, (1280, 720))])
def test_h264_sps_of_the_samples(path: str, size: tuple[int, int]) -> None:
    with av.open(path) as c:
        extradata = c.streams.video[0].codec_context.extradata
    (sps,) = AvcConfig.parse(extradata).sps
    assert (parse_sps(sps).width, parse_sps(sps).height) == size


@pytest.mark.parametrize(("width", "height"), [(1920, 1080), (3840, 2160), (720, 1280)])
def test_hevc_sps_of_x265(width: int, height: int) -> None:
    sps, hvcc = hevc(width, height)
    assert hevc_ps.parse_sps(sps) == Sps(width, height)
    assert [hevc_ps.parse_sps(n) for n in hevc_ps.hvcc_sps(hvcc)] == [Sps(width, height)]


def test_vp8_keyframe_size() -> None:
    assert vp8.keyframe_size(vp8_keyframe(1280, 720)) == (1280, 720)
    assert vp8.keyframe_size(b"\x01\x00\x00") is None  # an inter frame


def test_every_truncation_is_a_value_error() -> None:
    """A cut or hostile SPS raises ValueError and nothing else."""
    for sps in (h264(1920, 1080)[0], h264(642, 362, 24, "yuv444p")[0]):
        for cut in range(len(sps)):
            try:
                parse_sps(sps[:cut])
            except ValueError:
                pass
    sps = hevc(1920, 1080)[0]
    for cut in range(len(sps)):
        try:
            hevc_ps.parse_sps(sps[:cut])
        except ValueError:
            pass
    with pytest.raises(ValueError, match="truncated"):
        parse_sps(b"\x67\x42\x00\x1f")
    with pytest.raises(ValueError, match="over 32 bits"):
        BitReader(bytes(8)).ue()


def test_unescape_removes_emulation_prevention() -> None:
    assert unescape(b"\x00\x00\x03\x01\x00\x00\x03\x00") == b"\x00\x00\x01\x00\x00\x00"
