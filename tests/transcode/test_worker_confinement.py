"""A node's transcode workers are confined: no secrets, first to go under memory
pressure, bounded address space, and they die with their node.

One real node transcodes three classes. A node killed with -9 used to leave its
workers running for good, as children of pid 1.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from nodeutil import SMALL, NodeProcess, Publisher, wait_for

SECRET = "operator-secret-never-in-a-worker"
LADDER = "[{name: 180p, width: 320, height: 180, video_bitrate: 250000}]"
STREAMS = [f"live/class{i}" for i in range(3)]


def _workers(node: NodeProcess) -> list[int]:
    out = []
    for pid in node.children():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"transcode.worker" in cmdline:
            out.append(pid)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def test_workers_are_confined_and_die_within_2s_of_a_kill_9_of_their_node(
    tmp_path: Path,
) -> None:
    node = NodeProcess(
        tmp_path / "node.log",
        NEARCAST_TRANSCODE_LADDER=LADDER,
        NEARCAST_TRANSCODE_CAPACITY_UNITS="100",
        NEARCAST_TRANSCODE_WORKER_MEMORY_MB="4096",
        NEARCAST_INGEST_OPERATOR_TOKEN=SECRET,
    )
    pubs = [Publisher(SMALL, node.rtmp(s)) for s in STREAMS]
    try:
        for s in STREAMS:
            wait_for(
                lambda s=s: "#EXTINF" in node.get(f"/{s}/180p/index.m3u8").text,
                90,
                f"a transcoded segment of {s}",
            )
        workers = _workers(node)
        assert len(workers) == 3
        for pid in workers:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert SECRET.encode() not in environ
            assert b"NEARCAST_INGEST" not in environ
            assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "1000"
            limits = Path(f"/proc/{pid}/limits").read_text()
            (line,) = [x for x in limits.splitlines() if x.startswith("Max address space")]
            assert line.split()[3] == str(4096 * 1024 * 1024)
            assert os.getsid(pid) == pid  # a session of its own: no Ctrl-C from the terminal

        os.kill(node.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not any(_alive(p) for p in workers), 2, "the workers to die")
        print(f"workers gone {time.monotonic() - killed:.3f} s after kill -9 of the node")
    finally:
        for p in pubs:
            p.stop(5)
        if node.proc.poll() is None:  # failed before the kill
            node.stop()
        else:
            node.proc.wait(10)
            node.client.close()
