"""What the WHIP tests share: a small ladder, and checks of what a node made of a publish."""

from __future__ import annotations

import io

import av
import m3u8
from nodeutil import NodeProcess, segment_numbers

LADDER = (
    "[{name: 240p, width: 426, height: 240, video_bitrate: 400000},"
    " {name: 180p, width: 320, height: 180, video_bitrate: 250000}]"
)
SIZES = {"240p": (426, 240), "180p": (320, 180)}


def ready(node: NodeProcess, path: str, segments: int) -> bool:
    r = node.get(f"/{path}/index.m3u8")
    if r.status_code != 200:
        return False
    master = m3u8.loads(r.text)
    if {p.uri.split("/")[0] for p in master.playlists} != set(SIZES):
        return False
    for p in master.playlists:
        media = node.get(f"/{path}/{p.uri}")
        if media.status_code != 200 or len(segment_numbers(media.text)) < segments:
            return False
    return True


def check_ladder(node: NodeProcess, path: str, *, audio: bool = True) -> None:
    """Every rendition has a segment FFmpeg decodes at its advertised size, with AAC audio."""
    master = m3u8.loads(node.get(f"/{path}/index.m3u8").text)
    assert len(master.playlists) == len(SIZES)
    for p in master.playlists:
        width, height = p.stream_info.resolution
        assert height <= SIZES[p.uri.split("/")[0]][1]  # never upscaled past the rung
        text = node.get(f"/{path}/{p.uri}").text
        msn = segment_numbers(text)[0]
        r = node.get(f"/{path}/{p.uri.split('/')[0]}/{msn}.ts")
        assert r.status_code == 200
        with av.open(io.BytesIO(r.content), format="mpegts") as c:
            v = c.streams.video[0]
            frames = [f for pkt in c.demux(v) for f in pkt.decode()]
            assert len(frames) >= 10 and (frames[0].width, frames[0].height) == (width, height)
            if audio:
                assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"


def ended(node: NodeProcess, path: str) -> bool:
    r = node.get(f"/{path}/240p/index.m3u8")
    return r.status_code == 200 and "#EXT-X-ENDLIST" in r.text
