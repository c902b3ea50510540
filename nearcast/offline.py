"""``nearcast transcode``: package a file into the node's HLS ladder, offline.

It runs exactly the pipeline a live worker runs (same decoder, scalers,
encoders, forced-IDR grid and segmenter), only fed from a file as fast as the
machine allows. It serves video on demand and lets the ladder be checked and
benchmarked on its own. Segments are MPEG-TS, or fMP4 (CMAF) with an
``EXT-X-MAP`` init segment per rendition (``--format fmp4``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import time
from pathlib import Path
from typing import Any

import av

from distribute.hls.playlist import SegmentRef, VariantRef, master_playlist, media_playlist
from ingest.file import file_packets
from media.segments import SegmentFrame
from transcode import collector
from transcode.output import Output
from transcode.pipeline import Pipeline
from transcode.protocol import FrameReader, FrameType, decode_init, decode_segment
from transcode.spec import Spec


class _DirWriter(io.RawIOBase):
    """Receives the worker's framed output and writes segments to disk as they come."""

    def __init__(self, out: Path, ext: str = "ts") -> None:
        self.out = out
        self.ext = ext
        self.reader = FrameReader()
        self.segments: dict[str, list[SegmentFrame]] = {}
        self.renditions: dict[str, Any] = {}
        self.media_seconds = 0.0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        import json

        for ftype, payload in self.reader.feed(bytes(data)):
            if ftype is FrameType.SEGMENT:
                seg = decode_segment(payload)
                d = self.out / seg.rendition
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{seg.index}.{self.ext}").write_bytes(seg.data)
                self.segments.setdefault(seg.rendition, []).append(
                    SegmentFrame(seg.rendition, seg.index, seg.start, seg.duration, seg.codecs, b"")
                )
                self.media_seconds = max(self.media_seconds, seg.start + seg.duration)
            elif ftype is FrameType.INIT:
                init = decode_init(payload)
                d = self.out / init.rendition
                d.mkdir(parents=True, exist_ok=True)
                # A file has one init per rendition; a reopened encoder keeps its parameters.
                (d / "init.mp4").write_bytes(init.data)
            elif ftype is FrameType.RENDITIONS:
                self.renditions = json.loads(payload)
        return len(data)


def transcode_file(source: str, out: Path, spec: Spec, progress: bool = False) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    # Offline there is no real time to keep up with: never degrade.
    spec = dataclasses.replace(spec, live=False)
    ext = "m4s" if spec.segment_format == "fmp4" else "ts"
    sink = _DirWriter(out, ext)
    # The rung threads write at once: Output's lock keeps each frame whole, and the
    # one reader of frames sees them one at a time (without it, a segment could be
    # read twice and listed twice, shifting every later one in the playlist).
    pipeline = Pipeline(spec, Output(sink))  # type: ignore[arg-type]
    total = 0.0
    with av.open(source) as probe:
        if probe.duration:
            total = probe.duration / 1_000_000
    started = time.monotonic()
    last = 0.0
    for p in file_packets(source):
        pipeline.feed(p)
        if progress and time.monotonic() - last > 0.25 and total:
            last = time.monotonic()
            _bar(p.dts / 1000.0, total, last - started)
    pipeline.finish()
    wall = time.monotonic() - started
    if progress and total:
        _bar(total, total, wall)
        sys.stderr.write("\n")
    info = sink.renditions
    variants = []
    for r in info.get("renditions", []):
        segs = sorted(sink.segments.get(r["name"], []), key=lambda s: s.index)
        text = media_playlist(
            [SegmentRef(s.index, s.duration, f"{s.index}.{ext}") for s in segs],
            configured_target=spec.segment_duration,
            discontinuity_sequence=0,
            ended=True,
        )
        head = "#EXT-X-VERSION:3\n#EXT-X-PLAYLIST-TYPE:VOD\n"
        if ext == "m4s":
            # RFC 8216bis §4.4.4.5: EXT-X-MAP needs version 6 outside I-frame playlists.
            head = (
                "#EXT-X-VERSION:7\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n"
                '#EXT-X-MAP:URI="init.mp4"\n'
            )
        text = text.replace("#EXT-X-VERSION:3\n", head)
        (out / r["name"]).mkdir(parents=True, exist_ok=True)
        (out / r["name"] / "index.m3u8").write_text(text)
        size = sum((out / r["name"] / f"{s.index}.{ext}").stat().st_size for s in segs)
        dur = sum(s.duration for s in segs) or 1.0
        peak = max(
            (
                (out / r["name"] / f"{s.index}.{ext}").stat().st_size * 8 / s.duration
                for s in segs
                if s.duration > 0
            ),
            default=0.0,
        )
        variants.append(
            VariantRef(
                uri=f"{r['name']}/index.m3u8",
                bandwidth=int(peak),
                average_bandwidth=int(size * 8 / dur),
                width=r["width"],
                height=r["height"],
                fps=r["fps"],
                codecs=segs[0].codecs if segs else "avc1.640028",
            )
        )
    master = master_playlist(variants, "mp4a.40.2" if info.get("audio") else None)
    if ext == "m4s":
        master = master.replace("#EXT-X-VERSION:3\n", "#EXT-X-VERSION:7\n")
    (out / "index.m3u8").write_text(master)
    return {"wall_seconds": wall, "media_seconds": sink.media_seconds, "renditions": info}


