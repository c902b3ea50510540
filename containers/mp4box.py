"""ISO BMFF box parser (pure), for checking what :mod:`containers.fmp4` writes.

It reads exactly the subset the writer produces and a player needs: the box
tree, the tracks of an init segment and the samples of a fragment. Malformed
input raises :class:`ValueError` with the box at fault.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

CONTAINERS = {
    b"moov",
    b"trak",
    b"mdia",
    b"minf",
    b"stbl",
    b"mvex",
    b"moof",
    b"traf",
    b"dinf",
    b"edts",
}


@dataclass(slots=True)
class Box:
    kind: bytes
    offset: int  # of the box header, in the parsed buffer
    payload: bytes
    children: list[Box] = field(default_factory=list)

    def find(self, *path: bytes) -> Box | None:
        node: Box | None = self
        for kind in path:
            assert node is not None
            node = next((c for c in node.children if c.kind == kind), None)
            if node is None:
                return None
        return node

    def all(self, kind: bytes) -> list[Box]:
        return [c for c in self.children if c.kind == kind]


# Container boxes nest a handful deep (moov/trak/mdia/minf/stbl); a deeper tree is
# hostile input, refused before it could exhaust the interpreter's stack.
MAX_DEPTH = 16
# Samples in one track run, at most: a part or segment holds a few hundred.
MAX_RUN_SAMPLES = 1 << 16


def parse_boxes(data: bytes, base: int = 0, depth: int = 0) -> list[Box]:
    if depth > MAX_DEPTH:
        raise ValueError(f"boxes at {base} nest deeper than {MAX_DEPTH} levels")
    boxes: list[Box] = []
    pos = 0
    n = len(data)
    while pos < n:
        if pos + 8 > n:
            raise ValueError(f"box header at {base + pos} is truncated")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > n:
                raise ValueError(f"{kind!r} large size at {base + pos} is truncated")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = n - pos
        if size < header or pos + size > n:
            raise ValueError(f"{kind!r} box at {base + pos} has invalid size {size}")
        payload = data[pos + header : pos + size]
        b = Box(kind, base + pos, payload)
        if kind in CONTAINERS:
            b.children = parse_boxes(payload, base + pos + header, depth + 1)
        boxes.append(b)
        pos += size
    return boxes


def _full(b: Box, what: str, need: int) -> tuple[int, int, bytes]:
    if len(b.payload) < 4 + need:
        raise ValueError(f"{what} box is truncated")
    vf = struct.unpack_from(">I", b.payload)[0]
    return vf >> 24, vf & 0xFFFFFF, b.payload[4:]


@dataclass(frozen=True, slots=True)
class ParsedTrack:
    track_id: int
    handler: str
    timescale: int
    codec: str  # sample entry four-cc
    config: bytes  # avcC record, AudioSpecificConfig or dOps payload
    width: int = 0
    height: int = 0
    channels: int = 0
    sample_rate: int = 0
    edit_offset: int = 0  # media time (ticks) where the edit list starts presentation


def _edit_offset(trak: Box) -> int:
    """The media time of the first edit that is not empty (``elst``), else 0."""
    elst = trak.find(b"edts", b"elst")
    if elst is None:
        return 0
    version, _, p = _full(elst, "elst", 4)
    count = struct.unpack_from(">I", p)[0]
    entry = ">QqI" if version == 1 else ">IiI"
    size = struct.calcsize(entry)
    if len(p) < 4 + count * size:
        raise ValueError("elst is truncated")
    for i in range(count):
        _, media_time, _ = struct.unpack_from(entry, p, 4 + i * size)
        if media_time >= 0:
            return int(media_time)
    return 0


def _esds_config(payload: bytes) -> bytes:
    """The DecoderSpecificInfo (tag 5) inside an esds descriptor tree."""
    pos = 0
    while pos < len(payload):
        tag = payload[pos]
        pos += 1
        size = 0
        for _ in range(4):
            if pos >= len(payload):
                raise ValueError("esds descriptor size is truncated")
            b = payload[pos]
            pos += 1
            size = (size << 7) | (b & 0x7F)
            if not b & 0x80:
                break
        if tag == 3:
            pos += 3  # ES_ID, flags (no optional fields written)
            continue
        if tag == 4:
            pos += 13
            continue
        if tag == 5:
            if pos + size > len(payload):
                raise ValueError("esds DecoderSpecificInfo overruns the box")
            return payload[pos : pos + size]
        pos += size
    raise ValueError("esds has no DecoderSpecificInfo")


def parse_init(data: bytes) -> list[ParsedTrack]:
    top = parse_boxes(data)
    kinds = [b.kind for b in top]
    if kinds[:2] != [b"ftyp", b"moov"]:
        raise ValueError(f"init segment must be ftyp + moov, not {kinds}")
    moov = top[1]
    if moov.find(b"mvex") is None:
        raise ValueError("moov has no mvex: not a fragmented file")
    tracks = []
    for trak in moov.all(b"trak"):
        tkhd, mdhd, hdlr = (
            trak.find(b"tkhd"),
            trak.find(b"mdia", b"mdhd"),
            trak.find(b"mdia", b"hdlr"),
        )
        stsd = trak.find(b"mdia", b"minf", b"stbl", b"stsd")
        if tkhd is None or mdhd is None or hdlr is None or stsd is None:
            raise ValueError("trak lacks tkhd, mdhd, hdlr or stsd")
        _, _, t = _full(tkhd, "tkhd", 12)
        track_id = struct.unpack_from(">I", t, 8)[0]
        _, _, m = _full(mdhd, "mdhd", 12)
        timescale = struct.unpack_from(">I", m, 8)[0]
        _, _, h = _full(hdlr, "hdlr", 8)
        handler = h[4:8].decode("latin-1")
        _, _, s = _full(stsd, "stsd", 4)
        entries = parse_boxes(s[4:])
        if not entries:
            raise ValueError("stsd is empty")
        entry = entries[0]
        p = entry.payload
        if entry.kind == b"avc1":
            if len(p) < 78:
                raise ValueError("avc1 sample entry is truncated")
            w, hgt = struct.unpack_from(">HH", p, 24)
            sub = parse_boxes(p[78:])
            avcc = next((b for b in sub if b.kind == b"avcC"), None)
            if avcc is None:
                raise ValueError("avc1 has no avcC")
            tracks.append(
                ParsedTrack(
                    track_id,
                    handler,
                    timescale,
                    "avc1",
                    avcc.payload,
                    w,
                    hgt,
                    edit_offset=_edit_offset(trak),
                )
            )
        elif entry.kind == b"mp4a":
            if len(p) < 28:
                raise ValueError("mp4a sample entry is truncated")
            channels = struct.unpack_from(">H", p, 16)[0]
            rate = struct.unpack_from(">I", p, 24)[0] >> 16
            sub = parse_boxes(p[28:])
            esds = next((b for b in sub if b.kind == b"esds"), None)
            if esds is None:
                raise ValueError("mp4a has no esds")
            cfg = _esds_config(esds.payload[4:])
            tracks.append(
                ParsedTrack(
                    track_id, handler, timescale, "mp4a", cfg, channels=channels, sample_rate=rate
                )
            )
        elif entry.kind == b"Opus":
            if len(p) < 28:
                raise ValueError("Opus sample entry is truncated")
            sub = parse_boxes(p[28:])
            dops = next((b for b in sub if b.kind == b"dOps"), None)
            if dops is None:
                raise ValueError("Opus sample entry has no dOps")
            if len(dops.payload) < 11 or dops.payload[0] != 0:
                raise ValueError("dOps is truncated or not version 0")
            tracks.append(
                ParsedTrack(
                    track_id,
                    handler,
                    timescale,
                    "Opus",
                    dops.payload,
                    channels=dops.payload[1],
                    sample_rate=48000,
                )
            )
        else:
            tracks.append(
                ParsedTrack(track_id, handler, timescale, entry.kind.decode("latin-1"), b"")
            )
    return tracks


@dataclass(frozen=True, slots=True)
class ParsedSample:
    data: bytes
    duration: int
    flags: int
    cts: int


@dataclass(frozen=True, slots=True)
class ParsedRun:
    track_id: int
    base_decode_time: int
    samples: list[ParsedSample]


@dataclass(frozen=True, slots=True)
class ParsedFragment:
    sequence: int
    runs: list[ParsedRun]


# Top-level boxes a CMAF segment or fragmented file may carry beside its moof+mdat
# pairs (segment type and index, producer time, events, padding, random access).
_BESIDE_FRAGMENTS = (b"styp", b"sidx", b"prft", b"emsg", b"free", b"skip", b"mfra")


def parse_fragments(data: bytes) -> list[ParsedFragment]:
    """Every moof + mdat pair in ``data`` (a part, or a segment of several parts)."""
    top = parse_boxes(data)
    out: list[ParsedFragment] = []
    i = 0
    while i < len(top):
        b = top[i]
        if b.kind in _BESIDE_FRAGMENTS:
            i += 1
            continue
        if b.kind != b"moof":
            raise ValueError(f"expected moof, got {b.kind!r} at {b.offset}")
        if i + 1 >= len(top) or top[i + 1].kind != b"mdat":
            raise ValueError(f"moof at {b.offset} is not followed by an mdat")
        out.append(_parse_moof(data, b))
        i += 2
    return out


def _parse_moof(data: bytes, moof: Box) -> ParsedFragment:
    mfhd = moof.find(b"mfhd")
    if mfhd is None:
        raise ValueError("moof has no mfhd")
    _, _, m = _full(mfhd, "mfhd", 4)
    sequence = struct.unpack_from(">I", m)[0]
    runs = []
    for traf in moof.all(b"traf"):
        tfhd, tfdt, trun = traf.find(b"tfhd"), traf.find(b"tfdt"), traf.find(b"trun")
        if tfhd is None or tfdt is None or trun is None:
            raise ValueError("traf lacks tfhd, tfdt or trun")
        _, tf_flags, t = _full(tfhd, "tfhd", 4)
        track_id = struct.unpack_from(">I", t)[0]
        if not tf_flags & 0x020000:
            raise ValueError("tfhd is not default-base-is-moof")
        # Optional fields in order: base data offset, sample description index, then
        # the defaults a trun without per-sample values relies on (FFmpeg writes them).
        pos = 4 + (8 if tf_flags & 0x01 else 0) + (4 if tf_flags & 0x02 else 0)
        defaults = []
        for bit in (0x08, 0x10, 0x20):
            if tf_flags & bit:
                if pos + 4 > len(t):
                    raise ValueError("tfhd is truncated")
                defaults.append(struct.unpack_from(">I", t, pos)[0])
                pos += 4
            else:
                defaults.append(0)
        default_duration, default_size, default_flags = defaults
        version, _, d = _full(tfdt, "tfdt", 4)
        base = (
            struct.unpack_from(">Q" if version == 1 else ">I", d)[0]
            if len(d) >= (8 if version else 4)
            else None
        )
        if base is None:
            raise ValueError("tfdt is truncated")
        version, flags, r = _full(trun, "trun", 4)
        count = struct.unpack_from(">I", r)[0]
        pos = 4
        offset = 0
        if pos + 4 * bool(flags & 0x1) + 4 * bool(flags & 0x4) > len(r):
            raise ValueError("trun is truncated")
        if flags & 0x1:
            offset = struct.unpack_from(">i", r, pos)[0]
            pos += 4
        first_flags: int | None = None
        if flags & 0x4:
            first_flags = struct.unpack_from(">I", r, pos)[0]
            pos += 4
        per = sum(4 for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit)
        if pos + per * count > len(r):
            raise ValueError(f"trun of {count} samples overruns its box")
        if count > MAX_RUN_SAMPLES:
            # Without per-sample fields the count alone says how many: bound it.
            raise ValueError(f"trun of {count} samples exceeds {MAX_RUN_SAMPLES}")
        cursor = moof.offset + offset
        samples = []
        for i in range(count):
            dur, size, cts = default_duration, default_size, 0
            sflags = first_flags if i == 0 and first_flags is not None else default_flags
            if flags & 0x100:
                dur = struct.unpack_from(">I", r, pos)[0]
                pos += 4
            if flags & 0x200:
                size = struct.unpack_from(">I", r, pos)[0]
                pos += 4
            if flags & 0x400:
                sflags = struct.unpack_from(">I", r, pos)[0]
                pos += 4
            if flags & 0x800:
                cts = struct.unpack_from(">i" if version == 1 else ">I", r, pos)[0]
                pos += 4
            if cursor < 0 or cursor + size > len(data):
                raise ValueError(f"track {track_id} sample data overruns the fragment")
            samples.append(ParsedSample(data[cursor : cursor + size], dur, sflags, cts))
            cursor += size
        runs.append(ParsedRun(track_id, base, samples))
    return ParsedFragment(sequence, runs)


def decode_span(data: bytes) -> dict[int, tuple[int, int]]:
    """Per track id: the first base decode time and the decode time its samples end at."""
    span: dict[int, tuple[int, int]] = {}
    for frag in parse_fragments(data):
        for run in frag.runs:
            end = run.base_decode_time + sum(s.duration for s in run.samples)
            first, last = span.get(run.track_id, (run.base_decode_time, end))
            span[run.track_id] = (min(first, run.base_decode_time), max(last, end))
    return span


def shift_decode_times(data: bytes, shift: dict[int, int]) -> bytes:
    """``data`` with every fragment's ``tfdt`` of track ``t`` moved by ``shift[t]`` ticks."""
    out = bytearray(data)
    for top in parse_boxes(data):
        if top.kind != b"moof":
            continue
        for traf in top.all(b"traf"):
            tfhd, tfdt = traf.find(b"tfhd"), traf.find(b"tfdt")
            if tfhd is None or tfdt is None:
                raise ValueError("traf lacks tfhd or tfdt")
            track_id = struct.unpack_from(">I", _full(tfhd, "tfhd", 4)[2])[0]
            delta = shift.get(track_id, 0)
            if not delta:
                continue
            version = _full(tfdt, "tfdt", 4)[0]
            fmt = ">Q" if version == 1 else ">I"
            header = 16 if struct.unpack_from(">I", data, tfdt.offset)[0] == 1 else 8
            pos = tfdt.offset + header + 4  # past the box header, version and flags
            if pos + struct.calcsize(fmt) > len(out):
                raise ValueError("tfdt is truncated")
            value = struct.unpack_from(fmt, out, pos)[0] + delta
            if not 0 <= value < 1 << (64 if version == 1 else 32):
                raise ValueError(f"track {track_id}: shifted decode time {value} is out of range")
            struct.pack_into(fmt, out, pos, value)
    return bytes(out)
