"""Framing between the node and its transcode workers (pure, no I/O).

A worker is a child process that reads frames on stdin and writes frames on
stdout. Every frame is ``type (1 byte) | length (4 bytes, big endian) |
payload``. Control frames carry JSON; packet and segment frames carry a small
binary header followed by the raw bytes, so a megabyte keyframe is never
re-encoded as text.
"""

from __future__ import annotations

import enum
import json
import struct
from typing import Any

from media import MediaPacket
from media.segments import InitFrame, PartFrame, SegmentFrame

#: Environment variables the node sets for a worker: its own pid (the worker exits
#: when its parent is another process) and the worker's address-space limit in MiB.
ENV_PARENT = "NEARCAST_WORKER_PARENT"
ENV_MEMORY = "NEARCAST_WORKER_MEMORY_MB"

HEADER = struct.Struct(">BI")
# kind (0 video, 1 audio) | flags | pts | dts | arrival (wall-clock seconds at the node) |
# codec name length. The arrival time lets the worker measure its own lag exactly.
PACKET_HEADER = struct.Struct(">BBqqdB")
FLAG_KEYFRAME = 0x01
FLAG_CONFIG = 0x02
MAX_FRAME = 64 * 1024 * 1024


class FrameType(enum.IntEnum):
    # node -> worker
    START = 1
    PACKET = 2
    END = 3
    # worker -> node
    RENDITIONS = 10
    SEGMENT = 11
    STATS = 12
    FATAL = 13
    DONE = 14
    INIT = 15  # fMP4 init segment (ftyp+moov) of one rendition
    PART = 16  # LL-HLS partial segment (moof+mdat) of one rendition
    TAP = 17  # one encoded packet for WebRTC viewers (tap rendition's H.264, Opus audio)
    RECORD_INIT = 18  # fMP4 init segment for the recorder, beside MPEG-TS for viewers
    RECORD_SEGMENT = 19  # fMP4 segment for the recorder, beside MPEG-TS for viewers


class FramingError(ValueError):
    """The byte stream between node and worker is corrupt."""


def encode_frame(ftype: FrameType, *pieces: bytes) -> bytes:
    """A frame whose payload is ``pieces`` end to end: each copied once, into the frame
    (a segment's media is hundreds of KB)."""
    return b"".join((HEADER.pack(ftype, sum(map(len, pieces))), *pieces))


def encode_json(ftype: FrameType, obj: Any) -> bytes:
    return encode_frame(ftype, json.dumps(obj, separators=(",", ":")).encode())


def encode_packet(
    packet: MediaPacket, arrival: float = 0.0, ftype: FrameType = FrameType.PACKET
) -> bytes:
    codec = packet.codec.encode()
    flags = (FLAG_KEYFRAME if packet.keyframe else 0) | (FLAG_CONFIG if packet.config else 0)
    head = PACKET_HEADER.pack(
        0 if packet.kind == "video" else 1, flags, packet.pts, packet.dts, arrival, len(codec)
    )
    return encode_frame(ftype, head, codec, packet.data)


def decode_packet(payload: bytes) -> tuple[MediaPacket, float]:
    """The packet and its arrival time at the node."""
    if len(payload) < PACKET_HEADER.size:
        raise FramingError("packet frame is shorter than its header")
    kind, flags, pts, dts, arrival, clen = PACKET_HEADER.unpack_from(payload)
    start = PACKET_HEADER.size
    codec = payload[start : start + clen].decode()
    packet = MediaPacket(
        kind="video" if kind == 0 else "audio",
        codec=codec,
        pts=pts,
        dts=dts,
        data=payload[start + clen :],
        keyframe=bool(flags & FLAG_KEYFRAME),
        config=bool(flags & FLAG_CONFIG),
    )
    return packet, arrival


def _encode_meta(ftype: FrameType, meta: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(meta, separators=(",", ":")).encode()
    return encode_frame(ftype, struct.pack(">I", len(raw)), raw, data)


def _parse_meta(payload: bytes, what: str) -> tuple[dict[str, Any], bytes]:
    if len(payload) < 4:
        raise FramingError(f"{what} frame is shorter than its header")
    (mlen,) = struct.unpack_from(">I", payload)
    if 4 + mlen > len(payload):
        raise FramingError(f"{what} frame metadata overruns the frame")
    try:
        meta = json.loads(payload[4 : 4 + mlen])
    except ValueError as exc:
        raise FramingError(f"{what} frame metadata is not JSON: {exc}") from None
    return meta, payload[4 + mlen :]


def encode_segment(seg: SegmentFrame, ftype: FrameType = FrameType.SEGMENT) -> bytes:
    meta = {
        "rendition": seg.rendition,
        "index": seg.index,
        "start": seg.start,
        "duration": seg.duration,
        "codecs": seg.codecs,
    }
    return _encode_meta(ftype, meta, seg.data)


def decode_segment(payload: bytes) -> SegmentFrame:
    meta, data = _parse_meta(payload, "segment")
    return SegmentFrame(
        rendition=str(meta["rendition"]),
        index=int(meta["index"]),
        start=float(meta["start"]),
        duration=float(meta["duration"]),
        codecs=str(meta["codecs"]),
        data=data,
    )


def encode_init(init: InitFrame, ftype: FrameType = FrameType.INIT) -> bytes:
    return _encode_meta(ftype, {"rendition": init.rendition, "codecs": init.codecs}, init.data)


def decode_init(payload: bytes) -> InitFrame:
    meta, data = _parse_meta(payload, "init")
    return InitFrame(rendition=str(meta["rendition"]), codecs=str(meta["codecs"]), data=data)


def encode_part(part: PartFrame) -> bytes:
    meta = {
        "rendition": part.rendition,
        "index": part.index,
        "part": part.part,
        "start": part.start,
        "duration": part.duration,
        "independent": part.independent,
    }
    return _encode_meta(FrameType.PART, meta, part.data)


def decode_part(payload: bytes) -> PartFrame:
    meta, data = _parse_meta(payload, "part")
    return PartFrame(
        rendition=str(meta["rendition"]),
        index=int(meta["index"]),
        part=int(meta["part"]),
        start=float(meta["start"]),
        duration=float(meta["duration"]),
        independent=bool(meta["independent"]),
        data=data,
    )


class FrameReader:
    """Incremental parser: feed bytes, get ``(type, payload)`` frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[FrameType, bytes]]:
        self._buf += data
        out: list[tuple[FrameType, bytes]] = []
        while len(self._buf) >= HEADER.size:
            ftype, length = HEADER.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise FramingError(f"frame of {length} bytes exceeds the {MAX_FRAME} limit")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            try:
                kind = FrameType(ftype)
            except ValueError:
                raise FramingError(f"unknown frame type {ftype}") from None
            # One copy of the payload (a bytearray slice would be a second).
            with memoryview(self._buf) as view:
                out.append((kind, bytes(view[HEADER.size : end])))
            del self._buf[:end]
        return out