def _bar(done: float, total: float, elapsed: float) -> None:
    if not sys.stderr.isatty():
        return
    frac = min(1.0, done / total)
    width = 30
    filled = int(frac * width)
    speed = done / elapsed if elapsed > 0 else 0.0
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}%  "
        f"{done:6.1f}/{total:.1f} s  {speed:4.2f}x realtime"
    )
    sys.stderr.flush()


def _main(args: argparse.Namespace) -> int:
    from nearcast.config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"nearcast: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        profile = config.transcode.profile(args.profile)
    except KeyError:
        known = ", ".join(["default", *config.transcode.profiles])
        print(f"nearcast: unknown profile {args.profile!r} (known: {known})", file=sys.stderr)
        return 2
    spec = Spec(
        stream=Path(args.input).stem,
        ladder=list(profile.ladder),
        audio=profile.audio,
        segment_duration=config.hls.segment_duration,
        x264_threads=config.transcode.x264_threads,
        segment_format=args.format or config.hls.segment_format,
    )
    collector.tune()
    try:
        result = transcode_file(args.input, Path(args.out), spec, progress=not args.quiet)
    except (OSError, ValueError, av.error.FFmpegError) as exc:
        print(f"nearcast: cannot transcode {args.input}: {exc}", file=sys.stderr)
        return 1
    speed = result["media_seconds"] / result["wall_seconds"] if result["wall_seconds"] else 0
    print(
        f"wrote {args.out}/index.m3u8: {result['media_seconds']:.1f} s of media in "
        f"{result['wall_seconds']:.1f} s ({speed:.2f}x realtime)"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "transcode",
        help="package a media file into the HLS ladder (video on demand)",
        description="Transcode INPUT into the node's ABR ladder and write a VOD HLS package "
        "(master playlist, one media playlist and TS or fMP4 segments per rendition) to DIR. Runs "
        "the same pipeline as a live worker.",
    )
    p.add_argument("input", metavar="INPUT", help="media file with H.264/HEVC video (and audio)")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory")
    p.add_argument(
        "--profile", default="default", help="ladder profile: default or any in transcode.profiles"
    )
    p.add_argument(
        "--format",
        choices=("ts", "fmp4"),
        help="segment container: ts or fmp4 (CMAF with EXT-X-MAP); default hls.segment_format",
    )
    p.add_argument("--config", metavar="FILE", help="configuration file (see `nearcast node`)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)
