"""The API routes the operator's console needs beyond the placement API, and the
console's pages.

Pages (``GET /console`` and its ES modules and stylesheet) are open: they hold no
data, and every call they make sends the operator's bearer token. The routes here
are operator routes like the rest, each action recorded in the audit log with the
operator's name (see ``placement.app``'s operator route class).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

import httpx
from fastapi import HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from placement import simulate
from placement.console.audit import AuditLog
from placement.errors import InvalidField, UnknownSession
from placement.liveness import is_stale
from placement.model import FleetSnapshot, Node
from placement.policy import Policy, parse_policy_yaml

if TYPE_CHECKING:
    from placement.app import _Routes
    from placement.service import PlacementService

log = logging.getLogger(__name__)

ASSET = re.compile(r"^[a-z][a-z0-9-]{0,63}\.(js|css)$")
MEDIA_TYPES = {"js": "text/javascript", "css": "text/css"}
# The simulator runs on the service's CPU: bounded in size, one run at a time.
SIM_MAX_NODES = 500
SIM_MAX_CLASSES = 2000
SIM_TIMELINE_POINTS = 240
NODE_TIMEOUT = 2.0
# The console's own files: never framed by another site (an operator's clicks are
# actions), always revalidated (a new release's modules load at once).
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
# Sessions the console lists at once (each asks its origin node for its bitrate).
MAX_SESSIONS = 1000


class SimulateIn(BaseModel):
    fleet: str = Field(
        default="recorded",
        pattern="^(recorded|synthetic)$",
        description="recorded: the current fleet snapshot; synthetic: a generated fleet",
    )
    nodes: int = Field(default=60, ge=3, le=SIM_MAX_NODES, description="synthetic fleet size")
    classes: int = Field(default=200, ge=1, le=SIM_MAX_CLASSES)
    seed: int = Field(default=1, ge=0, le=2**31)
    policy: str = Field(
        default="", max_length=65536, description="draft policy YAML; empty: only the active"
    )


class KickOut(BaseModel):
    kicked: str
    node: str


def node_status(node: Node, now: float, ttl: float, alive: bool, dead_since: float | None) -> str:
    """One word for the console: dead (a probe found it dead, no beat since), stale
    (missed its TTL), draining, cordoned or live."""
    if dead_since is not None and node.last_heartbeat <= dead_since and not alive:
        return "dead"
    if not alive or is_stale(node, now, ttl):
        return "stale"
    if node.state.value != "ready":
        return node.state.value
    return "live"


def city_viewers(holders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Viewers of one stream per city: the sum over the nodes holding it there (origin
    and relays; a node's viewers are all its viewers, as it reports them), by city;
    ``nodes`` counts them, those of unknown viewers included."""
    cities: dict[str, dict[str, Any]] = {}
    for x in holders:
        c = cities.setdefault(x["city"], {"city": x["city"], "viewers": 0, "nodes": 0})
        c["nodes"] += 1
        c["viewers"] += x["viewers"] or 0
    return [cities[k] for k in sorted(cities)]


def _policy_text(text: str) -> Policy:
    try:
        return parse_policy_yaml(text)
    except InvalidField:
        raise
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidField("policy", f"is not valid YAML: {exc}") from None


