"""What the transcode stage hands to distribution: packaged media of one rendition.

A worker writes these as it packages each rung (MPEG-TS segments, or an fMP4
init segment followed by CMAF parts and segments); the node's store serves
them as HLS and LL-HLS, and the recorder keeps them. How they travel between
the worker process and the node is :mod:`transcode.protocol`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass


def lead_parts(segment_duration: float, part_duration: float, asked: int) -> int:
    """How many parts lead a run's first segment (``hls.lead_parts``), 0 for no lead:
    the ``asked`` count where there are LL-HLS parts and a segment has more parts than
    the lead, else 0.

    The lead is listed as a media segment of its own, so that players start from parts
    about a second after the publisher; the worker starts the rest with a keyframe, so
    a player that starts there by time alone decodes from its first part. It is off by
    default: Shaka Player (5.2) takes its live edge from the first playlist's longest
    segment, and a lead shorter than the segments after it left that edge behind the
    parts it had fetched (see ``hls.lead_parts`` in nearcast.yml).
    """
    if asked > 0 and 0 < part_duration and segment_duration > (asked + 0.5) * part_duration:
        return asked
    return 0


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
