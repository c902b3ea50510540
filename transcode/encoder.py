"""Opening a rung's video encoder: x264, or a hardware encoder such as NVENC.

Encoders run on a 90 kHz time base. Scene cuts are off, so IDRs come only
where the rung forces them, on the segment grid; the WebRTC tap's rendition is
encoded without B-frames or lookahead.

Overload's first step (:mod:`transcode.overload`) reopens a rung's x264 with a
faster preset at a segment boundary. :func:`faster_x264` picks one that keeps
the rung's parameter sets, so the stream goes on under the same init segment
and the same ``CODECS``: x264's ``ultrafast`` alone turns CABAC, the 8x8
transform and weighted prediction off, a new SPS/PPS (Constrained Baseline
where the playlist says High) that every player must then take as a decoder
reconfiguration in mid-stream.
"""

from __future__ import annotations

import dataclasses
import functools
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


# x264's presets, fastest first.
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)
# What a faster preset must keep for the headers to stay the same: the coding
# tools that ultrafast turns off, and the preset's reference frames, weighted
# prediction and B-frames (x264's preset table: ref, weightp, bframes; PPS and SPS
# carry all three), and from fast up the chroma QP offset that x264 lowers by 2
# for psy-RD. A guess, checked by comparing the headers themselves.
X264_TOOLS = {
    "superfast": (1, 1, 3),
    "veryfast": (1, 1, 3),
    "faster": (2, 1, 3),
    "fast": (2, 2, 3),
    "medium": (3, 2, 3),
    "slow": (5, 2, 3),
    "slower": (8, 2, 3),
    "veryslow": (16, 2, 8),
    "placebo": (16, 2, 16),
}


def open_video_encoder(
    rung: Rung,
    codec: str,
    threads: int,
    gop_frames: int,
    *,
    low_delay: bool = False,
    x264_params: str = "",
    global_header: bool = False,
) -> av.VideoCodecContext:
    """``low_delay``: no B-frames and no lookahead (the WebRTC tap rendition).
    ``x264_params`` are added to x264's own; ``global_header`` puts the parameter
    sets in ``extradata`` (only to compare them: the worker sends them in-band)."""
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
    if global_header:
        enc.flags |= av.codec.context.Flags.global_header
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
        if x264_params:
            opts["x264-params"] += ":" + x264_params
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


@functools.lru_cache(maxsize=64)
def faster_x264(
    rung: Rung, preset: str, threads: int, gop_frames: int, *, low_delay: bool = False
) -> tuple[str, str, bool]:
    """The x264 preset and extra ``x264-params`` to encode ``rung`` at ``preset``'s
    speed with the rung's own parameter sets, and whether they are kept.

    Candidates, fastest first: ``preset`` with the rung's preset's coding tools
    (:data:`X264_TOOLS`, with and without its B-frames and the psy-RD chroma
    offset), ``preset`` alone, then the presets between it and the rung's own.
    Each is opened with global headers and kept only if its SPS and PPS are byte
    for byte those of the rung's own preset (2-10 ms an open, once per rung and
    preset). When none is, the answer is ``preset`` alone, and the stream gets new
    parameter sets.
    """

    def headers(name: str, params: str) -> bytes:
        r = dataclasses.replace(rung, preset=name)
        enc = open_video_encoder(
            r,
            "libx264",
            threads,
            gop_frames,
            low_delay=low_delay,
            x264_params=params,
            global_header=True,
        )
        return bytes(enc.extradata or b"")

    own = headers(rung.preset, "")
    order = {name: i for i, name in enumerate(X264_PRESETS)}
    between = [
        name
        for name in X264_PRESETS
        if order.get(preset, -1) < order[name] < order.get(rung.preset, -1)
    ]
    ref, weightp, bframes = X264_TOOLS.get(rung.preset, (1, 1, 3))
    tools = f"cabac=1:8x8dct=1:weightp={weightp}:ref={ref}"
    b = f":bframes={bframes}:b-pyramid=normal:weightb=1"
    candidates = [
        (preset, tools + more)
        for more in ("", b, ":chroma-qp-offset=-2", b + ":chroma-qp-offset=-2")
    ]
    candidates += [(preset, "")] + [(name, "") for name in between]
    for name, params in candidates:
        try:
            if own and headers(name, params) == own:
                return name, params, True
        except (av.error.FFmpegError, ValueError):
            continue
    return preset, "", False
