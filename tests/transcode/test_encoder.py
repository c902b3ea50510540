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


def _rung(preset: str, profile: str = "high", tune: str = "") -> Rung:
    return Rung(
        "720p", 1280, 720, 30.0, 2_800_000, 2_800_000, 5_600_000, "libx264", preset, profile,
        "4.1", tune,
    )  # fmt: skip


def _headers(rung: Rung, preset: str = "", params: str = "") -> bytes:
    """The SPS and PPS x264 writes for ``rung`` (at ``preset`` with ``params``)."""
    if preset:
        rung = dataclasses.replace(rung, preset=preset)
    enc = open_video_encoder(rung, "libx264", 1, 60, x264_params=params, global_header=True)
    return bytes(enc.extradata or b"")


@pytest.mark.parametrize("name,rung", _rungs(), ids=[n for n, _ in _rungs()])
def test_every_shipped_rung_goes_faster_with_its_own_headers(name: str, rung: Rung) -> None:
    preset, params, kept = faster_x264(rung, "ultrafast", 1, 60)
    assert (preset, kept) == ("ultrafast", True), (name, params)
    own = _headers(rung)
    assert own and _headers(rung, preset, params) == own


@pytest.mark.parametrize("preset", ["superfast", "faster", "fast", "medium", "slow"])
@pytest.mark.parametrize("tune", ["", "zerolatency"])
def test_x264_presets_from_superfast_to_slow_keep_their_headers_at_ultrafast(
    preset: str, tune: str
) -> None:
    rung = _rung(preset, tune=tune)
    preset, params, kept = faster_x264(rung, "ultrafast", 1, 60)
    assert (preset, kept) == ("ultrafast", True)
    assert _headers(rung, preset, params) == _headers(rung)


def test_a_profile_that_forbids_the_tools_takes_a_faster_preset_that_keeps_them() -> None:
    """Main has no 8x8 transform, so ultrafast with it is refused; a preset in between
    (superfast) keeps Main's headers."""
    rung = _rung("veryfast", profile="main")
    name, params, kept = faster_x264(rung, "ultrafast", 1, 60)
    assert kept and (name, params) == ("superfast", "")
    assert _headers(rung, name, params) == _headers(rung)


def test_when_no_faster_preset_keeps_the_headers_the_answer_says_so() -> None:
    """veryslow's 16 references and 8 B-frames are out of the guesses' reach: ultrafast
    alone, flagged, and the worker sends a new init segment."""
    rung = _rung("veryslow")
    assert faster_x264(rung, "ultrafast", 1, 60) == ("ultrafast", "", False)
    assert _headers(rung, "ultrafast") != _headers(rung)
