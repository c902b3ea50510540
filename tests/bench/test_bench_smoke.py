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
        *(["--token"] if token else []),
        timeout=300,
    )
    assert figures["token"] is token
    assert lines[0].startswith("serving alone")
    assert lines[1].split()[:3] == ["what", "nearcast", "req/s"]
    # Serving alone, then under a transcoding ladder: both against nginx on the same bytes.
    for rows in (figures, figures["under_transcode"]):
        for kind in ("playlist", "segment", "part"):
            row = rows[kind]
            assert row["nearcast_rps"] > 0 and row["nginx_rps"] > 0, row
            assert row["body_bytes"] > 0 and len(row["round_ratios"]) == 1, row
    assert figures["llhls"]["viewers"] == 20 and figures["llhls"]["viewer_errors"] == 0
    assert figures["llhls"]["held_max"] == 20
    assert set(figures["targets"]) >= {"segment_bytes_ratio>=0.95", "part_rps_ratio>=0.8"}


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
    assert figures["player_targets"] == {"p50_ms": 1500, "startup_ms": 1500, "stalls": 0}
