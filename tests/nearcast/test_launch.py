"""``NodeSubprocess`` leaves no node behind: a test or benchmark process that dies
without calling ``stop()`` (killed, crashed) takes its node with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from nodeutil import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_node_ends_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from nearcast.launch import NodeSubprocess
        node = NodeSubprocess(Path({str(tmp_path / "node.log")!r}))
        print(node.proc.pid, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "NEARCAST_TRANSCODE_CAPACITY_UNITS": "1"},
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, "the parent did not start its node"
        node = int(line)
        cmdline = Path(f"/proc/{node}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:4] == [b"-m", b"nearcast", b"node"], cmdline
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_for(lambda: not _alive(node), 20, "the orphaned node to end")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
