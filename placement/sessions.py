"""Sessions as one service instance knows them, beside the registry.

A bounded cache of the sessions it placed or restored (answers while the
registry is away, and restores sessions a registry lost), the reservations it
made against its snapshot while degraded, written back when the registry
returns, and what was reserved since the current snapshot was taken.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from placement.errors import UnknownNode
from placement.model import Node, NodeState, Session, stream_key
from placement.registry import Registry

SESSION_CACHE = 100_000


class LocalSessions:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        # Reservations made since the current snapshot was taken (node -> slots, egress):
        # later decisions see them without rebuilding the snapshot.
        self.usage: dict[str, tuple[int, float]] = {}
        # The same reservations in the order made, numbered: a refresh that began reading
        # the registry before some of them keeps them (see ``mark``).
        self._used: list[tuple[int, str, int, float]] = []
        self._used_n = 0
        self._known: OrderedDict[str, Session] = OrderedDict()
        # tenant/stream -> the id of its session remembered last (see ``latest``).
        self._latest: dict[str, str] = {}
        self._pending: dict[str, Session] = {}
        self._pending_release: set[str] = set()
        # Sessions the registry lost (an empty Redis came back) whose node has not
        # registered again yet: written back on each refresh until it has.
        self._lost: set[str] = set()

    @property
    def unwritten(self) -> bool:
        """Reservations or releases made while degraded, or sessions the registry lost,
        wait for the registry."""
        return bool(self._pending or self._pending_release or self._lost)

    def mark(self) -> int:
        """Where the reservations stand as a refresh starts reading the registry."""
        return self._used_n

    def new_snapshot(self, mark: int | None = None) -> None:
        """A snapshot was taken: it holds the reservations made before its read began
        (``mark``; None: all of them). Those made while it was read stay counted here,
        or the next decision would see their capacity free for a snapshot interval (and
        lose a reservation round trip on it). One the read already saw is then counted
        twice until the next refresh: on the safe side."""
        self._used = [u for u in self._used if mark is not None and u[0] > mark]
        self.usage = {}
        for _, node, slots, egress in self._used:
            had_slots, had_egress = self.usage.get(node, (0, 0.0))
            self.usage[node] = (had_slots + slots, had_egress + egress)

    def get(self, session_id: str) -> Session | None:
        return self._known.get(session_id)

    def find(self, tenant: str, stream: str, now: float) -> Session | None:
        """The newest unexpired session of a stream."""
        return next(
            (
                s
                for s in reversed(self._known.values())
                if s.tenant == tenant and s.stream == stream and s.lease_expires >= now
            ),
            None,
        )

    def latest(self, tenant: str, stream: str, now: float) -> Session | None:
        """The stream's session remembered last, unless its lease ran out: one lookup,
        where ``find`` may walk the whole cache."""
        sid = self._latest.get(stream_key(tenant, stream))
        s = self._known.get(sid) if sid is not None else None
        return s if s is not None and s.lease_expires >= now else None

    def remember(self, s: Session) -> None:
        self._known[s.id] = s
        self._known.move_to_end(s.id)
        self._latest[stream_key(s.tenant, s.stream)] = s.id
        while len(self._known) > SESSION_CACHE:
            self._unindex(self._known.popitem(last=False)[1])

    def _unindex(self, s: Session) -> None:
        key = stream_key(s.tenant, s.stream)
        if self._latest.get(key) == s.id:
            del self._latest[key]

    def forget(self, session_id: str) -> Session | None:
        cached = self._known.pop(session_id, None)
        self._pending.pop(session_id, None)
        if cached is not None:
            self._unindex(cached)
        return cached

    def release_later(self, session_id: str) -> None:
        self._pending_release.add(session_id)

    def use(self, s: Session) -> None:
        slots, egress = self.usage.get(s.node_id, (0, 0.0))
        self.usage[s.node_id] = (slots + s.slots, egress + s.egress_mbps)
        self._used_n += 1
        self._used.append((self._used_n, s.node_id, s.slots, s.egress_mbps))

    def reserve_locally(self, s: Session, node: Node, headroom: float) -> bool:
        """Conservative reservation against the snapshot while the registry is away."""
        slots, egress = self.usage.get(node.id, (0, 0.0))
        if node.state is not NodeState.READY or node.free_slots(headroom) - slots < s.slots:
            return False
        if node.free_egress(headroom) - egress < s.egress_mbps:
            return False
        s = replace(s, degraded=True)
        self.use(s)
        self._pending[s.id] = s
        self.remember(s)
        return True

    async def write_back(self, now: float, check_lost: bool = True) -> None:
        """Write what was decided while degraded to the registry; with ``check_lost``,
        also every session known here that the registry lost, else only those still
        waiting for their node to register again."""
        for sid in list(self._pending_release):
            await self.registry.release(sid, now)
            self._pending_release.discard(sid)
        for sid, s in list(self._pending.items()):
            if s.lease_expires < now:
                del self._pending[sid]
                continue
            try:
                await self.registry.reserve(replace(s, degraded=False), now, force=True)
            except UnknownNode:
                continue  # the node has not re-registered yet; next refresh
            del self._pending[sid]
            self.remember(replace(s, degraded=False))
        # Sessions lost with the registry (e.g. a restarted Redis without persistence).
        # Their nodes register again on their next beat, after this refresh perhaps:
        # those not yet back are tried again on the next refreshes.
        lost = list(self._known) if check_lost else list(self._lost)
        for sid in lost:
            known = self._known.get(sid)
            if known is None or known.lease_expires < now or sid in self._pending:
                self._lost.discard(sid)
                continue
            if await self.registry.get_session(sid, now) is None:
                try:
                    await self.registry.reserve(known, now, force=True)
                except UnknownNode:
                    self._lost.add(sid)
                    continue
            self._lost.discard(sid)
