"""Transcode benchmark: nearcast's ladder against the FFmpeg CLI doing the same ladder.

Run: ``python -m bench.transcode [--pairs N] [--seconds S] [--clips lecture,noise]
[--noise-floor]``

Two clips of at least 20 s of 720p30 H.264/AAC with 2 s closed GOPs: the sample
lecture looped, and a high-detail synthetic clip (FFmpeg's ``testsrc2`` under
temporal noise, a sine tone for audio) generated once per run. On each clip the
whole ``nearcast transcode`` command (Python start-up included, with its modules'
bytecode compiled beforehand, as an installed package has it) and the FFmpeg
CLI run the same ladder from ``nearcast.yml`` as their own processes, alternating
(nearcast, ffmpeg, nearcast, ...) for N pairs; every pair is reported, and the
medians give the ratio. Absolute times drift 20% between runs on shared machines;
the ratio is the figure.

Both sides do the same work: x264 with identical option strings per rung (read
back from the SEI that x264 writes into the first IDR, and compared), bicubic
scaling, one AAC encode shared by every rung (FFmpeg: an audio-only stream in
one ``agroup``), MPEG-TS (or fMP4) HLS segments. Each side's renditions are
scored (PSNR against the source scaled to the rung's size, FFmpeg's ``psnr``
filter) so that a faster side cannot be a worse one.

With ``--noise-floor`` each pair runs the FFmpeg CLI a second time, and that run's
ratio to the first, the same command against itself, shows how far the machine alone
moves a ratio.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from statistics import median
from typing import Any

import av

from nearcast.config import load
from transcode.config import Rendition

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "lecture-720p.mp4"
CLIPS = ("lecture", "noise")
RATIO_TARGET = 1.0  # nearcast / ffmpeg, wall and CPU, on every clip
PSNR_TOLERANCE_DB = 0.1
FPS = 30
# x264 writes "x264 - core N ... - options: a=1 b=2 ..." as unregistered user data SEI.
X264_SEI = re.compile(rb"x264 - core [^\x00]*?options: [^\x00]*")


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all threads) of one command."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    # Drained only after the exit: both sides write errors only, well under a pipe's buffer.
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}): {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def make_lecture(ffmpeg: str, dst: Path, seconds: float, source: Path = SAMPLE) -> None:
    """The lecture looped to ``seconds``, stream copied (its GOPs are 2 s and closed).

    Video and audio loop as two inputs: one input looping both would offset every
    pass by its longer stream (the audio, 16 ms longer), leaving a hole in the
    pictures at each loop that each side's constant-rate output fills its own way.
    """
    loop = ["-stream_loop", "-1", "-i", str(source)]
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-y", *loop, *loop, "-map", "0:v", "-map", "1:a"]
        + ["-t", str(seconds), "-c", "copy", str(dst)],
        check=True,
    )


def make_noise(ffmpeg: str, dst: Path, seconds: float) -> None:
    """High-detail 720p30: every pixel changes every frame, the worst case for x264.

    Encoded like the lecture (H.264 High, 2 s closed GOPs, AAC stereo 48 kHz), at
    a bitrate high enough that the noise survives into the source.
    """
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i"]
        + [f"testsrc2=size=1280x720:rate={FPS},noise=alls=20:allf=t+u"]
        + ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
        + ["-t", str(seconds), "-map", "0:v", "-map", "1:a"]
        + ["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-pix_fmt", "yuv420p"]
        + ["-b:v", "6M", "-maxrate", "6M", "-bufsize", "12M", "-flags", "+cgop"]
        + ["-g", str(2 * FPS), "-keyint_min", str(2 * FPS), "-sc_threshold", "0"]
        + ["-c:a", "aac", "-b:a", "128k", "-ac", "2", "-ar", "48000", str(dst)],
        check=True,
    )


def compile_bytecode(cache: Path) -> None:
    """Compile nearcast's modules into ``cache`` once, before any timed run, as installing
    the package does (pip writes every module's bytecode at install). Without it, a run
    from a checkout where bytecode is not written compiles them all again at every start
    (40-50 ms of CPU). The packages are those ``pyproject.toml`` ships."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(cache))
    dirs = [str(ROOT / name.rstrip("*")) for name in include]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], env=env, check=True)


