"""The fleet snapshots one service instance keeps: to decide on, and to replay.

The current snapshot, the last ``SNAPSHOT_HISTORY`` taken, and beyond those the
last ``replay_snapshots`` that logged decisions were made on. They live in this
instance's memory only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from placement.errors import InvalidField
from placement.model import FleetSnapshot

SNAPSHOT_HISTORY = 16


@dataclass(frozen=True)
class RefreshStats:
    """What the last snapshot refresh read: the fleet (full) or only what changed."""

    full: bool
    read: int
    removed: int
    nodes: int


class SnapshotHistory:
    def __init__(self, replay_snapshots: int) -> None:
        self.replay_snapshots = replay_snapshots
        self.current: FleetSnapshot | None = None
        self._history: OrderedDict[str, FleetSnapshot] = OrderedDict()
        # Beyond the last few: snapshots that logged decisions were made on.
        self._kept: OrderedDict[str, FleetSnapshot] = OrderedDict()
        self._decided_on: set[str] = set()

    def install(self, snap: FleetSnapshot) -> None:
        self.current = snap
        self._history[snap.id] = snap
        while len(self._history) > SNAPSHOT_HISTORY:
            old_id, old = self._history.popitem(last=False)
            # A snapshot that a logged decision used is kept longer, for replay.
            if old_id in self._decided_on:
                self._decided_on.discard(old_id)
                self._kept[old_id] = old
                while len(self._kept) > self.replay_snapshots:
                    self._kept.popitem(last=False)

    def decided_on(self, snapshot_id: str) -> None:
        """A logged decision used this snapshot: keep it past the last few."""
        if snapshot_id in self._history:
            self._decided_on.add(snapshot_id)

    def retained(self, snapshot_id: Any) -> FleetSnapshot:
        """The snapshot a logged decision names; InvalidField once it is dropped."""
        sid = str(snapshot_id)
        snap = self._history.get(sid) or self._kept.get(sid)
        if snap is None:
            raise InvalidField(
                "snapshot",
                f"{snapshot_id!r} is no longer retained: the last "
                f"{SNAPSHOT_HISTORY} snapshots and the last "
                f"{self.replay_snapshots} older ones that decisions were made on "
                "are kept, in the memory of the instance that took them",
            )
        return snap
