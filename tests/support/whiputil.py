"""What the WHIP tests share: a small ladder, and checks of what a node made of a publish."""

from __future__ import annotations

import io

import av
import m3u8
from nodeutil import NodeProcess, independent_segments, segment_bytes

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
        if media.status_code != 200:
            return False
        # Media time, not entries: LL-HLS lists a run's first segment as a lead and the rest.
        parsed = m3u8.loads(media.text)
        listed = sum(x.duration for x in parsed.segments if x.uri)
        if listed < segments * (parsed.target_duration or 1):
            return False
    return True


def check_ladder(node: NodeProcess, path: str, *, audio: bool = True) -> None:
    """Every rendition has a segment FFmpeg decodes at its advertised size, with AAC audio."""
    master = m3u8.loads(node.get(f"/{path}/index.m3u8").text)
    assert len(master.playlists) == len(SIZES)
    for p in master.playlists:
        width, height = p.stream_info.resolution
        assert height <= SIZES[p.uri.split("/")[0]][1]  # never upscaled past the rung
        rendition = f"{path}/{p.uri.split('/')[0]}"
        text = node.get(f"/{rendition}/index.m3u8").text
        # The longest segment that starts with an IDR (not an LL-HLS lead of three parts).
        durations = {
            int(x.uri.split(".")[0]): x.duration for x in m3u8.loads(text).segments if x.uri
        }
        msn = max(independent_segments(text), key=lambda m: (durations[m], m))
        data, fmt = segment_bytes(node, rendition, msn)
        with av.open(io.BytesIO(data), format=fmt) as c:
            v = c.streams.video[0]
            frames = [f for pkt in c.demux(v) for f in pkt.decode()]
            assert len(frames) >= 10 and (frames[0].width, frames[0].height) == (width, height), (
                msn,
                len(frames),
            )
            if audio:
                assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"


def ended(node: NodeProcess, path: str) -> bool:
    r = node.get(f"/{path}/240p/index.m3u8")
    return r.status_code == 200 and "#EXT-X-ENDLIST" in r.text
