"""Generate the committed sample clips deterministically with PyAV and numpy.

Run from the repository root::

    python samples/make_samples.py            # writes samples/*.mp4
    python samples/make_samples.py --out DIR  # writes somewhere else

Every pixel and sample is computed from the frame index alone, and x264 runs with a
fixed thread count, so the same PyAV build reproduces the same bytes. The test card is
built for checking an ingest -> transcode -> HLS path by eye and by ear:

* a gradient background whose hue drifts, so banding and colour conversion show;
* a box bouncing left/right and a bar sweeping down, so motion and judder show;
* a resolution strip (1 px checkerboard, line groups of 1-4 px pitch) that turns to mush
  when a rendition is scaled down, so the ladder is visible;
* a large frame counter and an ``mm:ss.ff`` clock in a built-in 5x7 bitmap font
  (no Pillow: the project must not depend on it);
* a white flash square for the first 100 ms of every second, in sync with a 1 kHz beep,
  so A/V sync can be judged; between beeps the left channel carries a quiet 440 Hz tone
  and the right channel 660 Hz, so a swapped or mono-folded channel is audible.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

FPS = 30
SAMPLE_RATE = 48_000
# AAC codes 1024 samples per frame; feeding exactly that avoids the encoder's FIFO.
AUDIO_FRAME = 1024

# 5x7 glyphs, one string per row. Only the characters the card prints are defined.
_FONT_ROWS: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    ":": (".....", "..#..", "..#..", ".....", "..#..", "..#..", "....."),
    ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
    "x": (".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"),
    " ": (".....",) * 7,
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
}
FONT: dict[str, npt.NDArray[np.bool_]] = {
    ch: np.array([[c == "#" for c in row] for row in rows], dtype=bool)
    for ch, rows in _FONT_ROWS.items()
}


@dataclass(frozen=True)
class ClipSpec:
    """One committed clip: its geometry, length and encoder budget."""

    name: str
    title: str
    width: int
    height: int
    seconds: int
    video_bit_rate: int
    audio_bit_rate: int


CLIPS: tuple[ClipSpec, ...] = (
    ClipSpec("lecture-720p.mp4", "NEARCAST LECTURE 720P", 1280, 720, 14, 1_800_000, 128_000),
    ClipSpec("small-360p.mp4", "NEARCAST SMALL 360P", 640, 360, 6, 300_000, 64_000),
)


def draw_text(
    img: npt.NDArray[np.uint8], text: str, x: int, y: int, scale: int, color: tuple[int, int, int]
) -> None:
    """Stamp ``text`` into ``img`` (H x W x 3) with its top-left corner at (x, y)."""
    block = np.ones((scale, scale), dtype=bool)
    for i, ch in enumerate(text):
        mask = np.kron(FONT[ch], block).astype(bool)
        gx = x + i * 6 * scale  # 5 px glyph + 1 px spacing
        h, w = mask.shape
        region = img[y : y + h, gx : gx + w]
        region[mask[: region.shape[0], : region.shape[1]]] = color


def resolution_strip(width: int, height: int) -> npt.NDArray[np.uint8]:
    """A static grey-scale strip of ever finer detail, the first thing scaling destroys."""
    strip = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    quarter = width // 4
    # 1 px checkerboard.
    strip[:, :quarter] = np.where((xx[:, :quarter] + yy[:, :quarter]) % 2 == 0, 235, 16)
    # Vertical line groups with pitch 1, 2, 3, 4 px.
    for n, pitch in enumerate((1, 2, 3, 4)):
        x0 = quarter + n * (width - quarter) // 4
        x1 = quarter + (n + 1) * (width - quarter) // 4
        cols = xx[:, x0:x1]
        strip[:, x0:x1] = np.where((cols // pitch) % 2 == 0, 235, 16)
        strip[:, x1 - 2 : x1] = 128  # separator so the groups are told apart
    return np.repeat(strip[:, :, None], 3, axis=2)


class Card:
    """Renders frame ``n`` of the test card for one geometry."""

    def __init__(self, spec: ClipSpec) -> None:
        self.spec = spec
        w, h = spec.width, spec.height
        self.unit = h / 720  # layouts are designed at 720p and scaled
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.gx = xx / (w - 1)
        self.gy = yy / (h - 1)
        self.strip_h = max(8, round(72 * self.unit))
        self.strip = resolution_strip(w, self.strip_h)

    def render(self, n: int) -> npt.NDArray[np.uint8]:
        spec, u = self.spec, self.unit
        w, h = spec.width, spec.height
        t = n / FPS
        phase = 2 * math.pi * t / spec.seconds
        img = np.empty((h, w, 3), dtype=np.uint8)
        img[..., 0] = (40 + 120 * self.gx * (0.6 + 0.4 * math.cos(phase))).astype(np.uint8)
        img[..., 1] = (30 + 110 * self.gy).astype(np.uint8)
        img[..., 2] = (90 + 100 * (1 - self.gx) * (0.6 + 0.4 * math.sin(phase))).astype(np.uint8)

        # Sweeping horizontal bar: one pass per 4 s, wraps.
        bar_h = max(2, round(12 * u))
        bar_y = int((t / 4 % 1) * (h - self.strip_h - bar_h))
        img[bar_y : bar_y + bar_h, :] = (200, 200, 60)

        # Box bouncing left/right: a triangle wave, one round trip per 3 s.
        box = round(160 * u)
        travel = w - box
        tri = 1 - abs((t / 1.5) % 2 - 1)
        bx = int(tri * travel)
        by = round(380 * u)
        hue = (n * 7) % 256
        img[by : by + box, bx : bx + box] = (hue, 255 - hue, 180)
        img[by + box // 4 : by + 3 * box // 4, bx + box // 4 : bx + 3 * box // 4] = (20, 20, 20)

        draw_text(img, spec.title, round(40 * u), round(36 * u), max(1, round(5 * u)), (250,) * 3)
        big = max(2, round(14 * u))
        draw_text(img, f"{n:04d}", round(40 * u), round(110 * u), big, (255, 255, 255))
        secs, frame = divmod(n, FPS)
        clock = f"{secs // 60:02d}:{secs % 60:02d}.{frame:02d}"
        draw_text(img, clock, round(470 * u), round(110 * u), big, (255, 230, 90))
        draw_text(
            img,
            f"{w}x{h} {FPS}P",
            round(40 * u),
            round(230 * u),
            max(1, round(4 * u)),
            (220, 220, 220),
        )

        # Sync flash: frames 0-2 of each second (100 ms), same instants as the beep.
        if frame < 3:
            s = round(90 * u)
            img[round(40 * u) : round(40 * u) + s, w - s - round(40 * u) : w - round(40 * u)] = 255

        img[h - self.strip_h :, :] = self.strip
        return img


def audio_samples(start: int, count: int) -> npt.NDArray[np.float32]:
    """Stereo planar float samples [start, start + count) of the soundtrack."""
    idx = np.arange(start, start + count, dtype=np.float64)
    t = idx / SAMPLE_RATE
    into_second = idx % SAMPLE_RATE
    beep_len = SAMPLE_RATE // 10
    ramp = SAMPLE_RATE // 200  # 5 ms fades so the beep edges don't click
    env = np.clip(np.minimum(into_second, beep_len - into_second) / ramp, 0.0, 1.0)
    beep = 0.5 * env * np.sin(2 * math.pi * 1000 * t)
    in_beep = into_second < beep_len
    left = np.where(in_beep, beep, 0.12 * np.sin(2 * math.pi * 440 * t))
    right = np.where(in_beep, beep, 0.12 * np.sin(2 * math.pi * 660 * t))
    return np.stack([left, right]).astype(np.float32)


def make_clip(spec: ClipSpec, out_dir: Path) -> Path:
    path = out_dir / spec.name
    # +faststart moves the moov atom to the front so players and `-re` pushers can start
    # before the whole file is read.
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width = spec.width
        vs.height = spec.height
        vs.pix_fmt = "yuv420p"
        vs.bit_rate = spec.video_bit_rate
        vs.codec_context.gop_size = 2 * FPS
        vs.options = {
            "profile": "high",
            "preset": "medium",
            # Fixed 2 s GOPs (no scene-cut keyframes) so HLS segments cut cleanly; fixed
            # threads because x264's output depends on the thread count.
            "x264-params": (
                f"keyint={2 * FPS}:min-keyint={2 * FPS}:scenecut=0:bframes=2:threads=4"
            ),
        }
        aus = out.add_stream("aac", rate=SAMPLE_RATE, layout="stereo")
        aus.bit_rate = spec.audio_bit_rate

        card = Card(spec)
        total_frames = spec.seconds * FPS
        total_samples = spec.seconds * SAMPLE_RATE
        sample = 0
        for n in range(total_frames):
            frame = av.VideoFrame.from_ndarray(card.render(n), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = n
            frame.time_base = Fraction(1, FPS)
            out.mux(vs.encode(frame))
            # Keep audio just ahead of video so the muxer interleaves without buffering much.
            video_end = (n + 1) * SAMPLE_RATE // FPS
            while sample < min(video_end, total_samples):
                count = min(AUDIO_FRAME, total_samples - sample)
                af = av.AudioFrame.from_ndarray(
                    audio_samples(sample, count), format="fltp", layout="stereo"
                )
                af.sample_rate = SAMPLE_RATE
                af.pts = sample
                af.time_base = Fraction(1, SAMPLE_RATE)
                out.mux(aus.encode(af))
                sample += count
        out.mux(vs.encode())
        out.mux(aus.encode())
    logger.info("wrote %s (%d bytes)", path, path.stat().st_size)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="directory to write the clips into (default: next to this script)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in CLIPS:
        make_clip(spec, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
