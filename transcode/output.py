"""The worker's one writer to the node: framed bytes on stdout.

Every rung thread, the Opus tap and the decode loop write through the same
:class:`Output`; a lock keeps each frame whole.
"""

from __future__ import annotations

import threading
from typing import BinaryIO


class Output:
    """Thread-safe framed writer to the node."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._fh.write(data)
            self._fh.flush()
