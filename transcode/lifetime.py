"""A child process that ends with its parent (Linux ``PR_SET_PDEATHSIG``).

The transcode worker uses it so that a node killed with -9 leaves no worker
running; the node launcher of the tests and benchmarks uses it so that a killed
test leaves no node. The setting survives ``exec``, not a fork.
"""

from __future__ import annotations

import ctypes
import os
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int, parent: int = 0) -> None:
    """Ask the kernel for ``sig`` when this process's parent dies. If ``parent`` (its
    pid, when known) died before this call, the parent is already another process:
    exit at once."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if parent and os.getppid() != parent:
        os._exit(1)
