"""The benchmarks still run and keep their contract: a table, then one JSON object as
the last line. Tiny settings: this checks the harness, not the figures (those come from
``python -m bench.NAME`` on a quiet machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nodeutil import require_binary

from bench.fanout import NGINX

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str, timeout: float = 120) -> tuple[list[str], dict]:
    out = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    return lines, json.loads(lines[-1])


@pytest.mark.parametrize("token", [False, True], ids=["open", "token"])
def test_fanout_bench_prints_its_table_and_figures(token: bool) -> None:
    require_binary("wrk")
    if not Path(NGINX).exists():  # a missing reference fails, it never skips
        pytest.fail("nginx is not installed; `make test` installs it (Debian package nginx-light)")
    lines, figures = run_bench(
        "bench.fanout",
        "--seconds",
        "1",
        "--rounds",
        "1",
        "--viewers",
        "20",
        "--viewer-seconds",
        "3",
        # The token changes how requests are served, not the transcode beside them.
        *(["--token", "--no-load", "--noise-floor"] if token else []),
        timeout=300,
    )
    assert figures["token"] is token
    assert lines[0].startswith("serving alone")
    assert lines[1].split()[:3] == ["what", "nearcast", "req/s"]
    # Serving alone, then under a transcoding ladder: both against nginx on the same bytes.
    assert (figures["under_transcode"] is None) is token
    for rows in (figures, *([] if token else [figures["under_transcode"]])):
        for kind in ("playlist", "segment", "part"):
            row = rows[kind]
            assert row["nearcast_rps"] > 0 and row["nginx_rps"] > 0, row
            assert row["body_bytes"] > 0 and len(row["round_ratios"]) == 1, row
            # nginx against itself, asked for with the token run only.
            if token:
                assert len(row["noise_floor"]["round_ratios"]) == 1, row
                assert row["noise_floor"]["median"] > 0, row
            else:
                assert "noise_floor" not in row, row
    assert figures["llhls"]["viewers"] == 20 and figures["llhls"]["viewer_errors"] == 0
    assert figures["llhls"]["held_max"] == 20
    assert set(figures["targets"]) >= {"segment_bytes_ratio>=0.95", "part_rps_ratio>=0.8"}


def test_serve_floor_bench_measures_both_sends_against_nginx() -> None:
    require_binary("wrk")
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed; `make test` installs it (Debian package nginx-light)")
    lines, figures = run_bench(
        "bench.serve_floor", "--sizes", "1213,37000", "--seconds", "1", "--rounds", "1"
    )
    rows = figures["floor_over_nginx"]
    assert set(rows) == {"1213/copy", "1213/sendfile", "37000/copy", "37000/sendfile"}
    for row in rows.values():
        assert row["ratio"] > 0 and len(row["rounds"]) == 1, row
    assert len(lines) == 5


def test_placement_bench_prints_its_table_and_figures() -> None:
    lines, figures = run_bench(
        "bench.placement",
        *("--sizes", "1000", "--decisions", "100", "--concurrency", "4", "--live", "2"),
        "--check",
    )
    assert any("decisions/s" in line for line in lines[:-1])
    row = figures["results"]["1000"]
    for mode in ("core", "inprocess", "redis", "redis_concurrent", "redis_live"):
        assert row[mode]["p99_ms"] > 0 and row[mode]["per_s"] > 0, (mode, row[mode])
    # The live run saw the background refresh take in the other process's beats.
    assert row["redis_live"]["snapshots"] >= 2 and row["redis_live"]["refresh_read_max"] > 0


def test_admission_bench_reports_each_class_rungs_and_whether_they_keep_up() -> None:
    """Two classes on a node that calibrates first: each one's renditions, what was left
    out, and the segments each rendition listed against the live rate."""
    lines, f = run_bench(
        "bench.admission", "--publishers", "2", "--settle", "6", "--seconds", "4", timeout=180
    )
    assert f["publishers"] == 2 and f["capacity_units"] > 0 and f["ports_open_seconds"] > 0
    assert [row["stream"] for row in f["streams"]] == ["class1", "class2"]
    for row in f["streams"]:
        assert row["renditions"] and set(row["rungs"]) == set(row["renditions"]), row
        for rung in row["rungs"].values():
            assert rung["expected"] > 0 and rung["segments"] >= 0, row
    assert lines[-2].startswith("every class transcoded:")


def test_capacity_bench_measures_both_sides_the_same_way() -> None:
    """One stream each side, no overload run: both get the publisher's stamped input and
    are measured from their playlists (lag, exact segment counts, start-up, every rung)."""
    require_binary("ffmpeg")
    lines, figures = run_bench(
        "bench.capacity",
        *("--seconds", "6", "--max-streams", "1", "--no-overload"),
        timeout=420,
    )
    assert lines[0].split()[:4] == ["side", "N", "keep-up", "on-time"]
    assert any(line.startswith("live capacity") for line in lines)
    assert figures["overload"] == {} and figures["overload_streams"] is None
    runs = {r["side"]: r for r in figures["runs"]}
    assert set(runs) == {"nearcast", "ffmpeg"}, figures["runs"]
    for side, run in runs.items():
        assert run["streams"] == 1 and run["window_seconds"] >= 6, (side, run)
        [stream] = run["per_stream"]
        assert set(stream["rungs"]) == {"720p", "480p", "360p"}, (side, stream)
        assert "error" not in stream, (side, stream)
        for name in stream["judged"]:
            rung = stream["rungs"][name]
            # Counted from media sequence numbers: a whole number, never an estimate.
            assert isinstance(rung["segments"], int) and rung["segments"] >= 0, (side, rung)
            assert abs(rung["expected"] - run["window_seconds"] / 2.0) < 0.01, (side, rung)
            # Read back from the newest segment's last frame and its first listing.
            assert rung["lag"] is not None and rung["lag"] > 0, (side, name, rung)
            assert rung["startup"] is not None and rung["startup"] > 0, (side, name, rung)
    assert runs["ffmpeg"]["per_stream"][0]["judged"] == ["720p", "480p", "360p"]


def test_decode_bench_times_the_pipelines_decoder_against_frame_threads() -> None:
    require_binary("ffmpeg")
    lines, figures = run_bench(
        "bench.decode", "--seconds", "2", "--runs", "1", "--clips", "lecture,noise", timeout=120
    )
    assert lines[0].startswith("decode, nearcast (SLICE) against frame threads (AUTO)")
    assert figures["runs"] == 1 and set(figures["clips"]) == {"lecture", "noise"}
    for clip in figures["clips"].values():
        assert clip["pictures"] >= 50, clip
        for side in ("nearcast", "frame_threads"):
            (cpu,) = clip[side]["cpu_seconds"]
            assert cpu > 0 and clip[side]["median_cpu_seconds"] == cpu, clip
        assert clip["ratio_cpu"] > 0 and clip["ratio_wall"] > 0, clip


def test_transcode_bench_prints_every_pair_and_checks_like_for_like() -> None:
    require_binary("ffmpeg")
    lines, figures = run_bench(
        "bench.transcode",
        "--seconds",
        "4",
        "--pairs",
        "1",
        "--clips",
        "lecture,noise",
        "--noise-floor",
        timeout=300,
    )
    assert lines[0].startswith("ladder 720p, 480p, 360p")
    assert figures["pairs"] == 1 and figures["format"] == "ts"
    assert set(figures["clips"]) == {"lecture", "noise"}
    for clip in figures["clips"].values():
        (pair,) = clip["pairs"]
        for side in ("nearcast", "ffmpeg"):
            assert pair[side]["wall_seconds"] > 0 and pair[side]["cpu_seconds"] > 0, pair
            assert clip[side]["cpu_seconds"] == pair[side]["cpu_seconds"]
        # The FFmpeg CLI run twice per pair: its ratio to itself.
        (again,) = clip["noise_floor"]["pairs"]
        assert again["ratio_cpu"] > 0 and clip["noise_floor"]["ratio_cpu"] == again["ratio_cpu"]
        # Like for like, whatever the machine: the same x264 options on every rung,
        # read back from both outputs, and every rung scored on both sides.
        for rung in ("720p", "480p", "360p"):
            options = clip["x264_options"][rung]
            assert options["identical"], options
            assert "keyint=120 keyint_min=60 scenecut=0" in options["nearcast"]
            psnr = clip["psnr"][rung]
            assert psnr["nearcast_db"] > 25 and psnr["ffmpeg_db"] > 25, psnr
    assert figures["x264_builds"]["nearcast"].startswith("core ")
    assert figures["nearcast_startup"]["cpu_seconds"] > 0
    assert "noise.ratio_cpu<=1.0" in figures["targets"]
    assert figures["targets"]["lecture.x264_options_identical"] is True


def test_latency_bench_reports_real_players_beside_the_probe() -> None:
    require_binary("chromium")
    lines, figures = run_bench(
        "bench.latency",
        *("--duration", "3", "--source", str(ROOT / "samples" / "small-360p.mp4")),
        *("--modes", "llhls,first", "--workdir", "build/bench-latency-smoke"),
        timeout=300,
    )
    assert any(line.startswith("LL-HLS in real players") for line in lines[:-1])
    assert figures["llhls"]["latency_p50_ms"] is not None, figures["llhls"]
    # Each player on the warmed node and as the first viewer of a fresh one.
    assert set(figures["players"]) == {"hlsjs", "shaka", "hlsjs_first", "shaka_first"}
    for name, r in figures["players"].items():
        assert "error" not in r, (name, r)
        assert r["stamped"] > 0 and r["p50_ms"] > 0 and r["startup_ms"] > 0, (name, r)
        assert isinstance(r["stalls"], int) and isinstance(r["target_met"], bool), (name, r)
        # The player's own distance from its live edge, read from the player itself.
        assert isinstance(r["edge_gap_p50_ms"], float), (name, r)
    assert figures["player_targets"] == {"p50_ms": 1500, "startup_ms": 1500, "stalls": 0}


def test_tap_cmaf_bench_prints_its_table_and_figures() -> None:
    lines, figures = run_bench("bench.tap_cmaf", "--seconds", "2", "--repeat", "1")
    assert lines[0].split("|")[0].strip() == "stage"
    assert figures["packets_out"] == figures["packets"] > 100
    assert figures["parts"] >= 6 and figures["package_us_per_packet"] > 0
