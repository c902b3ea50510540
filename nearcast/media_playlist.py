"""A reader for HLS media playlists: the tags a player needs, parsed from the wire format.

Pure: text in, :class:`MediaPlaylist` out, no I/O (RFC 8216bis, low-latency
parts and blocking reload included; delta playlists are refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Part:
    msn: int
    index: int
    uri: str
    duration: float
    independent: bool
    byterange: tuple[int, int] | None = None  # (length, offset)


@dataclass
class Segment:
    msn: int
    uri: str
    duration: float
    parts: list[Part]


@dataclass
class MediaPlaylist:
    target: float = 6.0
    sequence: int = 0
    segments: list[Segment] = field(default_factory=list)
    trailing: list[Part] = field(default_factory=list)  # parts of the segment being built
    map_uri: str | None = None
    part_target: float = 0.0
    can_block: bool = False
    hold_back: float = 0.0
    part_hold_back: float = 0.0
    ended: bool = False

    @property
    def next_msn(self) -> int:
        return self.sequence + len(self.segments)

    def parts(self) -> list[Part]:
        return [p for s in self.segments for p in s.parts] + self.trailing

    def segment(self, msn: int) -> Segment | None:
        i = msn - self.sequence
        return self.segments[i] if 0 <= i < len(self.segments) else None

    def parts_of(self, msn: int) -> list[Part]:
        seg = self.segment(msn)
        if seg is not None:
            return seg.parts
        return self.trailing if msn == self.next_msn else []


def parse_attrs(text: str) -> dict[str, str]:
    """A tag's attribute list (RFC 8216bis §4.2) as a dict, quotes removed."""
    out: dict[str, str] = {}
    i = 0
    while i < len(text):
        eq = text.find("=", i)
        if eq < 0:
            break
        name = text[i:eq].strip().lstrip(",")
        if text[eq + 1 : eq + 2] == '"':
            end = text.index('"', eq + 2)
            out[name] = text[eq + 2 : end]
            i = end + 2
        else:
            end = text.find(",", eq)
            end = len(text) if end < 0 else end
            out[name] = text[eq + 1 : end]
            i = end + 1
    return out


def _byterange(value: str | None, last_end: int) -> tuple[int, int] | None:
    if not value:
        return None
    length, _, offset = value.partition("@")
    return int(length), int(offset) if offset else last_end


def parse_media_playlist(text: str) -> MediaPlaylist:
    """The parts of an RFC 8216bis media playlist a player needs (wire-format parser)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise ValueError("playlist does not start with #EXTM3U")
    pl = MediaPlaylist()
    pending: list[Part] = []
    duration: float | None = None
    range_end = 0
    for line in lines[1:]:
        if line.startswith("#EXT-X-TARGETDURATION:"):
            pl.target = float(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            pl.sequence = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MAP:"):
            pl.map_uri = parse_attrs(line.split(":", 1)[1]).get("URI")
        elif line.startswith("#EXT-X-PART-INF:"):
            pl.part_target = float(parse_attrs(line.split(":", 1)[1]).get("PART-TARGET", 0))
        elif line.startswith("#EXT-X-SERVER-CONTROL:"):
            a = parse_attrs(line.split(":", 1)[1])
            pl.can_block = a.get("CAN-BLOCK-RELOAD") == "YES"
            pl.hold_back = float(a.get("HOLD-BACK", 0))
            pl.part_hold_back = float(a.get("PART-HOLD-BACK", 0))
        elif line.startswith("#EXT-X-PART:"):
            a = parse_attrs(line.split(":", 1)[1])
            br = _byterange(a.get("BYTERANGE"), range_end)
            if br:
                range_end = br[0] + br[1]
            msn = pl.sequence + len(pl.segments)
            pending.append(
                Part(
                    msn,
                    len(pending),
                    a["URI"],
                    float(a["DURATION"]),
                    a.get("INDEPENDENT") == "YES",
                    br,
                )
            )
        elif line.startswith("#EXTINF:"):
            duration = float(line.split(":", 1)[1].split(",")[0])
        elif line == "#EXT-X-ENDLIST":
            pl.ended = True
        elif line.startswith("#EXT-X-SKIP:"):
            raise ValueError("delta playlists (EXT-X-SKIP) are not requested by this client")
        elif not line.startswith("#"):
            msn = pl.sequence + len(pl.segments)
            pl.segments.append(Segment(msn, line, duration or 0.0, pending))
            pending, duration, range_end = [], None, 0
    pl.trailing = pending
    return pl
