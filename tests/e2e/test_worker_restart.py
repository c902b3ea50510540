"""A transcode worker killed mid-class: the time a viewer waits, measured from ``kill -9``
to the next media listed in the playlist (not to the new process's spawn), with the
node's default settings. LL-HLS lists its next part in under 2 s; MPEG-TS its next
segment within one segment duration plus 1 s."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import pytest
from nodeutil import SMALL, NodeProcess, Publisher, wait_for

SEGMENT = 2.0  # hls.segment_duration's default


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(
        tmp_path_factory.mktemp("restart") / "node.log",
        # LL-HLS is the default delivery; the "tv" tenant asks for MPEG-TS.
        NEARCAST_RTMP_TENANTS="[live, tv]",
        NEARCAST_HLS_TENANTS="{tv: ts}",
    )
    yield n
    n.stop()


def _newest(text: str, parts: bool) -> str | None:
    if parts:
        found = re.findall(r'#EXT-X-PART:[^\n]*URI="([^"]+)"', text)
    else:
        found = [line for line in text.splitlines() if line.endswith(".ts")]
    return found[-1] if found else None


def _kill_and_wait(node: NodeProcess, path: str, parts: bool) -> float:
    """Seconds from kill -9 of the stream's only worker to new media in its playlist."""
    playlist = f"/{path}/360p/index.m3u8"

    def listed() -> str | None:
        r = node.get(playlist)
        return _newest(r.text, parts) if r.status_code == 200 else None

    wait_for(lambda: node.get(playlist).text.count("#EXTINF") >= 2, 60, f"{path} listing")
    [worker] = node.children()
    before = listed()
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    seen = {before}
    # Media the dead worker had already handed over may still be listed just after the
    # kill; what counts is media from the new worker, which starts a new generation.
    wait_for(lambda: node.children() and node.children() != [worker], 10, "a new worker")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        newest = listed()
        if newest is not None and newest not in seen and _after_restart(node, playlist):
            return time.monotonic() - killed
        seen.add(newest)
        time.sleep(0.02)
    raise AssertionError(f"no media listed within 20 s of the kill; log: {node.log()}")


def _after_restart(node: NodeProcess, playlist: str) -> bool:
    """The newest media follows a discontinuity: it came from the restarted worker."""
    text = node.get(playlist).text
    tail = text[text.rfind("#EXT-X-DISCONTINUITY") :] if "#EXT-X-DISCONTINUITY" in text else ""
    return bool(tail) and ("#EXTINF" in tail or "#EXT-X-PART:" in tail)


def test_killed_worker_next_part_listed_within_2_s(node: NodeProcess) -> None:
    pub = Publisher(SMALL, node.rtmp("live/restart"), loop=True)
    try:
        gap = _kill_and_wait(node, "live/restart", parts=True)
    finally:
        pub.stop()
    print(f"LL-HLS: kill -9 -> next part listed in {gap:.2f} s")
    assert gap < 2.0


def test_killed_worker_next_segment_within_segment_duration_plus_1_s(node: NodeProcess) -> None:
    pub = Publisher(SMALL, node.rtmp("tv/restart"), loop=True)
    try:
        gap = _kill_and_wait(node, "tv/restart", parts=False)
    finally:
        pub.stop()
    print(f"MPEG-TS: kill -9 -> next segment listed in {gap:.2f} s")
    assert gap <= SEGMENT + 1.0
