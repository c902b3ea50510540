"""Configuration of the transcode stage (the ``transcode:`` section)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from settings import check

X264_TUNES = (
    "",
    "zerolatency",
    "film",
    "animation",
    "grain",
    "stillimage",
    "fastdecode",
    "psnr",
    "ssim",
)


@dataclass(frozen=True)
class Rendition:
    name: str
    width: int = 0
    height: int = 0
    video_bitrate: int = 0
    fps: float = 0.0
    maxrate: int = 0
    bufsize: int = 0
    codec: str = "libx264"
    preset: str = "veryfast"
    profile: str = "high"
    level: str = "4.1"
    # x264 tune ("" none; "zerolatency": no B-frames, no lookahead, sliced threads).
    tune: str = ""

    def __post_init__(self) -> None:
        check(
            re.fullmatch(r"[A-Za-z0-9_-]{1,32}", self.name) is not None,
            "name",
            f"must be 1-32 letters, digits, '-' or '_', not {self.name!r}",
        )
        check(
            self.tune in X264_TUNES,
            "tune",
            f"must be one of {', '.join(repr(t) for t in X264_TUNES)}, not {self.tune!r}",
        )
        if self.codec == "copy":
            # The source rendition: passed through as published, size and rate its own.
            return
        check(self.width > 0 and self.width % 2 == 0, "width", "must be a positive even number")
        check(self.height > 0 and self.height % 2 == 0, "height", "must be a positive even number")
        check(self.video_bitrate > 0, "video_bitrate", "must be greater than zero")
        check(self.fps >= 0, "fps", "must be zero (keep the source rate) or positive")


def _default_ladder() -> list[Rendition]:
    return [
        Rendition("720p", 1280, 720, 2_800_000, maxrate=2_800_000, bufsize=5_600_000),
        Rendition("480p", 854, 480, 1_200_000, maxrate=1_200_000, bufsize=2_400_000),
        Rendition("360p", 640, 360, 700_000, maxrate=700_000, bufsize=1_400_000),
    ]


@dataclass(frozen=True)
class AudioProfile:
    codec: str = "aac"
    bitrate: int = 128_000
    sample_rate: int = 48_000
    channels: int = 2

    def __post_init__(self) -> None:
        check(self.bitrate > 0, "bitrate", "must be greater than zero")
        check(self.sample_rate in (44_100, 48_000), "sample_rate", "must be 44100 or 48000")
        check(self.channels in (1, 2), "channels", "must be 1 or 2")


@dataclass(frozen=True)
class Profile:
    """A named ladder: what a tenant or a stream can ask for instead of the default."""

    ladder: list[Rendition]
    audio: AudioProfile = field(default_factory=AudioProfile)

    def __post_init__(self) -> None:
        _check_ladder(self.ladder, "ladder")


def _check_ladder(ladder: list[Rendition], key: str) -> None:
    check(len(ladder) > 0, key, "must hold at least one rendition")
    names = [r.name for r in ladder]
    check(len(set(names)) == len(names), key, "has two renditions with the same name")


def _default_profiles() -> dict[str, Profile]:
    return {
        "passthrough": Profile(ladder=[Rendition("source", codec="copy")]),
        "source_plus": Profile(
            ladder=[
                Rendition("source", codec="copy"),
                Rendition("360p", 640, 360, 700_000, maxrate=700_000, bufsize=1_400_000),
            ]
        ),
        # The default ladder for LL-HLS and WebRTC: x264 without lookahead or
        # B-frames (0 frames of encoder delay instead of ~17 at veryfast), for
        # about 10-15% more bits at the same quality.
        "lowlatency": Profile(
            ladder=[dataclasses.replace(r, tune="zerolatency") for r in _default_ladder()]
        ),
    }


@dataclass(frozen=True)
class TranscodeConfig:
    ladder: list[Rendition] = field(default_factory=_default_ladder)
    audio: AudioProfile = field(default_factory=AudioProfile)
    profiles: dict[str, Profile] = field(default_factory=_default_profiles)
    tenant_profiles: dict[str, str] = field(default_factory=dict)
    stream_profile_param: bool = True
    x264_threads: int = 0
    input_queue_packets: int = 600
    restart_backoff: float = 0.5
    capacity_units: float = 0.0
    calibration_cache: bool = True
    overflow: str = "passthrough"
    admission_reserve: float = 0.3
    trimmed_adds_source: bool = True
    degrade_lag: float = 1.5
    # Address-space limit of each worker in MiB (RLIMIT_AS), 0 for none.
    worker_memory_mb: int = 8192

    def __post_init__(self) -> None:
        _check_ladder(self.ladder, "ladder")
        check(
            self.worker_memory_mb == 0 or self.worker_memory_mb >= 1024,
            "worker_memory_mb",
            "must be 0 (no limit) or at least 1024",
        )
        check(
            "default" not in self.profiles,
            "profiles",
            "must not redefine 'default' (it is 'ladder')",
        )
        for tenant, name in self.tenant_profiles.items():
            check(
                name == "default" or name in self.profiles,
                f"tenant_profiles.{tenant}",
                f"names unknown profile {name!r}",
            )
        check(self.capacity_units >= 0, "capacity_units", "must be zero (calibrate) or positive")
        check(
            self.overflow in ("refuse", "passthrough"), "overflow", "must be refuse or passthrough"
        )
        check(self.admission_reserve >= 0, "admission_reserve", "must not be negative")
        check(self.degrade_lag > 0, "degrade_lag", "must be greater than zero")
        check(self.x264_threads >= 0, "x264_threads", "must be zero (auto) or positive")
        check(self.input_queue_packets >= 32, "input_queue_packets", "must be at least 32")
        check(self.restart_backoff >= 0, "restart_backoff", "must not be negative")

    def profile(self, name: str) -> Profile:
        """``default`` is the top-level ladder; anything else must be in ``profiles``."""
        if name == "default":
            return Profile(ladder=list(self.ladder), audio=self.audio)
        try:
            return self.profiles[name]
        except KeyError:
            raise KeyError(f"unknown transcode profile {name!r}") from None
