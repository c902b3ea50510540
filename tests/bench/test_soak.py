"""Two minutes of bench.soak with fewer viewers: memory and descriptors flat after the
first minute, no segment gap, no error (the 30-minute run is ``python -m bench.soak``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(480)
def test_two_minute_soak_meets_its_goals() -> None:
    cmd = [sys.executable, "-m", "bench.soak", "--minutes", "2", "--viewers", "100", "--whep", "4"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=420)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"bench.soak printed nothing; stderr: {proc.stderr[-3000:]}"
    verdict = json.loads(lines[-1])["soak"]
    print("\n".join(lines[:-1]))
    rows = verdict["rows"]
    assert [r["minute"] for r in rows] == [1, 2]
    # The load really ran: the viewers loaded parts every minute.
    assert all(r["parts"] >= 100 for r in rows), rows
    assert verdict["goals"] == {
        "memory_flat": True,
        "fds_flat": True,
        "no_gap": True,
        "no_error": True,
    }, verdict
    assert verdict["ok"] and proc.returncode == 0