def nearcast_cmd(
    src: Path, out: Path, fmt: str, pycache: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """The shipped command and its environment: built-in defaults plus what it needs;
    ``pycache``: where :func:`compile_bytecode` put the modules' bytecode."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEARCAST_")}
    env |= {
        "NEARCAST_HLS_SEGMENT_FORMAT": fmt,
        "NEARCAST_HLS_LOW_LATENCY": "false",
        "NEARCAST_TRANSCODE_X264_THREADS": "0",  # x264 decides, as the FFmpeg CLI lets it
    }
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    cmd = [sys.executable, "-m", "nearcast", "transcode", str(src)]
    return cmd + ["--out", str(out), "--format", fmt, "--quiet"], env


def ffmpeg_ladder_cmd(
    ffmpeg: str,
    src: Path,
    out: Path,
    seg: float,
    ladder: list[Rendition] | None = None,
    fmt: str = "ts",
) -> list[str]:
    """The FFmpeg CLI doing nearcast's ladder (default: ``transcode.ladder``) with the
    same x264 options and one AAC encode: renditions in ``out/NAME/``, audio in
    ``out/audio/``."""
    config = load(environ={}).transcode
    audio = config.audio
    if ladder is None:
        ladder = [r for r in config.ladder if r.codec != "copy"]
    n = len(ladder)
    labels = "".join(f"[s{i}]" for i in range(n))
    scales = ";".join(
        f"[s{i}]scale={r.width}:{r.height}:flags=bicubic[v{i}]" for i, r in enumerate(ladder)
    )
    cmd = [ffmpeg, "-loglevel", "error", "-y", "-i", str(src)]
    cmd += ["-filter_complex", f"[0:v]split={n}{labels};{scales}"]
    for i in range(n):
        cmd += ["-map", f"[v{i}]"]
    cmd += ["-map", "0:a"]  # once: one AAC encode, in an audio group every rung names
    gop = int(round(FPS * seg))
    cmd += ["-c:v", "libx264", "-force_key_frames", f"expr:gte(t,n_forced*{seg})"]
    for i, r in enumerate(ladder):
        # What transcode.encoder.open_video_encoder sets, rung by rung.
        cmd += [f"-preset:v:{i}", r.preset, f"-profile:v:{i}", r.profile, f"-level:v:{i}", r.level]
        cmd += [f"-b:v:{i}", str(r.video_bitrate), f"-maxrate:v:{i}", str(r.maxrate)]
        cmd += [f"-bufsize:v:{i}", str(r.bufsize), f"-forced-idr:v:{i}", "1"]
        cmd += [f"-x264-params:v:{i}", f"keyint={2 * gop}:min-keyint={gop}:scenecut=0"]
        if r.tune:
            cmd += [f"-tune:v:{i}", r.tune]
    cmd += ["-c:a", audio.codec, "-b:a", str(audio.bitrate), "-ar", str(audio.sample_rate)]
    cmd += ["-ac", str(audio.channels)]
    cmd += ["-f", "hls", "-hls_time", str(seg), "-hls_playlist_type", "vod"]
    if fmt == "fmp4":
        cmd += ["-hls_segment_type", "fmp4"]
    streams = ["a:0,agroup:audio,name:audio"]
    streams += [f"v:{i},agroup:audio,name:{r.name}" for i, r in enumerate(ladder)]
    cmd += ["-var_stream_map", " ".join(streams), "-master_pl_name", "index.m3u8"]
    return cmd + [str(out / "%v" / "index.m3u8")]


def x264_sei(playlist: Path) -> str:
    """The x264 header + options string from the first picture of a rendition."""
    with av.open(str(playlist)) as c:
        for i, packet in enumerate(c.demux(video=0)):
            m = X264_SEI.search(bytes(packet))
            if m:
                return m.group().decode("ascii", errors="replace")
            if i > 4:
                break
    raise RuntimeError(f"{playlist}: no x264 SEI in the first pictures")


def split_sei(sei: str) -> tuple[str, str]:
    """(build, options): 'core 164 r3095 baee400' and 'cabac=1 ref=1 ...'.

    The build differs legitimately (PyAV's wheels bundle their own x264); the
    options must not: every option string is compared whole, nothing normalised.
    """
    head, _, options = sei.partition(" - options: ")
    build = head.split(" - ")[1] if " - " in head else head
    return build.strip(), options.strip()


def psnr(
    ffmpeg: str, src: Path, out: Path, ladder: list[Rendition], seconds: float
) -> dict[str, float]:
    """Average PSNR (dB, Y:U:V weighted 4:1:1) of each rendition against the source
    scaled to its size (bicubic, as both sides scale), frames matched by time from
    each one's first picture, over the first ``seconds``."""
    n = len(ladder)
    cmd = [ffmpeg, "-hide_banner", "-nostats", "-i", str(src)]
    for r in ladder:
        cmd += ["-i", str(out / r.name / "index.m3u8")]
    graph = [f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n))]
    for i, r in enumerate(ladder):
        graph.append(
            f"[s{i}]scale={r.width}:{r.height}:flags=bicubic,setpts=PTS-STARTPTS,"
            f"trim=duration={seconds:.3f}[ref{i}];"
            f"[{i + 1}:v]setpts=PTS-STARTPTS,trim=duration={seconds:.3f}[dist{i}];"
            f"[dist{i}][ref{i}]psnr=shortest=1[o{i}]"
        )
    cmd += ["-filter_complex", ";".join(graph)]
    for i in range(n):
        cmd += ["-map", f"[o{i}]"]
    res = subprocess.run(cmd + ["-f", "null", "-"], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"psnr of {out} failed: {res.stderr[-2000:]}")
    # "[Parsed_psnr_7 @ 0x..] PSNR y:.. u:.. v:.. average:41.23 min:.. max:..", filters
    # numbered in graph order, so sorting by the number gives the ladder's order.
    found = sorted(
        (int(m.group(1)), float(m.group(2)))
        for m in re.finditer(r"Parsed_psnr_(\d+) @ [^\]]*\] PSNR .*?average:(\S+)", res.stderr)
    )
    if len(found) != n:
        raise RuntimeError(f"psnr of {out}: {len(found)} results for {n} renditions")
    return {r.name: round(v, 3) for r, (_, v) in zip(ladder, found, strict=True)}


