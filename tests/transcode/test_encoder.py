"""Opening the rungs' encoders: overload's faster preset keeps the parameter sets."""

from __future__ import annotations

import dataclasses

import pytest

from transcode.config import TranscodeConfig
from transcode.encoder import faster_x264, open_video_encoder
from transcode.ladder import Rung, plan


def _rungs() -> list[tuple[str, Rung]]:
    """Every x264 rung of the shipped profiles, planned for a 720p30 source."""
    return [
        (f"{name}-{rung.name}", rung)
        for name, profile in TranscodeConfig().profiles.items()
        for rung in plan(profile.ladder, 1280, 720, 30.0)
        if rung.codec == "libx264"
    ]


@pytest.mark.parametrize("name,rung", _rungs(), ids=[n for n, _ in _rungs()])
def test_every_shipped_rung_goes_faster_with_its_own_headers(name: str, rung: Rung) -> None:
    preset, params, kept = faster_x264(rung, "ultrafast", 1, 60)
    assert (preset, kept) == ("ultrafast", True), (name, params)
    own = open_video_encoder(rung, "libx264", 1, 60, global_header=True).extradata
    fast = open_video_encoder(
        dataclasses.replace(rung, preset=preset),
        "libx264",
        1,
        60,
        x264_params=params,
        global_header=True,
    ).extradata
    assert own and own == fast


@pytest.mark.parametrize("preset", ["superfast", "faster", "fast", "medium", "slow"])
@pytest.mark.parametrize("tune", ["", "zerolatency"])
def test_x264_presets_from_superfast_to_slow_keep_their_headers_at_ultrafast(
    preset: str, tune: str
) -> None:
    rung = Rung(
        "720p",
        1280,
        720,
        30.0,
        2_800_000,
        2_800_000,
        5_600_000,
        "libx264",
        preset,
        "high",
        "4.1",
        tune,
    )
    assert faster_x264(rung, "ultrafast", 1, 60)[::2] == ("ultrafast", True)


def test_a_profile_that_forbids_the_tools_takes_the_fastest_preset_that_keeps_them() -> None:
    """Main has no 8x8 transform: ultrafast with it is refused, superfast keeps Main's headers."""
    rung = Rung(
        "720p",
        1280,
        720,
        30.0,
        2_800_000,
        2_800_000,
        5_600_000,
        "libx264",
        "veryfast",
        "main",
        "4.1",
    )
    name, params, kept = faster_x264(rung, "ultrafast", 1, 60)
    assert kept
    own = open_video_encoder(rung, "libx264", 1, 60, global_header=True).extradata
    fast = open_video_encoder(
        dataclasses.replace(rung, preset=name),
        "libx264",
        1,
        60,
        x264_params=params,
        global_header=True,
    ).extradata
    assert own == fast
