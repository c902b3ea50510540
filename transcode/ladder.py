"""Fit the configured ladder to a source (pure).

Rules, in the order applied:
- never upscale: a rung taller or wider than the source is dropped;
- keep the source's display aspect ratio, rounding to even dimensions
  (4:2:0 chroma needs even sizes);
- if every rung is larger than the source, serve one rung at the source size,
  so that a small webcam still plays.
"""

from __future__ import annotations

from dataclasses import dataclass

from transcode.config import Rendition


@dataclass(frozen=True, slots=True)
class Rung:
    name: str
    width: int
    height: int
    fps: float
    video_bitrate: int
    maxrate: int
    bufsize: int
    codec: str
    preset: str
    profile: str
    level: str
    tune: str = ""


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def fit(rendition: Rendition, src_w: int, src_h: int) -> tuple[int, int]:
    """Largest even size inside both the rung's box and the source that keeps the aspect."""
    aspect = src_w / src_h
    box_w, box_h = min(rendition.width, src_w), min(rendition.height, src_h)
    h = box_h
    w = _even(h * aspect)
    if w > box_w:
        w = box_w - box_w % 2
        h = _even(w / aspect)
    return w, h


def plan(ladder: list[Rendition], src_w: int, src_h: int, src_fps: float) -> list[Rung]:
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"source size {src_w}x{src_h} is invalid")
    rungs: list[Rung] = [
        Rung(
            r.name, src_w, src_h, src_fps, r.video_bitrate, r.maxrate, r.bufsize, "copy", "", "", ""
        )
        for r in ladder
        if r.codec == "copy"
    ]
    ladder = [r for r in ladder if r.codec != "copy"]
    if not ladder:
        return rungs
    chosen = [r for r in ladder if r.height <= src_h]
    if not chosen:
        smallest = min(ladder, key=lambda r: r.height)
        chosen = [smallest]
    for r in sorted(chosen, key=lambda r: -r.height):
        w, h = fit(r, src_w, src_h)
        if any(x.width == w and x.height == h for x in rungs):
            continue
        fps = min(r.fps, src_fps) if r.fps > 0 else src_fps
        rungs.append(
            Rung(
                name=r.name,
                width=w,
                height=h,
                fps=fps,
                video_bitrate=r.video_bitrate,
                maxrate=r.maxrate or r.video_bitrate,
                bufsize=r.bufsize or 2 * r.video_bitrate,
                codec=r.codec,
                preset=r.preset,
                profile=r.profile,
                level=r.level,
                tune=r.tune,
            )
        )
    return rungs
