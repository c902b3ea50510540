"""The garbage collector's settings for a process that transcodes.

A transcode allocates a handful of container objects per packet and per picture
(PyAV packets and frames, queue entries, fractions). Reference counting frees
nearly all of them at once, but CPython's cyclic collector counts allocations,
not garbage: at its default threshold (700) it runs a young-generation pass every
few pictures and, now and then, a full pass over every object the imports left
behind (PyAV, NumPy, the configuration models). ``python -m bench.transcode``
measured that as about 4 % of a ladder's CPU.

:func:`tune` moves what exists at start-up out of the collector's reach (it lives
as long as the process anyway) and runs the young pass 70 times less often.
Cycles are still collected, a few tens of thousands of allocations later.
"""

from __future__ import annotations

import gc

# Allocations between young-generation passes (CPython's default is 700).
YOUNG_THRESHOLD = 50_000


def tune() -> None:
    """Freeze the objects that exist now and raise the young generation's threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
