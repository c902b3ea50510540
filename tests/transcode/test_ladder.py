from __future__ import annotations

import pytest

from transcode.config import TranscodeConfig
from transcode.ladder import plan

LADDER = list(TranscodeConfig().ladder)


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ((1280, 720), [("720p", 1280, 720), ("480p", 854, 480), ("360p", 640, 360)]),
        ((1920, 1080), [("720p", 1280, 720), ("480p", 854, 480), ("360p", 640, 360)]),
        ((854, 480), [("480p", 854, 480), ("360p", 640, 360)]),
        ((640, 360), [("360p", 640, 360)]),
        # smaller than every rung: one rung at the source size, never upscaled
        ((320, 180), [("360p", 320, 180)]),
        # 4:3 keeps its aspect inside each box
        ((960, 720), [("720p", 960, 720), ("480p", 640, 480), ("360p", 480, 360)]),
        # portrait phone video: bounded by the box width
        ((720, 1280), [("720p", 404, 720), ("480p", 270, 480), ("360p", 202, 360)]),
    ],
)
def test_plan_never_upscales_and_keeps_aspect(
    src: tuple[int, int], expected: list[tuple[str, int, int]]
) -> None:
    rungs = plan(LADDER, src[0], src[1], 30.0)
    assert [(r.name, r.width, r.height) for r in rungs] == expected
    for r in rungs:
        assert r.width % 2 == 0 and r.height % 2 == 0
        assert r.width <= src[0] and r.height <= src[1]


def test_plan_caps_fps_at_source() -> None:
    rungs = plan(LADDER, 1280, 720, 25.0)
    assert {r.fps for r in rungs} == {25.0}