def media_seconds(src: Path) -> float:
    with av.open(str(src)) as c:
        return float(c.duration or 0) / 1_000_000


def side_figures(runs: list[tuple[float, float]], media: float) -> dict[str, float]:
    wall = median(w for w, _ in runs)
    cpu = median(c for _, c in runs)
    return {
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "realtime_factor": round(media / wall, 3),
        "cpu_per_output_second": round(cpu / media, 3),
    }


def bench_clip(
    ffmpeg: str,
    src: Path,
    work: Path,
    pairs: int,
    fmt: str,
    ladder: list[Rendition],
    floor: bool = False,
    pycache: Path | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Every pair's times, the medians and ratios, x264 options and PSNR of one clip.

    ``floor``: each pair runs the FFmpeg CLI a second time, and its ratio to the first
    (the same command against itself) is this machine's noise floor for the ratios."""
    seg = load(environ={}).hls.segment_duration
    media = media_seconds(src)
    names = ("nearcast", "ffmpeg", "ffmpeg-again") if floor else ("nearcast", "ffmpeg")
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    kept: dict[str, Path] = {}
    for i in range(pairs):
        for name in names:
            out = work / f"{src.stem}-{name}-{i}"
            out.mkdir()
            if name == "nearcast":
                cmd, env = nearcast_cmd(src, out, fmt, pycache)
                runs[name].append(run_timed(cmd, env))
            else:
                runs[name].append(run_timed(ffmpeg_ladder_cmd(ffmpeg, src, out, seg, ladder, fmt)))
            # The first pair's output is the one checked; the others only cost time.
            if i == 0 and name != "ffmpeg-again":
                kept[name] = out
            else:
                shutil.rmtree(out)
    builds: dict[str, str] = {}
    x264: dict[str, Any] = {}
    for r in ladder:
        row: dict[str, Any] = {}
        for name, out in kept.items():
            builds[name], row[name] = split_sei(x264_sei(out / r.name / "index.m3u8"))
        row["identical"] = row["nearcast"] == row["ffmpeg"]
        x264[r.name] = row
    # The last half second is left out: a stream-copied cut can end on a hole in the
    # source's pictures, which each side's constant-rate output fills its own way.
    compared = max(1.0, media - 0.5)
    scores = {name: psnr(ffmpeg, src, out, ladder, compared) for name, out in kept.items()}
    quality = {
        r.name: {
            "nearcast_db": scores["nearcast"][r.name],
            "ffmpeg_db": scores["ffmpeg"][r.name],
            "difference_db": round(scores["nearcast"][r.name] - scores["ffmpeg"][r.name], 3),
        }
        for r in ladder
    }
    for out in kept.values():
        shutil.rmtree(out)
    nc = side_figures(runs["nearcast"], media)
    ff = side_figures(runs["ffmpeg"], media)
    figures = {
        "media_seconds": round(media, 3),
        "pairs": [
            {
                "nearcast": {"wall_seconds": round(nw, 3), "cpu_seconds": round(nc_, 3)},
                "ffmpeg": {"wall_seconds": round(fw, 3), "cpu_seconds": round(fc, 3)},
                "ratio_wall": round(nw / fw, 3),
                "ratio_cpu": round(nc_ / fc, 3),
            }
            for (nw, nc_), (fw, fc) in zip(runs["nearcast"], runs["ffmpeg"], strict=True)
        ],
        "nearcast": nc,
        "ffmpeg": ff,
        "ratio_wall": round(nc["wall_seconds"] / ff["wall_seconds"], 3),
        "ratio_cpu": round(nc["cpu_seconds"] / ff["cpu_seconds"], 3),
        "x264_options": x264,
        "psnr_seconds": round(compared, 3),
        "psnr": quality,
    }
    if floor:
        again = [
            {"ratio_wall": round(aw / fw, 3), "ratio_cpu": round(ac / fc, 3)}
            for (aw, ac), (fw, fc) in zip(runs["ffmpeg-again"], runs["ffmpeg"], strict=True)
        ]
        figures["noise_floor"] = {
            "pairs": again,
            "ratio_wall": round(median(p["ratio_wall"] for p in again), 3),
            "ratio_cpu": round(median(p["ratio_cpu"] for p in again), 3),
        }
    return figures, builds


def startup(fmt: str, pycache: Path | None = None) -> dict[str, float]:
    """What Python start-up alone costs the nearcast side: the command, asked for --help."""
    cmd, env = nearcast_cmd(SAMPLE, Path(os.devnull), fmt, pycache)
    wall, cpu = run_timed([*cmd[:4], "--help"], env)
    return {"wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3)}


def print_clip(name: str, f: dict[str, Any]) -> None:
    print(f"{name}: {f['media_seconds']:.1f} s of 720p30, {len(f['pairs'])} pair(s)")
    print(f"  {'pair':8} {'nearcast wall/cpu s':>20} {'ffmpeg wall/cpu s':>18} {'ratio':>13}")
    for i, p in enumerate(f["pairs"]):
        n, m = p["nearcast"], p["ffmpeg"]
        print(
            f"  {i + 1:<8} {n['wall_seconds']:9.2f} {n['cpu_seconds']:9.2f} "
            f"{m['wall_seconds']:8.2f} {m['cpu_seconds']:8.2f} "
            f"{p['ratio_wall']:6.3f} {p['ratio_cpu']:6.3f}"
        )
    n, m = f["nearcast"], f["ffmpeg"]
    print(
        f"  {'median':8} {n['wall_seconds']:9.2f} {n['cpu_seconds']:9.2f} "
        f"{m['wall_seconds']:8.2f} {m['cpu_seconds']:8.2f} "
        f"{f['ratio_wall']:6.3f} {f['ratio_cpu']:6.3f}   (wall, cpu: nearcast / ffmpeg; "
        f"target <= {RATIO_TARGET})"
    )
    print(
        f"  x realtime: nearcast {n['realtime_factor']:.2f}, ffmpeg {m['realtime_factor']:.2f}; "
        f"cpu s per output s: nearcast {n['cpu_per_output_second']:.3f}, "
        f"ffmpeg {m['cpu_per_output_second']:.3f}"
    )
    for rung, q in f["psnr"].items():
        same = "identical" if f["x264_options"][rung]["identical"] else "DIFFERENT"
        print(
            f"  {rung:6} x264 options {same}; PSNR nearcast {q['nearcast_db']:.3f} dB, "
            f"ffmpeg {q['ffmpeg_db']:.3f} dB, difference {q['difference_db']:+.3f} dB"
        )
    if "noise_floor" in f:
        nf = f["noise_floor"]
        each = ", ".join(f"{p['ratio_wall']:.3f}/{p['ratio_cpu']:.3f}" for p in nf["pairs"])
        print(
            f"  noise floor, the FFmpeg CLI against itself (wall/cpu): pairs {each}; "
            f"median {nf['ratio_wall']:.3f}/{nf['ratio_cpu']:.3f}"
        )
    for rung, row in f["x264_options"].items():
        if not row["identical"]:
            print(f"  {rung} nearcast: {row['nearcast']}\n  {rung} ffmpeg:   {row['ffmpeg']}")


def targets(clips: dict[str, dict[str, Any]]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for name, f in clips.items():
        out[f"{name}.ratio_wall<={RATIO_TARGET}"] = f["ratio_wall"] <= RATIO_TARGET
        out[f"{name}.ratio_cpu<={RATIO_TARGET}"] = f["ratio_cpu"] <= RATIO_TARGET
        out[f"{name}.x264_options_identical"] = all(
            r["identical"] for r in f["x264_options"].values()
        )
        out[f"{name}.psnr_difference<={PSNR_TOLERANCE_DB}dB"] = all(
            abs(q["difference_db"]) <= PSNR_TOLERANCE_DB for q in f["psnr"].values()
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="nearcast/ffmpeg pairs per clip (3)")
    ap.add_argument("--seconds", type=float, default=24.0, help="length of each clip (24)")
    ap.add_argument(
        "--clips", default=",".join(CLIPS), help=f"comma-separated, of {', '.join(CLIPS)} (all)"
    )
    ap.add_argument("--input", help="720p30 H.264/AAC file instead of the sample lecture")
    ap.add_argument("--format", choices=("ts", "fmp4"), default="ts", help="segments (ts)")
    ap.add_argument(
        "--noise-floor",
        action="store_true",
        help="run the FFmpeg CLI twice per pair and report its ratio to itself",
    )
    args = ap.parse_args()
    clips = [c for c in args.clips.split(",") if c]
    if not clips or any(c not in CLIPS for c in clips):
        ap.error(f"--clips must name some of {', '.join(CLIPS)}, not {args.clips!r}")
    if args.pairs < 1:
        ap.error("--pairs must be at least 1")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("bench.transcode: the ffmpeg CLI is needed (Debian package ffmpeg)", file=sys.stderr)
        return 1
    ladder = [r for r in load(environ={}).transcode.ladder if r.codec != "copy"]
    results: dict[str, dict[str, Any]] = {}
    builds: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="nearcast-bench-") as tmp:
        work = Path(tmp)
        pycache = work / "pycache"
        compile_bytecode(pycache)
        for clip in clips:
            src = work / f"{clip}.mp4"
            if clip == "lecture":
                make_lecture(ffmpeg, src, args.seconds, Path(args.input or SAMPLE))
            else:
                make_noise(ffmpeg, src, args.seconds)
            results[clip], builds = bench_clip(
                ffmpeg, src, work, args.pairs, args.format, ladder, args.noise_floor, pycache
            )
        boot = startup(args.format, pycache)
    print(f"ladder {', '.join(r.name for r in ladder)}, {args.format} segments; medians of pairs")
    for clip, f in results.items():
        print_clip(clip, f)
    print(
        f"x264 builds: nearcast {builds.get('nearcast')}, ffmpeg {builds.get('ffmpeg')}; "
        f"nearcast start-up (--help): {boot['wall_seconds']:.2f} s wall, "
        f"{boot['cpu_seconds']:.2f} s cpu"
    )
    met = targets(results)
    for key, ok in met.items():
        print(f"  target {key}: {'met' if ok else 'NOT met'}")
    print(
        json.dumps(
            {
                "pairs": args.pairs,
                "format": args.format,
                "ladder": [r.name for r in ladder],
                "clips": results,
                "x264_builds": builds,
                "nearcast_startup": boot,
                "targets": met,
                "targets_met": all(met.values()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
