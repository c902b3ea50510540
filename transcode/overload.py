"""Graceful overload: the policy that steps a live stream down when its worker
falls behind real time, and back up once it has been calm for a while.

The lag is how long after the node received a frame the slowest running rung
encoded it. Each step is one of :data:`DEGRADE_STEPS`, taken in order; the
controller only sets each :class:`~transcode.rungs.RungEncoder`'s knobs
(``preset_override``, ``suspended``, ``stride``, ``catch_up``), and the rung
applies them on its own thread.
"""

from __future__ import annotations

import logging
import time

from transcode.output import Output
from transcode.protocol import FrameType, encode_json
from transcode.rungs import RungEncoder
from transcode.spec import Spec

# One logger name for the whole worker process, whichever module logs.
log = logging.getLogger("transcode.worker")

# Overload steps, in the order they are taken (issue: graceful overload).
DEGRADE_STEPS = ("faster_preset", "drop_top_rung", "drop_frames")


class OverloadController:
    """The degradation level of one stream (0 = none, up to ``len(DEGRADE_STEPS)``)."""

    def __init__(self, spec: Spec, out: Output) -> None:
        self.spec = spec
        self.out = out
        self.level = 0
        self._last_control = time.monotonic()
        self._level_changed = 0.0
        self._calm_since: float | None = None

    def poll(self, now: float, encoders: list[RungEncoder]) -> None:
        """After every packet: at most every 0.5 s, and only for a live stream."""
        if self.spec.live and now - self._last_control >= 0.5:
            self._last_control = now
            self._control(now, encoders)

    def lag(self, encoders: list[RungEncoder]) -> float:
        return max((r.lag for r in encoders if not r.suspended), default=0.0)

    def catching_up(self, encoders: list[RungEncoder]) -> bool:
        return self.spec.live and self.level >= 3 and self.lag(encoders) > 3 * self.spec.degrade_lag

    def _control(self, now: float, encoders: list[RungEncoder]) -> None:
        """Step down when behind real time, back up when calm (logged, counted by the node)."""
        if not encoders:
            return
        lag = self.lag(encoders)
        limit = self.spec.degrade_lag
        if lag > limit:
            self._calm_since = None
            if self.level < 3 and now - self._level_changed >= 2.0:
                self._set_level(self.level + 1, lag, now, encoders)
        elif lag < limit / 2:
            if self._calm_since is None:
                self._calm_since = now
            elif self.level > 0 and now - self._calm_since >= self.spec.recover_after:
                self._set_level(self.level - 1, lag, now, encoders)
                self._calm_since = now
        else:
            self._calm_since = None

    def _set_level(self, level: int, lag: float, now: float, encoders: list[RungEncoder]) -> None:
        up = level > self.level
        step = DEGRADE_STEPS[max(level, self.level) - 1]
        log.warning(
            "[%s] %s %s (lag %.2f s)",
            self.spec.stream,
            "degrading:" if up else "recovering:",
            step,
            lag,
        )
        self.level = level
        self._level_changed = now
        for r in encoders:
            r.preset_override = "ultrafast" if level >= 1 else None
        if len(encoders) > 1:
            top = max(encoders, key=lambda r: r.rung.width * r.rung.height)
            top.suspended = level >= 2
        for r in encoders:
            r.stride = 2 if level >= 3 else 1
        self.out.write(
            encode_json(
                FrameType.STATS,
                {"degradation": {"level": level, "step": step, "up": up, "lag": lag}},
            )
        )
