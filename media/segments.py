"""What the transcode stage hands to distribution: packaged media of one rendition.

A worker writes these as it packages each rung (MPEG-TS segments, or an fMP4
init segment followed by CMAF parts and segments); the node's store serves
them as HLS and LL-HLS, and the recorder keeps them. How they travel between
the worker process and the node is :mod:`transcode.protocol`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass

# LL-HLS start-up: the first segment of every worker run is listed as two media
# segments, a lead of this many parts (about PART-HOLD-BACK) and the rest, so that
# players start from parts about a second after the publisher. The worker starts the
# rest with a keyframe, so a player that starts there by time alone (Shaka) decodes
# from its first part.
LEAD_PARTS = 3


def splits_lead(segment_duration: float, part_duration: float) -> bool:
    """Whether a run's first segment is split into a lead and the rest: LL-HLS parts,
    and a segment with more parts than the lead."""
    return 0 < part_duration and segment_duration > (LEAD_PARTS + 0.5) * part_duration


@dataclass(frozen=True, slots=True)
class SegmentFrame:
    """One finished media segment of one rendition."""

    rendition: str
    index: int  # segment number within this worker run; the store maps it to an MSN
    start: float  # seconds, on the worker's media timeline
    duration: float
    codecs: str
    data: bytes


@dataclass(frozen=True, slots=True)
class InitFrame:
    """The fMP4 initialization segment (``EXT-X-MAP``) of one rendition.

    Sent before the first part or segment of the rendition, and again whenever
    it changes (a restarted worker, new codec parameters).
    """

    rendition: str
    codecs: str
    data: bytes


@dataclass(frozen=True, slots=True)
class PartFrame:
    """One LL-HLS partial segment (``EXT-X-PART``): a moof+mdat of one rendition.

    ``index`` is the segment it belongs to (the same numbering as
    :class:`SegmentFrame`), ``part`` its position within that segment. The
    complete segment follows as a SegmentFrame whose data is the concatenation
    of its parts.
    """

    rendition: str
    index: int
    part: int
    start: float
    duration: float
    independent: bool
    data: bytes
