"""The transcode processes' collector settings: imports frozen, young passes rarer, cycles
still collected."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from transcode import collector

SCRIPT = textwrap.dedent(
    """
    import gc, weakref
    import av  # what a worker has imported before it tunes
    from transcode import collector

    collector.tune()
    print(gc.get_threshold()[0], gc.get_freeze_count() > 1000)

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle: only the collector frees it
    gone = weakref.ref(a)
    del a, b
    junk = [[] for _ in range({n})]  # allocations past the young threshold
    print(gone() is None)
    """
)


def test_tune_freezes_the_imports_and_still_collects_cycles() -> None:
    # In a child: the settings are process-wide, and the test process keeps its own.
    script = SCRIPT.format(n=2 * collector.YOUNG_THRESHOLD)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == [str(collector.YOUNG_THRESHOLD), "True", "True"]
