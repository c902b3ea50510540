"""In-process registry: the embedded default for a single node (LiveKit's LocalRouter).

Methods never await between checking and taking capacity, so on one event
loop a reservation is atomic without locks.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from placement.errors import UnknownNode
from placement.model import Load, Node, NodeState, Session, SessionState, check_node_id, stream_key
from placement.registry import NodeChanges

# The decision log is one more capped list beside the journals (audit, policy).
DECISIONS = "decisions"


class InProcessRegistry:
    name = "memory"

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        self._sessions: dict[str, Session] = {}
        self._streams: dict[str, str] = {}
        self._policies: dict[int, str] = {}
        self._active: int | None = None
        # Capped lists, newest first: the decision log and the journals (JSON).
        self._journals: dict[str, deque[str]] = {}
        # Change log for incremental snapshots: node -> counter value of its last
        # change, kept in change order (oldest first).
        self._epoch = uuid.uuid4().hex
        self._ver = 0
        self._changed: dict[str, int] = {}
        self._removed: dict[str, int] = {}  # node -> counter value of its removal

    def _put(self, node: Node) -> None:
        self._nodes[node.id] = node
        self._ver += 1
        self._changed.pop(node.id, None)
        self._removed.pop(node.id, None)
        self._changed[node.id] = self._ver

    def _expire(self, now: float) -> None:
        for sid in [s.id for s in self._sessions.values() if s.lease_expires < now]:
            self._drop(sid)

    def _drop(self, sid: str) -> Session | None:
        s = self._sessions.pop(sid, None)
        if s is None:
            return None
        node = self._nodes.get(s.node_id)
        if node is not None:
            self._put(
                replace(
                    node,
                    reserved_slots=node.reserved_slots - s.slots,
                    reserved_egress_mbps=node.reserved_egress_mbps - s.egress_mbps,
                )
            )
        key = stream_key(s.tenant, s.stream)
        if self._streams.get(key) == sid:
            del self._streams[key]
        return s

    async def register(self, node: Node, now: float) -> None:
        check_node_id(node.id)  # the same rule as the Redis registry's
        check_node_id(node.region, "region", "a region")
        old = self._nodes.get(node.id)
        self._put(
            replace(
                node,
                state=old.state if old else node.state,
                reserved_slots=old.reserved_slots if old else 0,
                reserved_egress_mbps=old.reserved_egress_mbps if old else 0.0,
                last_heartbeat=now,
            )
        )

    async def heartbeat(self, node_id: str, load: Load, now: float) -> bool:
        node = self._nodes.get(node_id)
        if node is None:
            return False
        self._put(replace(node, load=load, last_heartbeat=now))
        return True

    async def mark_dead(self, node_id: str, silent_since: float, now: float) -> bool:
        node = self._nodes.get(node_id)
        if node is None:
            return False
        self._put(replace(node, last_heartbeat=min(node.last_heartbeat, silent_since)))
        return True

    async def set_state(self, node_id: str, state: NodeState) -> Node:
        node = self._nodes.get(node_id)
        if node is None:
            raise UnknownNode(node_id)
        node = replace(node, state=state)
        self._put(node)
        return node

    async def remove(self, node_id: str) -> bool:
        if self._nodes.pop(node_id, None) is None:
            return False
        self._ver += 1
        self._changed.pop(node_id, None)
        self._removed[node_id] = self._ver
        return True

    async def nodes(self, now: float) -> list[Node]:
        self._expire(now)
        return list(self._nodes.values())

    async def changes(self, now: float, since: Any = None) -> NodeChanges:
        nodes = await self.nodes(now)
        cursor = (self._epoch, self._ver)
        if not isinstance(since, tuple) or since[0] != self._epoch or since[1] > self._ver:
            return NodeChanges(cursor, True, nodes)
        changed: list[Node] = []
        for node_id in reversed(self._changed):
            if self._changed[node_id] <= since[1]:
                break
            changed.append(self._nodes[node_id])
        removed = frozenset(n for n, v in self._removed.items() if v > since[1])
        return NodeChanges(cursor, False, changed[::-1], removed)

    async def reserve(
        self, session: Session, now: float, headroom: float = 1.0, force: bool = False
    ) -> bool:
        self._expire(now)
        node = self._nodes.get(session.node_id)
        if node is None:
            raise UnknownNode(session.node_id)
        if session.id in self._sessions:
            return self._sessions[session.id].node_id == session.node_id
        if not force:
            if node.state is not NodeState.READY:
                return False
            if node.reserved_slots + session.slots > node.capacity.slots * headroom:
                return False
            egress = node.reserved_egress_mbps + session.egress_mbps
            if egress > node.capacity.egress_mbps * headroom + 1e-9:
                return False
        self._put(
            replace(
                node,
                reserved_slots=node.reserved_slots + session.slots,
                reserved_egress_mbps=node.reserved_egress_mbps + session.egress_mbps,
            )
        )
        self._sessions[session.id] = session
        self._streams[stream_key(session.tenant, session.stream)] = session.id
        return True

    async def release(self, session_id: str, now: float) -> Session | None:
        self._expire(now)
        return self._drop(session_id)

    async def get_session(self, session_id: str, now: float) -> Session | None:
        self._expire(now)
        return self._sessions.get(session_id)

    async def stream_session(self, tenant: str, stream: str, now: float) -> Session | None:
        self._expire(now)
        sid = self._streams.get(stream_key(tenant, stream))
        return self._sessions.get(sid) if sid else None

    async def sessions(self, now: float) -> list[Session]:
        self._expire(now)
        return sorted(self._sessions.values(), key=lambda s: s.id)

    async def renew(
        self, node_id: str, session_ids: Sequence[str], now: float, lease_s: float
    ) -> list[str]:
        self._expire(now)
        missing: list[str] = []
        for sid in session_ids:
            s = self._sessions.get(sid)
            if s is None or s.node_id != node_id:
                missing.append(sid)
                continue
            self._sessions[sid] = replace(s, lease_expires=now + lease_s, state=SessionState.LIVE)
        return missing

    async def move(self, session: Session, target: Session, now: float) -> bool:
        self._expire(now)
        node = self._nodes.get(target.node_id)
        if node is None:
            raise UnknownNode(target.node_id)
        old = self._drop(session.id)
        ok = await self.reserve(target, now)
        if not ok and old is not None:
            await self.reserve(old, now, force=True)
        return ok

    async def policies(self) -> dict[int, str]:
        return dict(self._policies)

    async def store_policy(self, version: int, text: str, activate: bool) -> None:
        self._policies[version] = text
        if activate:
            self._active = version

    async def active_policy_version(self) -> int | None:
        return self._active

    async def log_decisions(self, entries: Sequence[dict[str, Any]], keep: int) -> None:
        await self.append_journal(DECISIONS, entries, keep)

    async def recent_decisions(self, limit: int) -> list[dict[str, Any]]:
        return await self.journal(DECISIONS, limit)

    async def append_journal(self, name: str, entries: Sequence[dict[str, Any]], keep: int) -> None:
        log = self._journals.setdefault(name, deque())
        for e in entries:
            log.appendleft(json.dumps(e))
        while len(log) > keep:
            log.pop()

    async def journal(self, name: str, limit: int) -> list[dict[str, Any]]:
        return [json.loads(e) for e in list(self._journals.get(name, ()))[:limit]]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
