"""Warnings that input can trigger once per frame, logged without flooding the log.

A publisher sending 10,000 bad frames must not write 10,000 lines (STYLE rule 10:
never log inside a per-frame loop). :class:`RateLimitedLog` logs the first
occurrence of each key at once, then at most one line per ``interval`` seconds
for that key, saying how many occurrences it left out. It takes its clock as an
argument, so tests run it without waiting.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

# Keys remembered at once; beyond it the least recently seen key is forgotten (its
# next occurrence is then logged as a first one). Keys are stream names and kinds,
# so this bounds memory whatever a peer sends.
MAX_KEYS = 1024


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        if interval <= 0:
            raise ValueError("a rate-limited log needs an interval greater than zero")
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        # key -> [time of the last line written, occurrences left out since]
        self._state: OrderedDict[object, list[float]] = OrderedDict()

    def log(self, level: int, key: object, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval`` seconds ago;
        returns whether a line was written."""
        now = self._clock()
        state = self._state.get(key)
        if state is not None:
            self._state.move_to_end(key)
            if now - state[0] < self.interval:
                state[1] += 1
                return False
            left_out, since = int(state[1]), now - state[0]
            state[0], state[1] = now, 0
            if left_out:
                msg += " (and %d more like it in the last %.0f s)"
                args = (*args, left_out, since)
        else:
            self._state[key] = [now, 0]
            if len(self._state) > self._max_keys:
                self._state.popitem(last=False)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: object, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def forget(self, key: object) -> None:
        """Drop ``key`` (its stream ended), so its memory goes with it."""
        self._state.pop(key, None)
