"""Admission: how much of a profile's ladder a new stream gets (pure).

A class is never the all-or-nothing choice between the whole ladder and the source
alone. Encoded rungs are dropped from the top, the dearest first, until the rest fits
the node's free capacity; 480p and 360p when 720p does not fit. When rungs are left
out, the source itself can be added as a rung (a ``copy`` costs no encode), so that
viewers with the bandwidth still get the top quality. Only when not even the smallest
rung fits does the caller fall back to ``transcode.overflow``.

A ``reserve`` of units is kept free for the classes that come next, where possible: a
stream takes a smaller part of its ladder rather than leave the next class nothing.
It gives the reserve up only when nothing smaller fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from transcode.capacity import ladder_units
from transcode.config import Rendition

SOURCE = Rendition("source", codec="copy")
EPSILON = 1e-9


@dataclass(frozen=True)
class Admission:
    """The rungs a stream gets, what they cost, and each rung left out with its reason."""

    ladder: list[Rendition]
    units: float
    left_out: list[tuple[str, str]]

    @property
    def trimmed(self) -> bool:
        return bool(self.left_out)


def admit(
    ladder: list[Rendition],
    free: float,
    *,
    reserve: float = 0.0,
    add_source: bool = True,
) -> Admission | None:
    """The largest top-trimmed part of ``ladder`` costing at most ``free`` units.

    ``None`` when no encoded rung fits (a ladder of copies always fits). Rungs keep
    their order in ``ladder``.
    """
    encoded = [r for r in ladder if r.codec != "copy"]
    # The dearest rungs go first: by pixel rate, then by their place in the ladder.
    by_cost = sorted(encoded, key=lambda r: (-ladder_units([r]), ladder.index(r)))
    if not encoded:
        return Admission(list(ladder), 0.0, [])
    for keep_free in (reserve, 0.0) if reserve > 0 else (0.0,):
        for dropped in range(len(by_cost)):
            kept = by_cost[dropped:]
            units = ladder_units(kept)
            if units <= free - keep_free + EPSILON:
                return _admission(ladder, by_cost[:dropped], units, free, add_source, keep_free)
    return None


def _admission(
    ladder: list[Rendition],
    dropped: list[Rendition],
    units: float,
    free: float,
    add_source: bool,
    reserve: float = 0.0,
) -> Admission:
    if not dropped:
        return Admission(list(ladder), units, [])
    # With a reserve, say so: otherwise "0.70 were free" reads as room for a 0.59 rung.
    kept_back = (
        f", and {reserve:.2f} stay free for the next class (transcode.admission_reserve)"
        if reserve > 0
        else ""
    )
    left_out = [
        (
            r.name,
            f"{r.name} needs {ladder_units([r]):.2f} transcode units; "
            f"{free:.2f} were free and the rungs kept use {units:.2f}{kept_back}",
        )
        for r in dropped
    ]
    rungs = [r for r in ladder if r not in dropped]
    if add_source and not any(r.codec == "copy" for r in rungs):
        names = {r.name for r in rungs}
        if SOURCE.name not in names:
            rungs.insert(0, SOURCE)
    return Admission(rungs, units, left_out)
