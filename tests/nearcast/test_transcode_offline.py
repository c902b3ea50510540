"""`nearcast transcode`: any configured profile, TS or fMP4 VOD packages, read by FFmpeg."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import av
import m3u8
import pytest

import nearcast.offline as offline
from containers.mp4box import parse_init
from media.segments import SegmentFrame
from transcode.output import Output
from transcode.protocol import FrameType, encode_json, encode_segment
from transcode.spec import Spec

ROOT = Path(__file__).resolve().parents[2]
SMALL = str(ROOT / "samples" / "small-360p.mp4")


def _transcode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nearcast", "transcode", SMALL, "--quiet", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


CONFIG = """
transcode:
  profiles:
    tiny:
      ladder:
        - {name: source, codec: copy}
        - {name: 240p, width: 426, height: 240, video_bitrate: 400000, preset: ultrafast}
"""


@pytest.mark.parametrize("fmt", ["fmp4", "ts"])
def test_profile_packaged_as_vod_and_read_by_ffmpeg(tmp_path: Path, fmt: str) -> None:
    cfg = tmp_path / "nearcast.yml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    res = _transcode("--config", str(cfg), "--profile", "tiny", "--format", fmt, "--out", str(out))
    assert res.returncode == 0, res.stderr
    tmp_path = out
    master = m3u8.load(str(tmp_path / "index.m3u8"))
    assert sorted(p.uri for p in master.playlists) == ["240p/index.m3u8", "source/index.m3u8"]
    for variant in master.playlists:
        media = m3u8.load(str(tmp_path / variant.uri))
        assert media.playlist_type == "vod" and media.is_endlist
        ext = ".m4s" if fmt == "fmp4" else ".ts"
        assert media.segments and all(s.uri.endswith(ext) for s in media.segments)
        if fmt == "fmp4":
            assert media.segment_map and media.segment_map[0].uri == "init.mp4"
            init = (tmp_path / variant.uri).parent / "init.mp4"
            kinds = {t.handler for t in parse_init(init.read_bytes())}
            assert kinds == {"vide", "soun"}
        with av.open(str(tmp_path / variant.uri)) as c:  # FFmpeg's HLS demuxer
            frames = sum(1 for _ in c.decode(video=0))
        total = sum(s.duration for s in media.segments)
        assert total > 5 and abs(frames - total * 30) <= 2, (variant.uri, frames, total)


def test_unknown_profile_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    res = _transcode("--profile", "nope", "--out", str(tmp_path))
    assert res.returncode == 2
    assert "unknown profile 'nope'" in res.stderr and "source_plus" in res.stderr, res.stderr


class _ThreadedPipeline:
    """Stands in for the worker's pipeline: four rung threads that write their
    segment frames at the same time, as the real rungs do, to what it is given."""

    RUNGS, SEGMENTS = 4, 200

    def __init__(self, spec: Spec, out: Output) -> None:
        self.out = out

    def feed(self, packet: object) -> None:
        pass

    def finish(self) -> None:
        names = [f"r{i}" for i in range(self.RUNGS)]
        renditions = [{"name": n, "width": 64, "height": 36, "fps": 30.0} for n in names]
        self.out.write(encode_json(FrameType.RENDITIONS, {"renditions": renditions}))

        def rung(name: str) -> None:
            for i in range(self.SEGMENTS):
                seg = SegmentFrame(name, i, 2.0 * i, 2.0, "avc1.64001e", bytes(188 * (1 + i % 7)))
                self.out.write(encode_segment(seg))

        threads = [threading.Thread(target=rung, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def test_segments_written_by_every_rung_thread_at_once_are_each_listed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rungs' threads write concurrently; each segment must be read and listed
    exactly once (a shared frame reader without a lock listed some twice, shifting
    every later segment of the playlist by one)."""
    monkeypatch.setattr(offline, "Pipeline", _ThreadedPipeline)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches as often as the interpreter allows
    try:
        offline.transcode_file(SMALL, tmp_path, Spec(stream="t/t", ladder=[]))
    finally:
        sys.setswitchinterval(switch)
    for i in range(_ThreadedPipeline.RUNGS):
        media = m3u8.load(str(tmp_path / f"r{i}" / "index.m3u8"))
        uris = [s.uri for s in media.segments]
        assert uris == [f"{n}.ts" for n in range(_ThreadedPipeline.SEGMENTS)], f"r{i}"
