"""``python -m bench.fastpath`` keeps its contract (a table, then one JSON object as the
last line), every request it times is answered by the fast path, and every held viewer
is answered when its part lands. Tiny settings: the
harness, not the figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_fastpath_bench_prints_cpu_per_request_for_each_kind() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.fastpath", "--requests", "200", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for mode in ("us_per_request", "us_per_first_request"):
        figures = result[mode]
        assert set(figures) == {"playlist", "blocking_playlist_ready", "part", "segment"}
        assert all(us > 0 for us in figures.values()), figures
    assert result["us_per_held_viewer"]["playlist_per_viewer"] > 0
