"""What the WebRTC tap's CMAF rendition costs: repackaging at the origin, demuxing at a relay.

Run: ``python -m bench.tap_cmaf [--seconds S] [--part 0.25] [--repeat N]``

The sample (360p30, looped) is encoded once, as a worker encodes its tap (x264 without
B-frames, zerolatency; Opus in 20 ms frames), outside the timing. Then, best of
``--repeat`` runs: the origin's :class:`~containers.cmaf.TapPackager` turns the
packets into the ``webrtc`` rendition's parts, and a relay's
:class:`~distribute.whep.cmaf_source.CmafDemuxer` turns the parts back into
packets. Both run on the event loop, so the figures are event-loop time per
packet and per second of stream (the share of one core a stream costs). The last
line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from containers.cmaf import TapPackager
from distribute.whep.cmaf_source import CmafDemuxer
from media import MediaPacket
from media.segments import InitFrame, PartFrame

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "small-360p.mp4"


def tap_packets(seconds: float) -> tuple[list[MediaPacket], int, int]:
    """``seconds`` of the sample (looped) as tap packets, and the picture size."""
    with av.open(str(SAMPLE)) as src:
        width, height = src.streams.video[0].width, src.streams.video[0].height
    venc = av.CodecContext.create("libx264", "w")
    assert isinstance(venc, av.VideoCodecContext)
    venc.width, venc.height, venc.pix_fmt = width, height, "yuv420p"
    venc.time_base = Fraction(1, 1000)
    venc.framerate = Fraction(30)
    venc.bit_rate = 700_000
    venc.options = {
        "preset": "veryfast",
        "tune": "zerolatency",
        "x264-params": "keyint=60:min-keyint=60:scenecut=0:bframes=0",
    }
    aenc = av.CodecContext.create("libopus", "w")
    assert isinstance(aenc, av.AudioCodecContext)
    aenc.sample_rate, aenc.layout, aenc.format = 48000, "stereo", "flt"
    aenc.bit_rate = 96_000
    aenc.time_base = Fraction(1, 48000)
    resampler = av.AudioResampler(format="flt", layout="stereo", rate=48000, frame_size=960)
    out: list[MediaPacket] = []
    n = samples = 0
    while n < seconds * 30:
        with av.open(str(SAMPLE)) as src:
            streams = [src.streams.video[0], *src.streams.audio[:1]]
            for packet in src.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame) and n < seconds * 30:
                        frame = frame.reformat(format="yuv420p")
                        frame.pts, frame.time_base = round(n * 1000 / 30), Fraction(1, 1000)
                        n += 1
                        for p in venc.encode(frame):
                            assert p.pts is not None and p.dts is not None
                            out.append(
                                MediaPacket(
                                    "video", "h264", int(p.pts), int(p.dts), bytes(p), p.is_keyframe
                                )
                            )
                    elif isinstance(frame, av.AudioFrame) and samples < n * 1600:
                        frame.pts = None
                        for rf in resampler.resample(frame):
                            rf.pts, rf.time_base = samples, Fraction(1, 48000)
                            samples += rf.samples
                            for p in aenc.encode(rf):
                                assert p.pts is not None
                                ms = int(p.pts) * 1000 // 48000
                                out.append(MediaPacket("audio", "opus", ms, ms, bytes(p), True))
    out.sort(key=lambda p: p.dts)  # as a worker interleaves them, by time
    return out, width, height


def run(packets: list[MediaPacket], width: int, height: int, part: float, repeat: int) -> Any:
    inits: list[InitFrame] = []
    parts: list[PartFrame] = []

    def package() -> None:
        inits.clear()
        parts.clear()
        tap = TapPackager(
            "webrtc",
            width=width,
            height=height,
            fps=30,
            channels=2,
            segment_duration=2.0,
            part_duration=part,
            grid=True,
            on_init=inits.append,
            on_part=parts.append,
            on_segment=lambda s: None,
        )
        for p in packets:
            tap.packet(p)
        tap.flush()

    def demux() -> int:
        d = CmafDemuxer("bench")
        d.init(inits[0].data)
        return sum(len(d.fragment(p.data)) for p in parts)

    pack_s = min(_timed(package) for _ in range(repeat))
    demux_s = min(_timed(demux) for _ in range(repeat))
    return pack_s, demux_s, len(parts), demux()


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="media to package")
    ap.add_argument("--part", type=float, default=0.25, help="LL-HLS part duration, s")
    ap.add_argument("--repeat", type=int, default=5, help="runs; the best counts")
    args = ap.parse_args()
    packets, width, height = tap_packets(args.seconds)
    media_s = (packets[-1].dts - packets[0].dts) / 1000
    pack_s, demux_s, n_parts, n_out = run(packets, width, height, args.part, args.repeat)
    figures = {
        "packets": len(packets),
        "bytes": sum(len(p.data) for p in packets),
        "media_seconds": round(media_s, 2),
        "parts": n_parts,
        "packets_out": n_out,
        "package_us_per_packet": round(pack_s / len(packets) * 1e6, 1),
        "demux_us_per_packet": round(demux_s / max(1, n_out) * 1e6, 1),
        "package_core_share": round(pack_s / media_s, 5),
        "demux_core_share": round(demux_s / media_s, 5),
    }
    print(f"{'stage':>10} | {'us/packet':>10} | {'core share per stream':>22}")
    for stage in ("package", "demux"):
        print(
            f"{stage:>10} | {figures[f'{stage}_us_per_packet']:>10} | "
            f"{figures[f'{stage}_core_share'] * 100:>21.3f}%"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
