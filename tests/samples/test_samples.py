"""The committed sample clips match what samples/README.md promises.

The clips are not regenerated here (x264 at 720p takes tens of seconds); this checks the
committed files, which `python samples/make_samples.py` reproduces byte for byte.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "samples"

# name, width, height, shortest and longest duration in seconds, largest size in bytes
CLIPS = [
    ("lecture-720p.mp4", 1280, 720, 12.0, 15.0, 3_600_000),
    ("small-360p.mp4", 640, 360, 5.5, 6.5, 400_000),
]


@pytest.mark.parametrize(("name", "width", "height", "shortest", "longest", "max_size"), CLIPS)
def test_clip_matches_its_description(
    name: str, width: int, height: int, shortest: float, longest: float, max_size: int
) -> None:
    path = SAMPLES / name
    assert path.stat().st_size <= max_size
    with av.open(str(path)) as container:
        assert container.duration is not None
        assert shortest <= container.duration / av.time_base <= longest
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        assert video.codec_context.profile == "High"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert (video.codec_context.width, video.codec_context.height) == (width, height)
        assert video.average_rate == Fraction(30)
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac"
        assert audio.codec_context.sample_rate == 48_000
        assert audio.codec_context.layout.name == "stereo"

        # Keyframes every 2 s exactly (60 frames), so HLS segments of 2 s cut cleanly.
        keyframes = [
            packet.pts * packet.time_base
            for packet in container.demux(video)
            if packet.size and packet.is_keyframe and packet.pts is not None
        ]
    assert keyframes == [Fraction(2 * i) for i in range(len(keyframes))]
    assert len(keyframes) >= int(shortest // 2)


def test_faststart_puts_moov_first() -> None:
    # Progressive playback needs the index ahead of the media data.
    for name, *_ in CLIPS:
        head = (SAMPLES / name).read_bytes()[:4096]
        assert 0 <= head.find(b"moov") < head.find(b"mdat") or head.find(b"mdat") == -1, name


def test_total_size_is_at_most_5_mb() -> None:
    assert sum(p.stat().st_size for p in SAMPLES.glob("*.mp4")) <= 5_000_000


def test_samples_are_documented() -> None:
    readme = (SAMPLES / "README.md").read_text()
    for name, *_ in CLIPS:
        assert name in readme
    assert "make_samples.py" in readme
