"""Opening a rung's video encoder: x264, or a hardware encoder such as NVENC.

Encoders run on a 90 kHz time base. Scene cuts are off, so IDRs come only
where the rung forces them, on the segment grid; the WebRTC tap's rendition is
encoded without B-frames or lookahead.
"""

from __future__ import annotations

from fractions import Fraction

import av

from transcode.cfr import exact_rate
from transcode.ladder import Rung

# The time base of every encoder and muxer in the worker.
TICKS_PER_SECOND = 90_000
TICK = Fraction(1, TICKS_PER_SECOND)

# x264 preset names mapped onto NVENC's p1 (fastest) .. p7 (best).
NVENC_PRESETS = {
    "ultrafast": "p1",
    "superfast": "p1",
    "veryfast": "p2",
    "faster": "p3",
    "fast": "p4",
    "medium": "p4",
    "slow": "p6",
}


def open_video_encoder(
    rung: Rung, codec: str, threads: int, gop_frames: int, *, low_delay: bool = False
) -> av.VideoCodecContext:
    """``low_delay``: no B-frames and no lookahead (the WebRTC tap rendition)."""
    enc = av.CodecContext.create(codec, "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width = rung.width
    enc.height = rung.height
    enc.pix_fmt = "yuv420p"
    # 90 kHz: exact frame durations at every common rate (3003 ticks at 29.97).
    enc.time_base = TICK
    enc.framerate = exact_rate(rung.fps)
    enc.bit_rate = rung.video_bitrate
    enc.gop_size = gop_frames * 2
    enc.sample_aspect_ratio = Fraction(1, 1)
    tune = "zerolatency" if low_delay else rung.tune
    # AUTO threading must be chosen before the codec opens: PyAV's default
    # is SLICE, which costs 1.76x wall time on this ladder. zerolatency is the
    # exception: frame threads would hold back (threads - 1) pictures, and
    # FFmpeg only lets x264 use sliced threads when SLICE alone is asked for.
    enc.thread_type = "SLICE" if tune == "zerolatency" else "AUTO"
    enc.thread_count = threads
    opts = {
        "maxrate": str(rung.maxrate),
        "bufsize": str(rung.bufsize),
        "forced-idr": "1",
        "profile": rung.profile,
        "level": rung.level,
    }
    if codec == "libx264":
        opts["preset"] = rung.preset
        if tune:
            opts["tune"] = tune
        # IDRs come only from the PTS grid the decoder thread forces;
        # scene cuts would break cross-rendition alignment.
        opts["x264-params"] = f"keyint={gop_frames * 2}:min-keyint={gop_frames}:scenecut=0"
        if low_delay:
            opts["x264-params"] += ":bframes=0"
    elif codec.endswith("_nvenc"):
        opts["preset"] = NVENC_PRESETS.get(rung.preset, rung.preset)
        opts["no-scenecut"] = "1"
        opts["bf"] = "0"
        if tune in ("zerolatency", "ull", "ll"):
            opts["tune"] = "ull" if tune == "zerolatency" else tune
            opts["zerolatency"] = "1"
    else:
        opts["preset"] = rung.preset
    enc.options = opts
    enc.open()
    return enc
