"""Constant output frame rate and a monotonic timeline (pure, no codecs).

:class:`FrameRateConverter` maps decoded frames onto a rung's constant-rate
output grid the way FFmpeg's ``fps`` filter does: a frame takes the grid slot
nearest its timestamp, a second frame for an already-filled slot is dropped,
and empty slots (an input gap, a late frame) repeat the previous picture. It
emits a frame the moment it arrives; only the gap before it is filled late.

:class:`Timeline` keeps the worker's media timeline monotonic when the
publisher's clock jumps (an encoder restart, a reconnect that resets its
timestamps, a wrapped clock): each kind of media continues where it was, so
the output never goes backwards and never leaps ahead.
"""

from __future__ import annotations

import math
from fractions import Fraction

# The broadcast NTSC rates, which float configs only approximate.
_NTSC = (Fraction(24000, 1001), Fraction(30000, 1001), Fraction(60000, 1001))


def exact_rate(fps: float) -> Fraction:
    """``fps`` as an exact fraction (29.97 -> 30000/1001)."""
    if not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"frame rate {fps!r} must be positive")
    for r in _NTSC:
        if abs(fps - float(r)) < 0.005:
            return r
    return Fraction(fps).limit_denominator(1001)


class FrameRateConverter:
    """Slots of a constant-rate grid ``origin + n / fps`` (milliseconds in, slot numbers out)."""

    def __init__(self, fps: Fraction, origin_ms: float, max_fill: int) -> None:
        if fps <= 0:
            raise ValueError(f"frame rate {fps} must be positive")
        self.fps = fps
        self.origin_ms = origin_ms
        # Longest run of repeated pictures across an input gap: beyond it the
        # grid jumps ahead (still monotonic) rather than encode seconds of stills.
        self.max_fill = max_fill
        self.next_slot: int | None = None
        self.duplicated = 0
        self.dropped = 0

    def slot_of(self, pts_ms: float) -> int:
        """Nearest slot; an exact tie goes to the earlier slot (60 -> 30 fps keeps 0, 2, 4...)."""
        x = (Fraction(pts_ms) - Fraction(self.origin_ms)) * self.fps / 1000
        return math.ceil(x - Fraction(1, 2))

    def time_of(self, slot: int) -> Fraction:
        """Slot start in milliseconds."""
        return Fraction(self.origin_ms) + slot * 1000 / self.fps

    def push(self, pts_ms: float) -> tuple[range, int | None]:
        """For one input frame: the slots the *previous* frame must fill, and this frame's slot.

        The slot is None when the frame is dropped (its slot is already taken).
        """
        s = self.slot_of(pts_ms)
        if self.next_slot is None:
            self.next_slot = max(s, 0) + 1
            return range(0), max(s, 0)
        if s < self.next_slot:
            self.dropped += 1
            return range(0), None
        fill = range(self.next_slot, s)
        if len(fill) > self.max_fill:
            fill = range(self.next_slot, self.next_slot + self.max_fill)
        self.duplicated += len(fill)
        self.next_slot = s + 1
        return fill, s


class Timeline:
    """Maps input timestamps (ms) of every kind onto one monotonic output timeline.

    A gap in one kind while another continues is real (a camera that froze): it
    is kept, and the frame rate converter repeats pictures across it. A jump of
    the whole source (every kind far from where it was, or any step backwards)
    is a clock change: the first kind to jump picks a new offset that continues
    right after the latest output, and every other kind adopts the same offset
    when its own jump arrives, so audio and video stay in sync across it.
    """

    def __init__(self, max_gap_ms: int = 5_000, max_backstep_ms: int = 1_000) -> None:
        self.max_gap_ms = max_gap_ms
        self.max_backstep_ms = max_backstep_ms
        self._offset: dict[str, int] = {}
        self._last_in: dict[str, int] = {}
        self._last_out: dict[str, int] = {}
        self._current = 0  # the offset of the latest clock epoch
        self._jump: int | None = None  # size of that epoch's jump, for the other kinds
        self.jumps = 0

    def map(self, kind: str, pts: int, step_ms: int = 1) -> int:
        """``pts`` on the output timeline; ``step_ms`` is about one frame of this kind."""
        last = self._last_in.get(kind)
        if last is None:
            self._offset[kind] = self._current
        else:
            delta = pts - last
            # Measured from the furthest this kind has reached, so small steps back cannot add up.
            reach = pts + self._offset[kind] - self._last_out[kind]
            backwards = reach < -self.max_backstep_ms
            ahead = reach > self.max_gap_ms and all(
                abs(pts - other) > self.max_gap_ms
                for k, other in self._last_in.items()
                if k != kind
            )
            if backwards or ahead:
                if (
                    self._jump is not None
                    and self._offset[kind] != self._current
                    and abs(delta - self._jump) <= self.max_gap_ms
                ):
                    self._offset[kind] = self._current  # the same jump, seen by another kind
                    if pts + self._current < self._last_out[kind] - self.max_backstep_ms:
                        # It was not: continue this kind on its own rather than go back.
                        self._offset[kind] = self._last_out[kind] + step_ms - pts
                else:
                    latest = max(self._last_out.values())
                    self._current = latest + step_ms - pts
                    self._jump = delta
                    self._offset[kind] = self._current
                    self.jumps += 1
        self._last_in[kind] = pts
        out = pts + self._offset[kind]
        self._last_out[kind] = max(out, self._last_out.get(kind, out))
        return out

    def offset(self, kind: str) -> int:
        """The offset :meth:`map` last applied to ``kind`` (for a packet's other timestamp)."""
        return self._offset.get(kind, self._current)
