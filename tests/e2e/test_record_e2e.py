"""Recording survives ``kill -9`` of a real node: every complete segment is on disk and
playable after a restart, and a publisher reconnect continues the same VOD."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import av
import m3u8
from nodeutil import SMALL, SMALL_LADDER, NodeProcess, Publisher, wait_for

RENDITIONS = ("360p", "240p", "180p")


def node(tmp_path: Path, log: str) -> NodeProcess:
    return NodeProcess(
        tmp_path / log,
        NEARCAST_TRANSCODE_LADDER=SMALL_LADDER,
        NEARCAST_RECORD_TENANTS="{live: all}",
        NEARCAST_RECORD_DIR=str(tmp_path / "rec"),
        NEARCAST_HLS_GRACE_PERIOD="2",
    )


def on_disk(root: Path, rendition: str) -> list[str]:
    return sorted(p.name for p in (root / rendition).glob("[0-9]*-*.*"))


def recorded_seconds(names: list[str]) -> float:
    """Total duration of recorded segments, from their ``{index}-{milliseconds}`` names."""
    return sum(int(name.split("-")[1].split(".")[0]) for name in names) / 1000


def kill9(n: NodeProcess) -> None:
    """SIGKILL the node and its child processes, as a crash of its service (cgroup) would."""
    children = n.children()
    n.proc.kill()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    n.proc.wait(10)
    n.client.close()
    n._log.close()
    wait_for(lambda: not any(_alive(pid) for pid in children), 15, "the node's children to die")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_kill9_keeps_every_complete_segment_and_reconnect_continues(tmp_path: Path) -> None:
    root = tmp_path / "rec" / "live" / "class"
    first = node(tmp_path, "node1.log")
    pub = Publisher(SMALL, first.rtmp("live/class"), loop=True)
    try:
        wait_for(
            lambda: all(len(on_disk(root, r)) >= 2 for r in RENDITIONS), 90, "two recorded segments"
        )
        # While live the playlist is an EVENT playlist, served at /vod/.
        live = m3u8.loads(first.get("/live/class/vod/360p/index.m3u8").text)
        assert live.playlist_type == "event" and not live.is_endlist
        # What the node has acknowledged as recorded (counted after fsync and listing).
        acked = first.metric("record_segments_total")
        assert acked >= 2 * len(RENDITIONS)
    finally:
        kill9(first)
        pub.stop()
    before = {r: on_disk(root, r) for r in RENDITIONS}
    assert sum(len(v) for v in before.values()) >= acked  # none of them lost to the crash
    # Viewers got MPEG-TS (the default format); the recording is fMP4 all the same.
    assert all(name.endswith(".m4s") for r in RENDITIONS for name in before[r])

    second = node(tmp_path, "node2.log")
    try:
        for r in RENDITIONS:
            pl = m3u8.loads(second.get(f"/live/class/vod/{r}/index.m3u8").text)
            assert pl.is_endlist and pl.playlist_type == "vod"
            assert [s.uri for s in pl.segments] == before[r], r  # every complete segment listed
            assert pl.segment_map and pl.segment_map[0].uri.startswith("init-"), r
        master = m3u8.loads(second.get("/live/class/vod/index.m3u8").text)
        assert sorted(p.uri for p in master.playlists) == sorted(
            f"{r}/index.m3u8" for r in RENDITIONS
        )
        with av.open(f"{second.http}/live/class/vod/360p/index.m3u8", timeout=(10, 10)) as c:
            frames = sum(1 for _ in c.decode(video=0))
        # Every listed segment decodes: at least 25 fps over the durations recorded in the
        # names (a segment cut short by the publisher leaving is short, and listed so).
        assert frames >= 25 * recorded_seconds(before["360p"])

        # The publisher reconnects to the restarted node: one continuous VOD.
        count = len(before["360p"])
        pub = Publisher(SMALL, second.rtmp("live/class"), loop=True)
        try:
            wait_for(
                lambda: len(on_disk(root, "360p")) >= count + 1, 90, "a segment after reconnect"
            )
        finally:
            pub.stop()

        def closed() -> m3u8.M3U8 | None:
            pl = m3u8.loads(second.get("/live/class/vod/360p/index.m3u8").text)
            return pl if pl.is_endlist else None

        pl = wait_for(closed, 30, "ENDLIST after the grace period")
        flags = [s.discontinuity for s in pl.segments]
        assert flags[count] and not any(flags[:count])
        assert len(pl.segments) == len(on_disk(root, "360p"))
        started = time.monotonic()
        with av.open(f"{second.http}/live/class/vod/index.m3u8", timeout=(10, 10)) as c:
            frames = sum(1 for _ in c.decode(video=0))
        assert frames >= 25 * recorded_seconds(on_disk(root, "360p"))
        assert time.monotonic() - started < 60
    finally:
        second.stop()
