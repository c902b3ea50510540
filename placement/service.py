"""The placement service: the pure core wired to a registry, a clock and metrics.

Snapshots are refreshed in the background; each request decides on the
current snapshot and then reserves atomically in the registry, trying the next
ranked candidate if a concurrent request took the capacity first. When the
registry is unreachable the service answers from its last snapshot (at most
``snapshot_max_age`` old), marks answers degraded and reserves conservatively;
when it returns, locally made reservations are written back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from placement import core
from placement.config import PlacementConfig
from placement.errors import (
    InvalidField,
    NoCapacity,
    NodeBusy,
    PolicyConflict,
    RegistryUnavailable,
    SnapshotTooOld,
    UnknownNode,
    UnknownSession,
    UnknownStream,
    UnknownTenant,
)
from placement.geo import GeoResolver
from placement.liveness import is_orphaned, is_stale, pool_health, sessions_to_migrate
from placement.metrics import PlacementMetrics
from placement.model import (
    FleetSnapshot,
    Load,
    Location,
    Node,
    NodeState,
    PlacementRequest,
    Session,
    Tier,
)
from placement.policy import DEFAULT_POLICY, Policy, load_policy_file, parse_policy_yaml
from placement.registry import Registry

log = logging.getLogger(__name__)

MAX_TRIES = 8
SNAPSHOT_HISTORY = 16
SESSION_CACHE = 100_000
NODE_COUNT_INTERVAL = 5.0  # seconds between placement_nodes{tier,state} recounts


@dataclass(frozen=True)
class RefreshStats:
    """What the last snapshot refresh read: the fleet (full) or only what changed."""

    full: bool
    read: int
    removed: int
    nodes: int


@dataclass(frozen=True)
class Placed:
    session: Session
    decision: core.Decision
    degraded: bool


class PlacementService:
    def __init__(
        self,
        config: PlacementConfig,
        registry: Registry,
        *,
        geo: GeoResolver | None = None,
        metrics: PlacementMetrics | None = None,
        clock: Callable[[], float] = time.time,
        policy: Policy | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.geo = geo or GeoResolver.from_paths(config.geo.cidr_csv, config.geo.mmdb)
        self.metrics = metrics or PlacementMetrics()
        self.clock = clock
        self.instance = uuid.uuid4().hex[:6]
        self.degraded = False
        self.degraded_since: float | None = None
        self.frozen_pools: set[str] = set()
        self.frozen_nodes: frozenset[str] = frozenset()
        # Beats that reached this instance since its last good refresh (node -> when),
        # and how many came while degraded: see ``_silent``.
        self._beats: dict[str, float] = {}
        self._degraded_beats = 0
        self._silent_cache: tuple[str, int, frozenset[str]] | None = None
        self._initial_policy = policy
        self._policy = policy or DEFAULT_POLICY
        self._versions: dict[int, Policy] = {}
        self._snapshot: FleetSnapshot | None = None
        self._history: OrderedDict[str, FleetSnapshot] = OrderedDict()
        # Beyond the last few: snapshots that logged decisions were made on.
        self._kept: OrderedDict[str, FleetSnapshot] = OrderedDict()
        self._decided_on: set[str] = set()
        self._gen = 0
        self._refreshing: asyncio.Future[FleetSnapshot] | None = None
        self._cursor: Any = None
        self._counted_at = float("-inf")
        self.last_refresh = RefreshStats(full=True, read=0, removed=0, nodes=0)
        # Reservations made since the current snapshot was taken (node -> slots, egress):
        # later decisions see them without rebuilding the snapshot.
        self._usage: dict[str, tuple[int, float]] = {}
        self._known: OrderedDict[str, Session] = OrderedDict()
        self._pending: dict[str, Session] = {}
        self._pending_release: set[str] = set()
        self._log_buffer: list[dict[str, Any]] = []
        self._recent: deque[dict[str, Any]] = deque(maxlen=max(1, config.decision_log_size))
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._stopping = False

    # ----- lifecycle

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def ttl(self) -> float:
        return self.config.liveness.ttl

    async def start(self, background: bool = True) -> None:
        if self._started:
            return
        self._started = True
        self._stopping = False
        await self._load_policy()
        with contextlib.suppress(SnapshotTooOld):
            await self.refresh()
        if background:
            self._tasks = [
                asyncio.create_task(self._loop(self.config.snapshot_interval, self._tick)),
            ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        self._stopping = True
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        with contextlib.suppress(RegistryUnavailable):
            await self._flush_log()
        self._started = False

    async def _loop(self, interval: float, step: Callable[[], Any]) -> None:
        # The flag, not only the cancellation, ends the loop: a client library that
        # turns a cancellation during I/O into its own error must not keep it alive.
        while not self._stopping:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except SnapshotTooOld:
                pass
            except Exception:
                if self._stopping:
                    break
                log.exception("placement background step failed")
            await asyncio.sleep(interval)

    async def _tick(self) -> None:
        await self.refresh()
        await self.reconcile()

    async def _load_policy(self) -> None:
        initial = self._initial_policy
        if initial is None and self.config.policy_file:
            initial = load_policy_file(self.config.policy_file)
        try:
            stored = await self.registry.policies()
            self._versions = {v: parse_policy_yaml(t) for v, t in stored.items()}
            active = await self.registry.active_policy_version()
            if active is not None and active in self._versions:
                self._policy = self._versions[active]
                return
            self._policy = initial or DEFAULT_POLICY
            self._versions[self._policy.version] = self._policy
            await self.registry.store_policy(
                self._policy.version, self._policy.to_yaml(), activate=True
            )
        except RegistryUnavailable:
            self._policy = initial or DEFAULT_POLICY
            self._versions[self._policy.version] = self._policy

    # ----- snapshots and degraded mode

    def _set_degraded(self, on: bool, now: float) -> None:
        if on == self.degraded:
            return
        self.degraded = on
        self.degraded_since = now if on else None
        self._degraded_beats = 0
        self._silent_cache = None
        self.metrics.degraded.set(1 if on else 0)
        if on:
            log.warning("registry unreachable: answering from the last snapshot (degraded)")
        else:
            log.info("registry reachable again: leaving degraded mode")

    async def refresh(self) -> FleetSnapshot:
        """Take a new snapshot; concurrent callers share one fetch."""
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        fut: asyncio.Future[FleetSnapshot] = asyncio.get_running_loop().create_future()
        self._refreshing = fut
        try:
            snap = await self._refresh()
            fut.set_result(snap)
            return snap
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._refreshing = None

    async def _refresh(self) -> FleetSnapshot:
        now = self.clock()
        prev = self._snapshot
        try:
            # Incremental: only nodes changed since the last snapshot are read.
            changes = await self.registry.changes(now, self._cursor if prev else None)
            await self._sync_policy()
        except RegistryUnavailable:
            self._set_degraded(True, now)
            return self._usable_snapshot(now)
        was_degraded = self.degraded
        self._set_degraded(False, now)
        self._beats.clear()  # the registry has them now
        self._gen += 1
        sid = f"{self.instance}-{self._gen}"
        if changes.full or prev is None:
            snap = FleetSnapshot.build(changes.nodes, sid, now)
        else:
            snap = prev.update(changes.nodes, changes.removed, sid, now)
        self._cursor = changes.cursor
        self.last_refresh = RefreshStats(
            full=changes.full or prev is None,
            read=len(changes.nodes),
            removed=len(changes.removed),
            nodes=len(snap.nodes),
        )
        self._install(snap)
        if now - self._counted_at >= NODE_COUNT_INTERVAL or self.last_refresh.full:
            # Counting walks the whole fleet: at most every few seconds (a scrape
            # interval), not on every incremental refresh.
            self._counted_at = now
            self._count_nodes(snap, now)
        try:
            if was_degraded or self._pending or self._pending_release:
                await self._write_back(now)
            await self._flush_log()
        except RegistryUnavailable:
            self._set_degraded(True, now)
        return snap

    def _install(self, snap: FleetSnapshot) -> None:
        self._snapshot = snap
        self._usage = {}
        self._history[snap.id] = snap
        while len(self._history) > SNAPSHOT_HISTORY:
            old_id, old = self._history.popitem(last=False)
            # A snapshot that a logged decision used is kept longer, for replay.
            if old_id in self._decided_on:
                self._decided_on.discard(old_id)
                self._kept[old_id] = old
                while len(self._kept) > self.config.replay_snapshots:
                    self._kept.popitem(last=False)

    def _usable_snapshot(self, now: float) -> FleetSnapshot:
        snap = self._snapshot
        if snap is None or now - snap.taken_at > self.config.snapshot_max_age:
            raise SnapshotTooOld(
                "registry unreachable and no snapshot younger than "
                f"{self.config.snapshot_max_age:g} s ('snapshot_max_age')"
            )
        return snap

    async def snapshot(self) -> FleetSnapshot:
        now = self.clock()
        snap = self._snapshot
        stale = snap is None or now - snap.taken_at > self.config.snapshot_interval
        if stale and (not self._tasks or snap is None or self.degraded):
            return await self.refresh()
        if snap is None:
            return await self.refresh()
        if self.degraded:
            return self._usable_snapshot(now)
        return snap

    def _count_nodes(self, snap: FleetSnapshot, now: float) -> None:
        counts: dict[tuple[str, str], int] = {}
        for n in snap.nodes.values():
            state = "stale" if is_stale(n, now, self.ttl) else n.state.value
            counts[(n.tier.value, state)] = counts.get((n.tier.value, state), 0) + 1
        for tier in Tier:
            for state in [*(s.value for s in NodeState), "stale"]:
                self.metrics.nodes.labels(tier.value, state).set(counts.get((tier.value, state), 0))

    def _silent(self, snap: FleetSnapshot, now: float) -> frozenset[str]:
        """While degraded: nodes that have not beaten here for a TTL, once beats arrive.

        With the registry down, beats cannot reach the snapshot, so liveness is judged
        as of the moment the snapshot was taken (``_ttl_for``). But once nodes' beats
        reach this instance, silence is evidence again: a node quiet for a TTL gets no
        new session, as when the registry is up. A node whose beats go to another
        instance looks silent here too, which errs on the safe side, as degraded
        placement should. Recomputed at most every 0.1 s.
        """
        if not self.degraded or self._degraded_beats == 0:
            return frozenset()
        tick = int(now * 10)
        cached = self._silent_cache
        if cached is not None and cached[0] == snap.id and cached[1] == tick:
            return cached[2]
        cutoff, beats = now - self.ttl, self._beats
        silent = frozenset(
            n.id
            for n in snap.nodes.values()
            if max(n.last_heartbeat, beats.get(n.id, n.last_heartbeat)) < cutoff
        )
        self._silent_cache = (snap.id, tick, silent)
        return silent

    def _ttl_for(self, snap: FleetSnapshot, now: float) -> float:
        # In degraded mode heartbeats cannot reach the snapshot; judge liveness as of
        # the moment it was taken rather than declaring the whole fleet dead.
        return self.ttl + (now - snap.taken_at if self.degraded else 0.0)

    async def _write_back(self, now: float) -> None:
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
            self._remember(replace(s, degraded=False))
        # Sessions lost with the registry (e.g. a restarted Redis without persistence).
        for sid, s in list(self._known.items()):
            if s.lease_expires < now or sid in self._pending:
                continue
            if await self.registry.get_session(sid, now) is None:
                with contextlib.suppress(UnknownNode):
                    await self.registry.reserve(s, now, force=True)

    def _remember(self, s: Session) -> None:
        self._known[s.id] = s
        self._known.move_to_end(s.id)
        while len(self._known) > SESSION_CACHE:
            self._known.popitem(last=False)

    # ----- policy

    async def _sync_policy(self) -> None:
        active = await self.registry.active_policy_version()
        if active is None or active == self._policy.version:
            return
        if active not in self._versions:
            stored = await self.registry.policies()
            if active not in stored:
                return
            self._versions[active] = parse_policy_yaml(stored[active])
        log.info("policy %s -> %s", self._policy.label, self._versions[active].label)
        self._policy = self._versions[active]

    async def put_policy(self, policy: Policy) -> Policy:
        """Activate ``policy``: a new higher version, or an earlier one unchanged (rollback)."""
        stored = await self.registry.policies()
        for v, text in stored.items():
            self._versions.setdefault(v, parse_policy_yaml(text))
        existing = self._versions.get(policy.version)
        if existing is not None and existing.digest() != policy.digest():
            raise PolicyConflict(policy.version)
        latest = max(self._versions, default=0)
        if existing is None and policy.version <= latest:
            raise InvalidField(
                "version",
                f"must be greater than {latest} (the latest) or equal an earlier "
                "version, unchanged, to roll back",
            )
        await self.registry.store_policy(policy.version, policy.to_yaml(), activate=True)
        self._versions[policy.version] = policy
        log.info("policy %s -> %s", self._policy.label, policy.label)
        self._policy = policy
        return policy

    def policy_versions(self) -> list[int]:
        return sorted(self._versions)

    async def dry_run(self, candidate: Policy, limit: int = 500) -> dict[str, Any]:
        """Re-decide recent requests on the current fleet under both policies; apply nothing."""
        snap = await self.snapshot()
        now = self.clock()
        try:
            entries = await self.registry.recent_decisions(limit)
        except RegistryUnavailable:
            entries = []
        if not entries:
            entries = list(self._recent)[:limit]
        ttl = self._ttl_for(snap, now)
        changed: list[dict[str, Any]] = []
        shifts: dict[str, int] = {}
        before_rej = after_rej = evaluated = 0
        for e in entries:
            if "request" not in e or e.get("kind") != "publish":
                continue
            req = PlacementRequest.from_dict(e["request"])
            a = core.decide(snap, req, self._policy, now, ttl=ttl)
            b = core.decide(snap, req, candidate, now, ttl=ttl)
            evaluated += 1
            before_rej += not a.ok
            after_rej += not b.ok
            an = a.node.id if a.node else None
            bn = b.node.id if b.node else None
            if an != bn:
                key = f"{a.tier or 'rejected'}->{b.tier or 'rejected'}"
                shifts[key] = shifts.get(key, 0) + 1
                if len(changed) < 20:
                    changed.append(
                        {"request": e["request"], "before": a.explain(), "after": b.explain()}
                    )
        return {
            "current": self._policy.label,
            "candidate": candidate.label,
            "snapshot": snap.id,
            "evaluated": evaluated,
            "changed": sum(shifts.values()),
            "shifts": shifts,
            "rejected_before": before_rej,
            "rejected_after": after_rej,
            "examples": changed,
            "applied": False,
        }

    # ----- decisions

    def check_tenant(self, tenant: str) -> None:
        if self._policy.tenants and tenant not in self._policy.tenants:
            raise UnknownTenant(tenant)

    def locate(self, ip: str | None, hints: Location | None) -> Location:
        return self.geo.resolve(ip, hints)

    def _log(
        self,
        kind: str,
        req: PlacementRequest,
        d: core.Decision,
        now: float,
        *,
        policy: Policy,
        ttl: float,
        headroom: float = 1.0,
    ) -> None:
        """Log a decision with every input replay needs besides the snapshot itself:
        the request as decided (exclusions included), the policy version it used,
        the liveness TTL (stretched in degraded mode) and the capacity headroom."""
        if self.config.decision_log_size == 0:
            return
        entry: dict[str, Any] = {
            "kind": kind,
            "at": now,
            "request": req.to_dict(),
            "policy": policy.version,
            "snapshot": d.snapshot_id,
            "ttl": ttl,
            "headroom": headroom,
            "node": d.node.id if d.node else None,
            "tier": d.tier,
            "step": d.step,
            "degraded": self.degraded,
        }
        pending = d.extra.get("pending")
        if pending:
            entry["pending"] = {k: list(v) for k, v in pending.items()}
        self._recent.appendleft(entry)
        self._log_buffer.append(entry)
        if d.snapshot_id in self._history:
            self._decided_on.add(d.snapshot_id)

    async def _flush_log(self) -> None:
        buf, self._log_buffer = self._log_buffer, []
        try:
            await self.registry.log_decisions(buf, self.config.decision_log_size)
        except RegistryUnavailable:
            self._log_buffer = (buf + self._log_buffer)[-self.config.decision_log_size :]
            raise

    def _fallback_metrics(self, d: core.Decision) -> None:
        for step in d.steps:
            if step.step == d.step:
                break
            if step.step == "edge":
                self.metrics.fallbacks.labels("edge_unavailable").inc()
            elif step.step == "mec":
                self.metrics.fallbacks.labels("mec_unavailable").inc()

    async def place(self, req: PlacementRequest) -> Placed:
        t0 = time.perf_counter()
        try:
            return await self._place(req)
        finally:
            self.metrics.decision_seconds.observe(time.perf_counter() - t0)

    async def _place(self, req: PlacementRequest) -> Placed:
        self.check_tenant(req.tenant)
        policy = self._policy
        exclude = set(req.exclude)
        for attempt in range(2):
            snap = await (self.refresh() if attempt else self.snapshot())
            now = self.clock()
            headroom = self.config.degraded_headroom if self.degraded else 1.0
            ttl = self._ttl_for(snap, now)
            # Logged with the request, so that replay excludes the same nodes.
            asked = replace(req, exclude=frozenset(exclude) | self._silent(snap, now))
            d = core.decide(
                snap, asked, policy, now, ttl=ttl, headroom=headroom, pending=self._usage
            )
            if not d.ok:
                self.metrics.decisions.labels("none", "rejected").inc()
                self.metrics.fallbacks.labels("no_capacity").inc()
                self._log("publish", asked, d, now, policy=policy, ttl=ttl, headroom=headroom)
                raise NoCapacity(d.reason, self._explain(d))
            for cand in d.ranked[:MAX_TRIES]:
                node = snap.nodes[cand.node_id]
                session = self._new_session(req, node, policy, now)
                if await self._reserve(session, node, now, headroom):
                    if cand is not d.ranked[0]:
                        d = replace(d, node=node)
                    self._fallback_metrics(d)
                    self.metrics.decisions.labels(node.tier.value, "placed").inc()
                    if self.degraded:
                        self.metrics.fallbacks.labels("degraded").inc()
                    self._log("publish", asked, d, now, policy=policy, ttl=ttl, headroom=headroom)
                    return Placed(session, d, self.degraded)
                exclude.add(node.id)
                self.metrics.fallbacks.labels("reservation_conflict").inc()
        self.metrics.decisions.labels("none", "conflict").inc()
        raise NoCapacity(
            "every candidate's capacity was taken by concurrent requests",
            self._explain(d),
        )

    def _new_session(
        self, req: PlacementRequest, node: Node, policy: Policy, now: float
    ) -> Session:
        return Session(
            id=f"{node.pool}~{uuid.uuid4().hex[:16]}",
            tenant=req.tenant,
            stream=req.stream,
            node_id=node.id,
            tier=node.tier,
            pool=node.pool,
            slots=req.slots or policy.session.slots,
            egress_mbps=req.egress_mbps if req.egress_mbps > 0 else policy.session.egress_mbps,
            created=now,
            lease_expires=now + self.config.lease_ttl,
            degraded=self.degraded,
            location=req.location,
        )

    async def _reserve(self, s: Session, node: Node, now: float, headroom: float) -> bool:
        if not self.degraded:
            try:
                ok = await self.registry.reserve(s, now)
            except UnknownNode:
                return False
            except RegistryUnavailable:
                self._set_degraded(True, now)
                s = replace(s, degraded=True)
            else:
                if ok:
                    self._remember(s)
                    self._use(s)
                return ok
        return self._reserve_locally(s, node, headroom)

    def _use(self, s: Session) -> None:
        slots, egress = self._usage.get(s.node_id, (0, 0.0))
        self._usage[s.node_id] = (slots + s.slots, egress + s.egress_mbps)

    def _reserve_locally(self, s: Session, node: Node, headroom: float) -> bool:
        """Conservative reservation against the snapshot while the registry is away."""
        slots, egress = self._usage.get(node.id, (0, 0.0))
        if node.state is not NodeState.READY or node.free_slots(headroom) - slots < s.slots:
            return False
        if node.free_egress(headroom) - egress < s.egress_mbps:
            return False
        s = replace(s, degraded=True)
        self._use(s)
        self._pending[s.id] = s
        self._remember(s)
        return True

    def _explain(self, d: core.Decision) -> dict[str, Any]:
        out = d.explain()
        out["degraded"] = self.degraded
        return out

    def explain(self, d: core.Decision) -> dict[str, Any]:
        return self._explain(d)

    async def route(self, tenant: str, stream: str, location: Location) -> core.Decision:
        t0 = time.perf_counter()
        try:
            self.check_tenant(tenant)
            snap = await self.snapshot()
            now = self.clock()
            session: Session | None = None
            if not self.degraded:
                try:
                    session = await self.registry.stream_session(tenant, stream, now)
                except RegistryUnavailable:
                    self._set_degraded(True, now)
            if session is None:
                session = next(
                    (
                        s
                        for s in reversed(self._known.values())
                        if s.tenant == tenant and s.stream == stream and s.lease_expires >= now
                    ),
                    None,
                )
            key = f"{tenant}/{stream}"
            if session is None and key not in snap.by_stream:
                raise UnknownStream(tenant, stream)
            policy, ttl = self._policy, self._ttl_for(snap, now)
            d = core.route(
                snap,
                tenant,
                stream,
                location,
                policy,
                now,
                ttl=ttl,
                origin_id=session.node_id if session else None,
            )
            req = PlacementRequest(tenant, stream, location)
            self._log("view", req, d, now, policy=policy, ttl=ttl)
            if not d.ok:
                self.metrics.decisions.labels("none", "rejected").inc()
                self.metrics.fallbacks.labels("no_capacity").inc()
                raise NoCapacity(d.reason, self._explain(d))
            self.metrics.decisions.labels(d.tier or "none", "routed").inc()
            return d
        finally:
            self.metrics.decision_seconds.observe(time.perf_counter() - t0)

    def replay(self, entry: dict[str, Any]) -> core.Decision:
        """Re-run a logged publish decision on its snapshot, policy version, TTL and headroom.

        Snapshots are kept in this instance's memory only: the last
        ``SNAPSHOT_HISTORY`` of them, and the last ``replay_snapshots`` older ones
        that logged decisions were made on. An older decision, or one another
        instance made, cannot be replayed here.
        """
        sid = str(entry["snapshot"])
        snap = self._history.get(sid) or self._kept.get(sid)
        if snap is None:
            raise InvalidField(
                "snapshot",
                f"{entry['snapshot']!r} is no longer retained: the last "
                f"{SNAPSHOT_HISTORY} snapshots and the last "
                f"{self.config.replay_snapshots} older ones that decisions were made on "
                "are kept, in the memory of the instance that took them",
            )
        policy = self._versions.get(int(entry["policy"]))
        if policy is None:
            raise InvalidField("policy", f"version {entry['policy']} is unknown")
        req = PlacementRequest.from_dict(entry["request"])
        pending = {k: (int(v[0]), float(v[1])) for k, v in (entry.get("pending") or {}).items()}
        # Entries logged before ttl/headroom were recorded replay as a healthy decision.
        ttl = float(entry.get("ttl", self.ttl))
        headroom = float(entry.get("headroom", 1.0))
        return core.decide(
            snap, req, policy, float(entry["at"]), ttl=ttl, headroom=headroom, pending=pending
        )

    def recent_decisions(self) -> list[dict[str, Any]]:
        return list(self._recent)

    # ----- sessions

    async def get_session(self, session_id: str) -> tuple[Session, bool]:
        now = self.clock()
        if not self.degraded:
            try:
                s = await self.registry.get_session(session_id, now)
            except RegistryUnavailable:
                self._set_degraded(True, now)
            else:
                if s is None:
                    raise UnknownSession(session_id)
                return s, False
        cached = self._known.get(session_id)
        if cached is None or cached.lease_expires < now:
            raise UnknownSession(session_id)
        return cached, True

    async def end_session(self, session_id: str) -> Session:
        now = self.clock()
        cached = self._known.pop(session_id, None)
        self._pending.pop(session_id, None)
        if not self.degraded:
            try:
                s = await self.registry.release(session_id, now)
            except RegistryUnavailable:
                self._set_degraded(True, now)
            else:
                if s is None:
                    raise UnknownSession(session_id)
                return s
        if cached is None:
            raise UnknownSession(session_id)
        self._pending_release.add(session_id)
        return cached

    # ----- nodes

    async def heartbeat(
        self,
        node_id: str,
        load: Load,
        node: Node | None = None,
        sessions: Sequence[str] = (),
    ) -> dict[str, Any]:
        """A node's beat; ``node`` (its descriptor) rides along every full-stats interval."""
        if node is not None and node.id != node_id:
            raise InvalidField("node.id", f"must equal the path's node id {node_id!r}")
        now = self.clock()
        self._beats[node_id] = now
        try:
            if node is not None:
                await self.registry.register(replace(node, load=load), now)
                known = True
            else:
                known = await self.registry.heartbeat(node_id, load, now)
            missing = (
                await self.registry.renew(node_id, sessions, now, self.config.lease_ttl)
                if known and sessions
                else []
            )
            restored = []
            for sid in missing:
                cached = self._known.get(sid)
                if cached is not None and cached.node_id == node_id:
                    s = replace(cached, lease_expires=now + self.config.lease_ttl)
                    with contextlib.suppress(UnknownNode):
                        if await self.registry.reserve(s, now, force=True):
                            restored.append(sid)
                            self._remember(s)
        except RegistryUnavailable:
            self._set_degraded(True, now)
            self._degraded_beats += 1
            return {"known": True, "degraded": True, "missing_sessions": []}
        return {
            "known": known,
            "degraded": self.degraded,
            "missing_sessions": [m for m in missing if m not in restored],
        }

    async def set_state(self, node_id: str, state: NodeState) -> Node:
        node = await self.registry.set_state(node_id, state)
        log.info("[node %s] state -> %s", node_id, state.value)
        await self.refresh()
        return node

    async def remove_node(self, node_id: str) -> Node:
        """Decommission a node, as after ``kubectl drain`` and ``kubectl delete node``.

        Refused (NodeBusy) while the node could still be given a session (it is
        ready and alive: drain or cordon it first) or while it holds sessions (they
        end, or are re-placed once it is stale past the autonomy window). A node
        removed while it still runs registers again on its next beat.
        """
        snap = await self.refresh()
        if self.degraded:
            raise RegistryUnavailable("nodes cannot be removed while the registry is down")
        now = self.clock()
        node = snap.nodes.get(node_id)
        if node is None:
            raise UnknownNode(node_id)
        if node.state is NodeState.READY and not is_stale(node, now, self.ttl):
            raise NodeBusy(node_id, "it is ready and alive; drain or cordon it first")
        held = [s.id for s in await self.registry.sessions(now) if s.node_id == node_id]
        if held:
            more = ", ..." if len(held) > 3 else ""
            raise NodeBusy(
                node_id, f"it still holds {len(held)} session(s): {', '.join(held[:3])}{more}"
            )
        if not await self.registry.remove(node_id):
            raise UnknownNode(node_id)
        log.info("[node %s] removed", node_id)
        await self.refresh()
        return node

    async def list_nodes(self) -> tuple[list[dict[str, Any]], FleetSnapshot]:
        snap = await self.snapshot()
        now = self.clock()
        ttl = self._ttl_for(snap, now)
        silent = self._silent(snap, now)
        out = []
        for n in sorted(snap.nodes.values(), key=lambda n: n.id):
            d = n.to_dict()
            d["alive"] = not is_stale(n, now, ttl) and n.id not in silent
            d["pool"] = n.pool
            d["migrations_frozen"] = n.id in self.frozen_nodes
            out.append(d)
        return out, snap

    # ----- liveness

    async def reconcile(self) -> list[tuple[Session, str]]:
        """Re-place sessions of nodes past TTL + autonomy window, unless frozen.

        Nodes that went stale at once with more than the mass-disconnect threshold
        of their pool keep their sessions (see ``placement.liveness``).
        """
        if self.degraded or self._snapshot is None:
            return []
        snap = self._snapshot
        now = self.clock()
        lv = self.config.liveness
        health = pool_health(snap.nodes.values(), now, lv.ttl, lv.mass_disconnect_threshold)
        frozen = {p for p, h in health.items() if h.frozen}
        for p in frozen - self.frozen_pools:
            h = health[p]
            log.warning(
                "[pool %s] %d/%d nodes stale at once: their migrations frozen"
                " (mass-disconnect guard)",
                p,
                h.burst,
                h.burst_of,
            )
            self.metrics.fallbacks.labels("mass_disconnect").inc()
        for p in self.frozen_pools - frozen:
            log.info("[pool %s] migrations unfrozen", p)
        self.frozen_pools = frozen
        self.frozen_nodes = frozenset().union(*(h.frozen_nodes for h in health.values()))
        orphaned = [
            n
            for n in snap.nodes.values()
            if is_orphaned(n, now, lv.ttl, lv.autonomy_window) and n.id not in self.frozen_nodes
        ]
        if not orphaned:
            return []
        try:
            sessions = await self.registry.sessions(now)
        except RegistryUnavailable:
            self._set_degraded(True, now)
            return []
        moved: list[tuple[Session, str]] = []
        for s in sessions_to_migrate(sessions, snap.nodes, health, now, lv.ttl, lv.autonomy_window):
            old = snap.nodes[s.node_id]
            # From the publisher's own location; the dead node's only for a session
            # stored before sessions recorded it.
            where = s.location or Location(
                city=old.city, isp=old.isp, region=old.region, lat=old.lat, lon=old.lon
            )
            req = PlacementRequest(
                s.tenant,
                s.stream,
                where,
                slots=s.slots,
                egress_mbps=s.egress_mbps,
                exclude=frozenset({old.id}),
            )
            d = core.decide(snap, req, self._policy, now, ttl=lv.ttl)
            for cand in d.ranked[:MAX_TRIES]:
                node = snap.nodes[cand.node_id]
                target = replace(
                    s,
                    node_id=node.id,
                    tier=node.tier,
                    pool=node.pool,
                    lease_expires=now + self.config.lease_ttl,
                )
                try:
                    if await self.registry.move(s, target, now):
                        log.info("[session %s] migrated %s -> %s", s.id, old.id, node.id)
                        self._remember(target)
                        moved.append((target, old.id))
                        break
                except UnknownNode:
                    continue
            else:
                log.warning("[session %s] node %s orphaned, no node to migrate to", s.id, old.id)
        return moved