def _timeline(res: simulate.Result) -> list[dict[str, Any]]:
    tl = res.timeline
    step = max(1, len(tl) // SIM_TIMELINE_POINTS)
    return [{"t": s.t, **dict(zip(simulate.SHARES, s.viewers, strict=True))} for s in tl[::step]]


def _sim_result(res: simulate.Result) -> dict[str, Any]:
    return {
        "policy": res.policy,
        "table": res.row(),
        "figures": res.figures(),
        "tiers": dict(res.tiers),
        "shares": res.shares(),
        "hourly_local": [a / b if b else None for a, b in res.hourly_local()],
        "timeline": _timeline(res),
    }


def run_simulation(body: SimulateIn, snap: FleetSnapshot, policies: list[Policy]) -> dict[str, Any]:
    """The simulator on the recorded fleet (or a synthetic one) under each of
    ``policies``; runs in a worker thread."""
    t0 = time.perf_counter()
    if body.fleet == "recorded":
        if len(snap.nodes) > SIM_MAX_NODES:
            raise InvalidField("fleet", f"the fleet has over {SIM_MAX_NODES} nodes")
        fleet = simulate.fleet_from_nodes([n.to_dict() for n in snap.nodes.values()], "fleet")
    else:
        fleet = simulate.build_fleet(body.nodes, body.seed)
    trace = simulate.build_trace(fleet, body.classes, body.seed)
    results = [_sim_result(simulate.simulate(fleet, trace, p)) for p in policies]
    return {
        "fleet": body.fleet,
        "nodes": len(fleet.nodes),
        "cities": len(fleet.cities),
        "classes": len(trace),
        "seed": body.seed,
        "results": results,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def add_console_routes(
    service: PlacementService,
    operator_api: _Routes,
    open_api: _Routes,
    audit: AuditLog,
    dead_marks: dict[str, float],
    bearer: Any,
) -> None:
    """The console's pages and its routes (added to the app in declaration order)."""
    config = service.config
    simulating = asyncio.Lock()
    here = resources.files(__package__ or "placement.console")

    @open_api.get("/console", include_in_schema=False)
    async def console_page() -> Response:
        html = here.joinpath("index.html").read_bytes()
        return Response(html, media_type="text/html", headers=PAGE_HEADERS)

    @open_api.get("/console/{asset}", include_in_schema=False)
    async def console_asset(asset: str) -> Response:
        m = ASSET.match(asset)
        res = here.joinpath(asset)
        if m is None or not res.is_file():
            raise HTTPException(404, f"no console asset {asset!r}")
        return Response(res.read_bytes(), media_type=MEDIA_TYPES[m.group(1)], headers=PAGE_HEADERS)

    @operator_api.get("/v1/audit", dependencies=[bearer])
    async def audit_log(
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[dict[str, Any]]:
        """Operator actions, newest first: time, operator, action, target, HTTP status
        (kept in the registry: on Redis, every instance's, across restarts)."""
        return await audit.recent(limit)

    @operator_api.get("/v1/console/whoami", dependencies=[bearer])
    async def whoami(request: Request) -> dict[str, str]:
        """The name of the operator whose token this is."""
        return {"operator": request.state.operator}

    @operator_api.get("/v1/console/fleet", dependencies=[bearer])
    async def console_fleet() -> dict[str, Any]:
        """``GET /v1/nodes`` with each node's console status (live, stale, dead,
        draining, cordoned) and heartbeat age."""
        nodes, snap = await service.list_nodes()
        now = service.clock()
        ttl = service.degradation.ttl_for(snap, now)
        for d in nodes:
            node = snap.nodes[d["id"]]
            d["status"] = node_status(node, now, ttl, d["alive"], dead_marks.get(node.id))
            d["heartbeat_age"] = round(max(0.0, now - node.last_heartbeat), 3)
        # Marks of nodes that beat since, or are gone, are forgotten.
        for node_id, since in list(dead_marks.items()):
            known = snap.nodes.get(node_id)
            if known is None or known.last_heartbeat > since:
                del dead_marks[node_id]
        return {"snapshot": snap.id, "degraded": service.degraded, "ttl": ttl, "nodes": nodes}

    async def _stream_info(client: httpx.AsyncClient, node: Node, key: str) -> dict[str, Any]:
        headers = (
            {"Authorization": f"Bearer {config.node_operator_token}"}
            if config.node_operator_token
            else {}
        )
        try:
            r = await client.get(f"{node.urls.http}/v1/streams/{key}", headers=headers)
        except httpx.HTTPError:
            return {}
        if r.status_code != 200:
            return {}
        body = r.json()
        return body if isinstance(body, dict) else {}

    @operator_api.get("/v1/console/sessions", dependencies=[bearer])
    async def console_sessions(
        limit: Annotated[int, Query(ge=1, le=MAX_SESSIONS)] = 200,
    ) -> dict[str, Any]:
        """Sessions (the first ``limit`` by id) with their origin node, the nodes
        holding their stream (origin and relays, from their heartbeats), each holder's
        viewers and their sum per city (``cities``), the origin's LL-HLS playlist
        (``playback``) and WHEP endpoint (``whep``), and what the origin reports (asked
        of it, 2 s at most): the source bitrate, renditions and ``edge_age``, the
        seconds since the end of the newest part or segment it lists (its
        EXT-X-PROGRAM-DATE-TIME); ``total`` counts them all."""
        snap = await service.snapshot()
        now = service.clock()
        every = sorted(await service.registry.sessions(now), key=lambda s: s.id)
        sessions = every[:limit]
        out = []
        async with httpx.AsyncClient(timeout=NODE_TIMEOUT) as client:
            infos = await asyncio.gather(
                *(
                    _stream_info(client, node, f"{s.tenant}/{s.stream}")
                    if (node := snap.nodes.get(s.node_id)) is not None and node.urls.http
                    else asyncio.sleep(0, {})
                    for s in sessions
                )
            )
        for s, info in zip(sessions, infos, strict=True):
            key = f"{s.tenant}/{s.stream}"
            origin = snap.nodes.get(s.node_id)
            holders = sorted({n.id for n in snap.by_stream.get(key, ())} | {s.node_id})
            source = info.get("source") or {}
            held = [
                {
                    "id": h,
                    "role": "origin" if h == s.node_id else "relay",
                    "tier": n.tier.value if (n := snap.nodes.get(h)) else "",
                    "city": n.city if n else "",
                    "viewers": n.load.viewers if n else None,
                }
                for h in holders
            ]
            out.append(
                {
                    **s.to_dict(),
                    "key": key,
                    "playback": f"{origin.urls.http}/{key}/index.m3u8" if origin else "",
                    "whep": f"{origin.urls.http}/{key}/whep" if origin else "",
                    "origin_city": origin.city if origin else "",
                    "holders": held,
                    "cities": city_viewers(held),
                    "edge_age": info.get("edge_age"),
                    "bitrate": source.get("bitrate"),
                    "live": info.get("live"),
                    "publisher_connected": info.get("publisher_connected"),
                    "renditions": [r.get("name") for r in info.get("renditions") or ()],
                }
            )
        return {"snapshot": snap.id, "total": len(every), "sessions": out}

    @operator_api.post(
        "/v1/sessions/{session_id}/kick",
        response_model=KickOut,
        dependencies=[bearer],
        responses={
            404: {"description": "no such session, or nobody publishes it on its node"},
            502: {"description": "the node refused placement's token or did not answer"},
            503: {"description": "'placement.node_operator_token' is not set"},
        },
    )
    async def kick(session_id: str) -> KickOut:
        """Disconnect the session's publisher on its node (the node's
        ``POST /v1/streams/{tenant}/{stream}/kick``, with
        'placement.node_operator_token'); the session stays until its lease ends."""
        if "~" not in session_id:
            raise UnknownSession(session_id)
        s, _ = await service.get_session(session_id)
        if not config.node_operator_token:
            raise HTTPException(
                503, "kicks are off: 'placement.node_operator_token' (the nodes' token) is not set"
            )
        snap = await service.snapshot()
        node = snap.nodes.get(s.node_id)
        if node is None or not node.urls.http:
            raise HTTPException(502, f"node {s.node_id!r} of session {session_id} is unknown")
        url = f"{node.urls.http}/v1/streams/{s.tenant}/{s.stream}/kick"
        try:
            async with httpx.AsyncClient(timeout=NODE_TIMEOUT) as client:
                r = await client.post(
                    url, headers={"Authorization": f"Bearer {config.node_operator_token}"}
                )
        except httpx.HTTPError as exc:
            raise HTTPException(502, f"node {node.id!r} did not answer: {exc!r}") from None
        if r.status_code == 404:
            raise HTTPException(404, f"nobody publishes {s.tenant}/{s.stream} on {node.id!r}")
        if r.status_code != 200:
            raise HTTPException(
                502,
                f"node {node.id!r} answered {r.status_code} (is 'placement.node_operator_token' "
                "its 'ingest.operator_token'?)",
            )
        return KickOut(kicked=f"{s.tenant}/{s.stream}", node=node.id)

    @operator_api.post("/v1/policy/validate", dependencies=[bearer])
    async def validate_policy(request: Request) -> dict[str, Any]:
        """Check a draft policy (YAML) without storing it: always 200, with ``valid``,
        and ``field`` and ``message`` when it is not; ``applicable`` says whether PUT
        /v1/policy would take it (a new higher version, or an earlier one unchanged)."""
        raw = await request.body()
        try:
            p = _policy_text(raw.decode("utf-8", errors="replace"))
        except InvalidField as exc:
            return {"valid": False, "field": exc.field, "message": exc.message}
        existing = service.policies.get(p.version)
        latest = max(service.policy_versions(), default=0)
        if existing is not None and existing.digest() != p.digest():
            note = f"version {p.version} exists with other content: raise it above {latest}"
            applicable = False
        elif existing is None and p.version <= latest:
            note = f"version must be above {latest} (the latest)"
            applicable = False
        else:
            applicable = True
            note = "rollback" if existing is not None else "new version"
        return {
            "valid": True,
            "label": p.label,
            "version": p.version,
            "applicable": applicable,
            "note": note,
            "policy": p.to_dict(),
        }

    @operator_api.get("/v1/policy/history", dependencies=[bearer])
    async def policy_history() -> dict[str, Any]:
        """Every stored version (label, YAML) and the activations (the last 1000),
        with the operator's name and time."""
        versions = []
        for v in service.policy_versions():
            p = service.policies.get(v)
            if p is not None:
                versions.append(
                    {"version": v, "label": p.label, "yaml": p.to_yaml(), "policy": p.to_dict()}
                )
        return {
            "active": service.policy.version,
            "versions": versions,
            "history": await service.policies.history(),
        }

    @operator_api.post("/v1/policy/rollback/{version}", dependencies=[bearer])
    async def rollback(version: int, request: Request) -> dict[str, Any]:
        """Activate an earlier stored version unchanged."""
        p = service.policies.get(version)
        if p is None:
            raise InvalidField("version", f"{version} is not a stored version")
        p = await service.policies.put(p, request.state.operator, service.clock())
        request.state.audit_detail = {"version": p.version}
        return {"active": p.label, "versions": service.policy_versions()}

    @operator_api.post(
        "/v1/simulate",
        dependencies=[bearer],
        responses={429: {"description": "a simulation is already running"}},
    )
    async def simulate_route(body: SimulateIn, request: Request) -> dict[str, Any]:
        """Run the policy simulator (``placement.simulate``) in a worker thread on the
        recorded fleet snapshot or a synthetic fleet, under the active policy and the
        draft (``policy``); bounded to 500 nodes and 2000 classes, one run at a time.
        The figures come back as JSON for plotting."""
        policies = [service.policy]
        if body.policy.strip():
            policies.append(_policy_text(body.policy))
        snap = await service.snapshot()
        if simulating.locked():
            raise HTTPException(429, "a simulation is already running; try again when it ends")
        async with simulating:
            out = await asyncio.to_thread(run_simulation, body, snap, policies)
        request.state.audit_detail = {"fleet": body.fleet, "classes": body.classes}
        return out
