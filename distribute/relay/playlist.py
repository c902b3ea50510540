"""The upstream's playlists as a relay reads them (pure: text in, data out).

What a relay needs of a multivariant playlist is its variants (name, picture, bit
rate, codecs); of a media playlist, the segments and LL-HLS parts with their media
sequence numbers, the init segment each maps to, discontinuities and the end. URIs
may carry a query (a token the upstream signed its playlist with): it is ignored.
Malformed input raises :class:`ValueError` naming the line at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
_SEGMENT = re.compile(r"(\d+)\.(m4s|ts)")
_PART = re.compile(r"(\d+)\.(\d+)\.m4s")


def attributes(text: str) -> dict[str, str]:
    """An attribute list (RFC 8216bis §4.2), quotes removed."""
    return {k: v[1:-1] if v.startswith('"') else v for k, v in _ATTR.findall(text)}


def _path(uri: str) -> str:
    return uri.split("?", 1)[0]


@dataclass(frozen=True, slots=True)
class Variant:
    name: str  # the rendition: the variant URI is ``{name}/index.m3u8``
    bandwidth: int
    average_bandwidth: int
    width: int
    height: int
    fps: float
    codecs: str


@dataclass(frozen=True, slots=True)
class Master:
    variants: tuple[Variant, ...]
    version: int
    independent: bool

    @property
    def fmp4(self) -> bool:
        # RFC 8216bis §7: EXT-X-MAP (fMP4) needs version 6 or more.
        return self.version >= 6

    @property
    def audio(self) -> bool:
        return any("mp4a" in v.codecs for v in self.variants)


def parse_master(text: str) -> Master:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "#EXTM3U":
        raise ValueError("multivariant playlist does not start with #EXTM3U")
    variants: list[Variant] = []
    version = 1
    independent = False
    pending: dict[str, str] | None = None
    for n, raw in enumerate(lines[1:], 2):
        line = raw.strip()
        if line.startswith("#EXT-X-VERSION:"):
            version = _int(line.partition(":")[2], n)
        elif line == "#EXT-X-INDEPENDENT-SEGMENTS":
            independent = True
        elif line.startswith("#EXT-X-STREAM-INF:"):
            pending = attributes(line.partition(":")[2])
        elif line and not line.startswith("#"):
            if pending is None:
                raise ValueError(f"line {n}: variant URI {line[:60]!r} without #EXT-X-STREAM-INF")
            path = _path(line)
            name, _, rest = path.partition("/")
            if rest != "index.m3u8" or not name:
                raise ValueError(f"line {n}: variant URI {line[:60]!r} is not NAME/index.m3u8")
            w, _, h = pending.get("RESOLUTION", "0x0").partition("x")
            bandwidth = _int(pending.get("BANDWIDTH", ""), n)
            variants.append(
                Variant(
                    name=name,
                    bandwidth=bandwidth,
                    average_bandwidth=_int(pending.get("AVERAGE-BANDWIDTH", str(bandwidth)), n),
                    width=_int(w, n),
                    height=_int(h, n),
                    fps=_float(pending.get("FRAME-RATE", "0"), n),
                    codecs=pending.get("CODECS", ""),
                )
            )
            pending = None
    return Master(tuple(variants), version, independent)


@dataclass(frozen=True, slots=True)
class PartRef:
    msn: int
    index: int
    uri: str
    duration: float
    independent: bool


@dataclass(frozen=True, slots=True)
class SegmentRef:
    msn: int
    uri: str
    duration: float
    discontinuity: bool = False
    gap: bool = False
    map_uri: str | None = None
    parts: tuple[PartRef, ...] = ()


@dataclass
class MediaPlaylist:
    sequence: int = 0
    target: float = 0.0
    part_target: float = 0.0
    segments: list[SegmentRef] = field(default_factory=list)
    # Parts of the segment being built (number ``next_msn``), and the init it maps to.
    trailing: list[PartRef] = field(default_factory=list)
    trailing_map: str | None = None
    trailing_discontinuity: bool = False
    preload_hint: tuple[int, int] | None = None
    ended: bool = False

    @property
    def low_latency(self) -> bool:
        return self.part_target > 0

    @property
    def next_msn(self) -> int:
        """The number of the segment after the last complete one (being built)."""
        return self.sequence + len(self.segments)


def parse_media(text: str) -> MediaPlaylist:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "#EXTM3U":
        raise ValueError("media playlist does not start with #EXTM3U")
    pl = MediaPlaylist()
    parts: list[PartRef] = []
    duration: float | None = None
    disc = gap = False
    map_uri: str | None = None
    for n, raw in enumerate(lines[1:], 2):
        line = raw.strip()
        if not line:
            continue
        tag, _, value = line.partition(":")
        msn = pl.sequence + len(pl.segments)
        if tag == "#EXT-X-MEDIA-SEQUENCE":
            if pl.segments or parts:
                raise ValueError(f"line {n}: EXT-X-MEDIA-SEQUENCE after the first segment")
            pl.sequence = _int(value, n)
        elif tag == "#EXT-X-TARGETDURATION":
            pl.target = _float(value, n)
        elif tag == "#EXT-X-PART-INF":
            pl.part_target = _float(attributes(value).get("PART-TARGET", ""), n)
        elif tag == "#EXT-X-SKIP":
            raise ValueError(f"line {n}: delta playlists (EXT-X-SKIP) are not read")
        elif tag == "#EXT-X-DISCONTINUITY":
            disc = True
        elif tag == "#EXT-X-GAP":
            gap = True
        elif tag == "#EXT-X-MAP":
            uri = attributes(value).get("URI")
            if not uri:
                raise ValueError(f"line {n}: EXT-X-MAP without URI")
            map_uri = _path(uri)
        elif tag == "#EXT-X-PART":
            a = attributes(value)
            path = _path(a.get("URI", ""))
            m = _PART.fullmatch(path)
            if m is None or int(m.group(1)) != msn or int(m.group(2)) != len(parts):
                raise ValueError(f"line {n}: part URI {path[:60]!r} is not {msn}.{len(parts)}.m4s")
            part_duration = _float(a.get("DURATION", ""), n)
            independent = a.get("INDEPENDENT") == "YES"
            parts.append(PartRef(msn, len(parts), path, part_duration, independent))
        elif tag == "#EXT-X-PRELOAD-HINT":
            a = attributes(value)
            m = _PART.fullmatch(_path(a.get("URI", "")))
            if a.get("TYPE") == "PART" and m is not None:
                pl.preload_hint = (int(m.group(1)), int(m.group(2)))
        elif tag == "#EXTINF":
            duration = _float(value.split(",", 1)[0], n)
        elif tag == "#EXT-X-ENDLIST":
            pl.ended = True
        elif not line.startswith("#"):
            if duration is None:
                raise ValueError(f"line {n}: segment URI {line[:60]!r} without #EXTINF")
            path = _path(line)
            m = _SEGMENT.fullmatch(path)
            if m is None or int(m.group(1)) != msn:
                raise ValueError(f"line {n}: segment URI {path[:60]!r} is not {msn}.m4s or .ts")
            pl.segments.append(SegmentRef(msn, path, duration, disc, gap, map_uri, tuple(parts)))
            parts, duration, disc, gap = [], None, False, False
    pl.trailing = parts
    pl.trailing_map = map_uri
    pl.trailing_discontinuity = disc
    return pl


def _int(text: str, n: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"line {n}: {text[:40]!r} is not an integer") from None


def _float(text: str, n: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"line {n}: {text[:40]!r} is not a number") from None
    if not 0 <= value < 1e6:
        raise ValueError(f"line {n}: {text[:40]!r} is out of range")
    return value
