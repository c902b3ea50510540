"""Where the fleet, sessions, policies and the decision log live.

Two backends with one behaviour (the same test suite runs against both):
:class:`~placement.registry.memory.InProcessRegistry` for a single node that
registers itself, and :class:`~placement.registry.redis.RedisRegistry` for a
fleet. Every method takes ``now`` explicitly so behaviour is testable without
sleeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from placement.model import Load, Node, NodeState, Session


@dataclass(frozen=True)
class NodeChanges:
    """What changed in the fleet since a cursor (an incremental snapshot read).

    ``full``: ``nodes`` is the whole fleet (first read, or the registry lost the
    history the cursor refers to). Otherwise ``nodes`` holds only the nodes added
    or changed since the cursor and ``removed`` the ids that are gone. ``cursor``
    is opaque; pass it back as ``since`` on the next call.
    """

    cursor: Any
    full: bool
    nodes: list[Node]
    removed: frozenset[str] = frozenset()


class Registry(Protocol):
    name: str

    async def register(self, node: Node, now: float) -> None:
        """Upsert a node's descriptor and full stats; keeps an operator-set state."""

    async def heartbeat(self, node_id: str, load: Load, now: float) -> bool:
        """Record liveness; ``False`` means the node is unknown and must re-register."""

    async def mark_dead(self, node_id: str, silent_since: float, now: float) -> bool:
        """A probe found the node dead: its last beat is set back to ``silent_since``
        (a TTL ago: it gets no placement or route at once, and its sessions move after
        the autonomy window as for any stale node), never later than its real one; its
        next beat clears it. ``False`` when the node is unknown."""

    async def set_state(self, node_id: str, state: NodeState) -> Node:
        """Drain, cordon or uncordon; raises UnknownNode."""

    async def remove(self, node_id: str) -> bool:
        """Forget a node (decommission); ``False`` when it is unknown.

        Sessions still on it are the caller's concern; a beat from it afterwards
        answers unknown, so a live node registers again.
        """

    async def nodes(self, now: float) -> list[Node]:
        """Every node with its reservations (expired leases already returned)."""

    async def changes(self, now: float, since: Any = None) -> NodeChanges:
        """Nodes changed since ``since`` (a previous cursor; ``None``: everything).

        Expired leases are returned first, as for :meth:`nodes`; unchanged nodes are
        not read, so a refresh costs what changed, not the fleet size.
        """

    async def reserve(
        self, session: Session, now: float, headroom: float = 1.0, force: bool = False
    ) -> bool:
        """Atomically check capacity, take it and write session -> node with a lease.

        ``force`` records a session that already runs (reconciliation) even if
        the node looks full. Raises UnknownNode if the node is not registered.
        """

    async def release(self, session_id: str, now: float) -> Session | None: ...

    async def get_session(self, session_id: str, now: float) -> Session | None: ...

    async def stream_session(self, tenant: str, stream: str, now: float) -> Session | None: ...

    async def sessions(self, now: float) -> list[Session]: ...

    async def renew(
        self, node_id: str, session_ids: Sequence[str], now: float, lease_s: float
    ) -> list[str]:
        """Extend leases of sessions live on ``node_id``; returns the ids it does not hold."""

    async def move(self, session: Session, target: Session, now: float) -> bool:
        """Reserve ``target`` (same id, new node), then free ``session``'s node."""

    async def policies(self) -> dict[int, str]:
        """Stored policy YAML by version."""

    async def store_policy(self, version: int, text: str, activate: bool) -> None: ...

    async def active_policy_version(self) -> int | None: ...

    async def log_decisions(self, entries: Sequence[dict[str, Any]], keep: int) -> None: ...

    async def recent_decisions(self, limit: int) -> list[dict[str, Any]]: ...

    async def append_journal(self, name: str, entries: Sequence[dict[str, Any]], keep: int) -> None:
        """Add ``entries`` (oldest first) to the journal ``name`` (the audit log, the
        policy activations), keeping its newest ``keep``."""

    async def journal(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` entries of the journal ``name``, newest first."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
