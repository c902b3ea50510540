"""Real CMAF fragments for tests and benchmarks: a sample remuxed by FFmpeg (PyAV) into an init
segment and ~1/3 s moof+mdat parts, grouped into 2 s segments on its keyframes.

They stand in for the transcode worker's fMP4 output in store/HTTP tests and the
fan-out benchmark; the bytes are real fMP4 that FFmpeg and browsers decode.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "samples" / "small-360p.mp4"


@dataclass(frozen=True)
class Fragment:
    start: float
    duration: float
    independent: bool
    data: bytes


@dataclass(frozen=True)
class Cmaf:
    init: bytes
    codecs: str
    segments: list[list[Fragment]]  # parts of each segment


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, int, int]]:
    """(type, offset of payload, end) of each box in data[start:end]."""
    end = len(data) if end is None else end
    out = []
    i = start
    while i + 8 <= end:
        size, typ = struct.unpack_from(">I4s", data, i)
        head = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, i + 8)
            head = 16
        out.append((typ.decode("latin-1"), i + head, i + size))
        i += size
    return out


def _video_track(init: bytes) -> tuple[int, int]:
    """(track id, timescale) of the video track in ftyp+moov."""
    for typ, body, end in _boxes(init):
        if typ != "moov":
            continue
        for t2, b2, e2 in _boxes(init, body, end):
            if t2 != "trak":
                continue
            tid = timescale = 0
            is_video = False
            for t3, b3, e3 in _boxes(init, b2, e2):
                if t3 == "tkhd":
                    version = init[b3]
                    tid = struct.unpack_from(">I", init, b3 + (20 if version == 1 else 12))[0]
                elif t3 == "mdia":
                    for t4, b4, _e4 in _boxes(init, b3, e3):
                        if t4 == "mdhd":
                            version = init[b4]
                            timescale = struct.unpack_from(
                                ">I", init, b4 + (20 if version == 1 else 12)
                            )[0]
                        elif t4 == "hdlr":
                            is_video = init[b4 + 8 : b4 + 12] == b"vide"
            if is_video:
                return tid, timescale
    raise ValueError("no video track in the init segment")


def _tfdt(data: bytes, moof_body: int, moof_end: int, track_id: int) -> int | None:
    for t, b, e in _boxes(data, moof_body, moof_end):
        if t != "traf":
            continue
        tid = None
        dts = None
        for t2, b2, _e2 in _boxes(data, b, e):
            if t2 == "tfhd":
                tid = struct.unpack_from(">I", data, b2 + 4)[0]
            elif t2 == "tfdt":
                version = data[b2]
                dts = struct.unpack_from(">Q" if version == 1 else ">I", data, b2 + 4)[0]
        if tid == track_id:
            return dts
    return None


@cache
def cmaf(source: str = str(SMALL), part: float = 1 / 3, segment: float = 2.0) -> Cmaf:
    src = av.open(source)
    buf = io.BytesIO()
    out = av.open(
        buf,
        "w",
        format="mp4",
        options={
            "movflags": "empty_moov+default_base_moof+frag_keyframe+cmaf",
            "frag_duration": str(int(part * 1_000_000)),
        },
    )
    mapping = {
        s.index: out.add_stream_from_template(s)
        for s in src.streams
        if s.type in ("video", "audio")
    }
    for pkt in src.demux():
        if pkt.dts is None or pkt.stream.index not in mapping:
            continue
        pkt.stream = mapping[pkt.stream.index]
        out.mux(pkt)
    total = float(src.duration or 0) / 1_000_000
    out.close()
    src.close()
    data = buf.getvalue()
    boxes = _boxes(data)
    first_moof = next(i for i, b in enumerate(boxes) if b[0] == "moof")
    init = data[: boxes[first_moof][1] - 8]
    track_id, timescale = _video_track(init)
    frags: list[tuple[float, bytes]] = []
    following = [*boxes[first_moof + 1 :], ("", 0, 0)]
    for (typ, body, end), nxt in zip(boxes[first_moof:], following, strict=True):
        if typ != "moof":
            continue
        dts = _tfdt(data, body, end, track_id)
        stop = nxt[2] if nxt[0] == "mdat" else end
        if dts is None:  # audio-only fragment: belongs to the previous part
            start, prev = frags.pop()
            frags.append((start, prev + data[body - 8 : stop]))
            continue
        frags.append((dts / timescale, data[body - 8 : stop]))
    segments: list[list[Fragment]] = []
    for k, (start, blob) in enumerate(frags):
        end = frags[k + 1][0] if k + 1 < len(frags) else total
        independent = abs(start / segment - round(start / segment)) < 1e-3
        if independent or not segments:
            segments.append([])
        segments[-1].append(Fragment(start, end - start, independent, blob))
    return Cmaf(init=init, codecs="avc1.64001e,mp4a.40.2", segments=segments)
