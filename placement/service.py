"""The placement service: the pure core wired to a registry, a clock and metrics.

Snapshots are refreshed in the background; each request decides on the
current snapshot and then reserves atomically in the registry, trying the next
ranked candidate if a concurrent request took the capacity first. When the
registry is unreachable the service answers from its last snapshot (at most
``snapshot_max_age`` old), marks answers degraded and reserves conservatively;
when it returns, locally made reservations are written back.

The service answers requests and keeps the snapshot fresh; what it composes
has a module each: degraded mode (``placement.degraded``), the snapshots kept
(``placement.snapshots``), the policy versions (``placement.policy_versions``),
the decision log and replay (``placement.decision_log``), the sessions known
locally (``placement.sessions``) and the re-placement of dead nodes' sessions
(``placement.migration``), and the probes of nodes relays report as failing
(``placement.suspects``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from placement import core, decision_log
from placement.config import PlacementConfig
from placement.degraded import DegradedMode
from placement.errors import (
    InvalidField,
    NoCapacity,
    NodeBusy,
    RegistryUnavailable,
    SnapshotTooOld,
    UnknownNode,
    UnknownSession,
    UnknownStream,
)
from placement.geo import GeoResolver
from placement.liveness import is_stale
from placement.metrics import PlacementMetrics
from placement.migration import Migrations
from placement.model import (
    FleetSnapshot,
    Load,
    Location,
    Node,
    NodeState,
    PlacementRequest,
    Session,
    Tier,
    stream_key,
)
from placement.policy import Policy
from placement.policy_versions import PolicyVersions
from placement.registry import Registry
from placement.sessions import LocalSessions
from placement.snapshots import RefreshStats, SnapshotHistory
from placement.suspects import ProbeResult, Suspects

log = logging.getLogger(__name__)

MAX_TRIES = 8
NODE_COUNT_INTERVAL = 5.0  # seconds between placement_nodes{tier,state} recounts


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
        self.degradation = DegradedMode(
            config.liveness.ttl, config.snapshot_max_age, self.metrics.degraded
        )
        self.policies = PolicyVersions(registry, policy, config.policy_file)
        self.snapshots = SnapshotHistory(config.replay_snapshots)
        self.metrics.watch_heartbeats(lambda: self.snapshots.current, clock)
        self.sessions = LocalSessions(registry)
        self.decisions = decision_log.DecisionLog(registry, config.decision_log_size)
        self.migrations = Migrations(
            config,
            registry,
            self.metrics,
            policies=self.policies,
            sessions=self.sessions,
            degradation=self.degradation,
            max_tries=MAX_TRIES,
        )
        self.suspects = Suspects(self.metrics)
        self._gen = 0
        self._refreshing: asyncio.Future[FleetSnapshot] | None = None
        self._cursor: Any = None
        self._counted_at = float("-inf")
        self.last_refresh = RefreshStats(full=True, read=0, removed=0, nodes=0)
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._stopping = False

    # ----- lifecycle

    @property
    def policy(self) -> Policy:
        return self.policies.active

    @property
    def degraded(self) -> bool:
        return self.degradation.on

    @property
    def ttl(self) -> float:
        return self.config.liveness.ttl

    async def start(self, background: bool = True) -> None:
        if self._started:
            return
        self._started = True
        self._stopping = False
        await self.policies.load()
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
            await self.decisions.flush()
        await self.suspects.close()
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

    # ----- snapshots

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
        prev = self.snapshots.current
        mark = self.sessions.mark()
        try:
            # Incremental: only nodes changed since the last snapshot are read.
            changes = await self.registry.changes(now, self._cursor if prev else None)
            await self.policies.sync()
        except RegistryUnavailable:
            self.degradation.set(True, now)
            return self.degradation.usable(self.snapshots.current, now)
        was_degraded = self.degraded
        self.degradation.set(False, now)
        self.degradation.forget_beats()  # the registry has them now
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
        self.snapshots.install(snap)
        self.sessions.new_snapshot(mark)
        if now - self._counted_at >= NODE_COUNT_INTERVAL or self.last_refresh.full:
            # Counting walks the whole fleet: at most every few seconds (a scrape
            # interval), not on every incremental refresh.
            self._counted_at = now
            self._count_nodes(snap, now)
        # A full read with a cursor: the registry lost the history it refers to (an
        # empty Redis came back between two refreshes, too fast to be seen degraded).
        lost = was_degraded or (changes.full and prev is not None)
        try:
            if lost or self.sessions.unwritten:
                await self.sessions.write_back(now, check_lost=lost)
            await self.decisions.flush()
        except RegistryUnavailable:
            self.degradation.set(True, now)
        return snap

    async def snapshot(self) -> FleetSnapshot:
        now = self.clock()
        snap = self.snapshots.current
        stale = snap is None or now - snap.taken_at > self.config.snapshot_interval
        if stale and (not self._tasks or snap is None or self.degraded):
            return await self.refresh()
        if snap is None:
            return await self.refresh()
        if self.degraded:
            return self.degradation.usable(snap, now)
        return snap

    def _count_nodes(self, snap: FleetSnapshot, now: float) -> None:
        counts: dict[tuple[str, str], int] = {}
        for n in snap.nodes.values():
            state = "stale" if is_stale(n, now, self.ttl) else n.state.value
            counts[(n.tier.value, state)] = counts.get((n.tier.value, state), 0) + 1
        for tier in Tier:
            for state in [*(s.value for s in NodeState), "stale"]:
                self.metrics.nodes.labels(tier.value, state).set(counts.get((tier.value, state), 0))

    # ----- policy

    async def put_policy(self, policy: Policy) -> Policy:
        """Activate ``policy``: a new higher version, or an earlier one unchanged (rollback)."""
        return await self.policies.put(policy)

    def policy_versions(self) -> list[int]:
        return self.policies.versions()

    async def dry_run(self, candidate: Policy, limit: int = 500) -> dict[str, Any]:
        """Re-decide recent requests on the current fleet under both policies; apply nothing."""
        snap = await self.snapshot()
        now = self.clock()
        try:
            entries = await self.registry.recent_decisions(limit)
        except RegistryUnavailable:
            entries = []
        if not entries:
            entries = self.decisions.recent()[:limit]
        ttl = self.degradation.ttl_for(snap, now)
        return decision_log.compare_policies(
            entries, snap, self.policies.active, candidate, now, ttl
        )

    # ----- decisions

    def check_tenant(self, tenant: str) -> None:
        self.policies.check_tenant(tenant)

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
        logged = self.decisions.record(
            kind, req, d, now, policy=policy, ttl=ttl, headroom=headroom, degraded=self.degraded
        )
        if logged:
            self.snapshots.decided_on(d.snapshot_id)

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
        policy = self.policies.active
        exclude = set(req.exclude)
        for attempt in range(2):
            snap = await (self.refresh() if attempt else self.snapshot())
            now = self.clock()
            headroom = self.config.degraded_headroom if self.degraded else 1.0
            ttl = self.degradation.ttl_for(snap, now)
            # Logged with the request, so that replay excludes the same nodes.
            asked = replace(req, exclude=frozenset(exclude) | self.degradation.silent(snap, now))
            d = core.decide(
                snap, asked, policy, now, ttl=ttl, headroom=headroom, pending=self.sessions.usage
            )
            if not d.ok and self.sessions.usage and not self.degraded:
                # This instance's reservations since the snapshot may include some its
                # read already saw (counted twice until the next refresh, see
                # LocalSessions.new_snapshot). The registry's reservation is the
                # authority: decide on the snapshot alone and let it answer.
                d = core.decide(snap, asked, policy, now, ttl=ttl, headroom=headroom)
            if not d.ok:
                self.metrics.decisions.labels("none", "rejected").inc()
                self.metrics.fallbacks.labels("no_capacity").inc()
                self._log("publish", asked, d, now, policy=policy, ttl=ttl, headroom=headroom)
                raise NoCapacity(d.reason, self._explain(d))
            stale = await self._stale_session(req, snap, now, ttl)
            for cand in d.ranked[:MAX_TRIES]:
                node = snap.nodes[cand.node_id]
                session = self._new_session(req, node, policy, now)
                if await self._reserve(session, node, now, headroom):
                    if stale is not None:
                        await self._supersede(stale, session, now)
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

    async def _stale_session(
        self, req: PlacementRequest, snap: FleetSnapshot, now: float, ttl: float
    ) -> Session | None:
        """The stream's current session when its node is dead (past its TTL, or found
        dead by a probe): the publisher asking again gets a new one, and the dead one
        is released rather than left to be migrated beside it. Looked up only when the
        snapshot or this instance's sessions point at a dead node, so a placement of a
        new stream costs no extra registry read."""
        key = stream_key(req.tenant, req.stream)
        cached = self.sessions.latest(req.tenant, req.stream, now)
        suspects = [n for n in snap.by_stream.get(key, ()) if is_stale(n, now, ttl)]
        if cached is not None and (node := snap.nodes.get(cached.node_id)) is not None:
            if is_stale(node, now, ttl):
                suspects.append(node)
        if not suspects:
            return None
        current = cached
        if not self.degraded:
            try:
                current = await self.registry.stream_session(req.tenant, req.stream, now)
            except RegistryUnavailable:
                self.degradation.set(True, now)
        if current is None:
            return None
        node = snap.nodes.get(current.node_id)
        return current if node is None or is_stale(node, now, ttl) else None

    async def _supersede(self, old: Session, new: Session, now: float) -> None:
        if old.id == new.id:
            return
        log.info(
            "[session %s] %s/%s: node %s is dead, replaced by session %s on node %s",
            old.id,
            old.tenant,
            old.stream,
            old.node_id,
            new.id,
            new.node_id,
        )
        with contextlib.suppress(UnknownSession):
            await self.end_session(old.id)

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
                self.degradation.set(True, now)
                s = replace(s, degraded=True)
            else:
                if ok:
                    self.sessions.remember(s)
                    self.sessions.use(s)
                return ok
        return self.sessions.reserve_locally(s, node, headroom)

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
                    self.degradation.set(True, now)
            if session is None:
                session = self.sessions.find(tenant, stream, now)
            key = f"{tenant}/{stream}"
            if session is None and key not in snap.by_stream:
                raise UnknownStream(tenant, stream)
            policy, ttl = self.policies.active, self.degradation.ttl_for(snap, now)
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
        """Re-run a logged publish decision on its snapshot, policy version, TTL and headroom
        (see ``placement.decision_log.replay``: only snapshots this instance kept)."""
        return decision_log.replay(entry, self.snapshots, self.policies, self.ttl)

    def recent_decisions(self) -> list[dict[str, Any]]:
        return self.decisions.recent()

    # ----- sessions

    async def get_session(self, session_id: str) -> tuple[Session, bool]:
        now = self.clock()
        if not self.degraded:
            try:
                s = await self.registry.get_session(session_id, now)
            except RegistryUnavailable:
                self.degradation.set(True, now)
            else:
                if s is None:
                    raise UnknownSession(session_id)
                return s, False
        cached = self.sessions.get(session_id)
        if cached is None or cached.lease_expires < now:
            raise UnknownSession(session_id)
        return cached, True

    async def end_session(self, session_id: str) -> Session:
        now = self.clock()
        cached = self.sessions.forget(session_id)
        if not self.degraded:
            try:
                s = await self.registry.release(session_id, now)
            except RegistryUnavailable:
                self.degradation.set(True, now)
            else:
                if s is None:
                    raise UnknownSession(session_id)
                return s
        if cached is None:
            raise UnknownSession(session_id)
        self.sessions.release_later(session_id)
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
        self.degradation.beat(node_id, now)
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
                cached = self.sessions.get(sid)
                if cached is not None and cached.node_id == node_id:
                    s = replace(cached, lease_expires=now + self.config.lease_ttl)
                    with contextlib.suppress(UnknownNode):
                        if await self.registry.reserve(s, now, force=True):
                            restored.append(sid)
                            self.sessions.remember(s)
        except RegistryUnavailable:
            self.degradation.set(True, now)
            self.degradation.beat_kept_here()
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

    async def suspect(self, node_id: str, reporter: str) -> dict[str, Any]:
        """A relay (``reporter``) saw ``node_id``'s pulls fail: probe the node's /healthz
        (one probe in flight per node, its result reused for a second) and, when the
        probe fails, mark it dead in the registry: no placement or route goes to it
        from the next snapshot (this instance's is refreshed at once) until it beats."""
        snap = await self.snapshot()
        node = snap.nodes.get(node_id)
        if node is None and not self.degraded:
            # Registered since the snapshot was taken (at most a snapshot interval ago).
            node = (await self.refresh()).nodes.get(node_id)
        if node is None or not node.urls.http:
            self.metrics.suspect_reports.labels("unknown").inc()
            raise UnknownNode(node_id)
        log.info("[node %s] reported by %s: its pulls fail", node_id, reporter)

        async def judged(result: ProbeResult) -> None:
            if not result.dead:
                return
            now = self.clock()
            try:
                # A TTL ago: stale at once, its sessions kept for the autonomy window
                # (by then its publishers have asked again and moved on).
                known = await self.registry.mark_dead(node_id, now - self.ttl - 0.001, now)
            except RegistryUnavailable:
                self.degradation.set(True, now)
                log.warning("[node %s] found dead, but the registry is unreachable", node_id)
                return
            if known:
                log.warning(
                    "[node %s] marked dead (%s): no placements or routes until it beats",
                    node_id,
                    result.detail,
                )
                with contextlib.suppress(RegistryUnavailable, SnapshotTooOld):
                    await self.refresh()

        result = await self.suspects.check(node_id, node.urls.http, judged)
        self.metrics.suspect_reports.labels("dead" if result.dead else "alive").inc()
        return {
            "node": node_id,
            "dead": result.dead,
            "probe": result.outcome,
            "detail": result.detail,
        }

    async def list_nodes(self) -> tuple[list[dict[str, Any]], FleetSnapshot]:
        snap = await self.snapshot()
        now = self.clock()
        ttl = self.degradation.ttl_for(snap, now)
        silent = self.degradation.silent(snap, now)
        out = []
        for n in sorted(snap.nodes.values(), key=lambda n: n.id):
            d = n.to_dict()
            d["alive"] = not is_stale(n, now, ttl) and n.id not in silent
            d["pool"] = n.pool
            d["migrations_frozen"] = n.id in self.migrations.frozen_nodes
            out.append(d)
        return out, snap

    # ----- liveness

    async def reconcile(self) -> list[tuple[Session, str]]:
        """Re-place sessions of nodes past TTL + autonomy window, unless frozen.

        Nodes that went stale at once with more than the mass-disconnect threshold
        of their pool keep their sessions (see ``placement.liveness``).
        """
        if self.degraded or self.snapshots.current is None:
            return []
        snap = self.snapshots.current
        now = self.clock()
        return await self.migrations.reconcile(snap, now)
