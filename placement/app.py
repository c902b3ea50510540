"""FastAPI edge of the placement service: HTTP status codes are chosen only here."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import yaml
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

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
from placement.metrics import PlacementMetrics
from placement.model import Load, Location, Node, NodeState, PlacementRequest, Session
from placement.policy import Policy, parse_policy
from placement.registry import Registry
from placement.registry.memory import InProcessRegistry
from placement.service import PlacementService

NAME = r"^[A-Za-z0-9_.-]{1,128}$"


class LocationHint(BaseModel):
    city: str = ""
    isp: str = ""
    region: str = ""
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)


class SessionCreate(BaseModel):
    tenant: str = Field(pattern=NAME)
    stream: str = Field(pattern=NAME)
    location: LocationHint | None = None
    client_ip: str | None = None
    slots: int = Field(default=0, ge=0, le=64, description="0 takes the policy default")
    egress_mbps: float = Field(default=0.0, ge=0, description="0 takes the policy default")


class IngestUrls(BaseModel):
    rtmp: str
    whip: str


class SessionOut(BaseModel):
    id: str
    tenant: str
    stream: str
    node: str
    tier: str
    state: str
    lease_expires: float
    ingest: IngestUrls
    playback: str
    degraded: bool
    explanation: dict[str, Any] | None = None


class RouteOut(BaseModel):
    node: str
    tier: str
    playback: str
    degraded: bool
    explanation: dict[str, Any]


class LoadIn(BaseModel):
    cpu: float = Field(default=0.0, ge=0, le=1.5)
    transcodes: int = Field(default=0, ge=0)
    egress_mbps: float = Field(default=0.0, ge=0)
    viewers: int = Field(default=0, ge=0)


class HeartbeatIn(BaseModel):
    load: LoadIn = LoadIn()
    node: dict[str, Any] | None = Field(
        default=None,
        description="Full descriptor (id, tier, region, city, isp, lat, lon, "
        "urls, capacity, labels, streams); sent on registration and with full stats.",
    )
    sessions: list[str] = Field(default_factory=list, description="Session ids being served")


class HeartbeatOut(BaseModel):
    known: bool
    degraded: bool
    missing_sessions: list[str]


_POLICY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


def _session_out(
    s: Session, node: Node | None, degraded: bool, explanation: dict[str, Any] | None
) -> SessionOut:
    path = f"{s.tenant}/{s.stream}"
    rtmp = node.urls.rtmp if node else ""
    whip = node.urls.whip if node else ""
    http = node.urls.http if node else ""
    return SessionOut(
        id=s.id,
        tenant=s.tenant,
        stream=s.stream,
        node=s.node_id,
        tier=s.tier.value,
        state=s.state.value,
        lease_expires=s.lease_expires,
        # The session id rides on the ingest URLs: the node that receives the stream
        # renews this session's lease for as long as the stream is live.
        ingest=IngestUrls(
            rtmp=f"{rtmp}/{path}?session={s.id}", whip=f"{whip}/{path}/whip?session={s.id}"
        ),
        playback=f"{http}/{path}/index.m3u8",
        degraded=degraded,
        explanation=explanation,
    )


def _same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of any two strings: compare_digest refuses non-ASCII
    str, and a header may hold any byte (a 500 instead of a 401)."""
    return secrets.compare_digest(given.encode(), expected.encode())


def _bearer(header: str | None) -> str:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return ""


def create_app(
    config: PlacementConfig,
    registry: Registry | None = None,
    *,
    metrics_registry: CollectorRegistry | None = None,
    clock: Callable[[], float] | None = None,
    policy: Policy | None = None,
    background: bool = True,
) -> FastAPI:
    """Build the placement API; the in-process registry is the embedded default."""
    metrics = PlacementMetrics(metrics_registry)
    kwargs: dict[str, Any] = {"metrics": metrics, "policy": policy}
    if clock is not None:
        kwargs["clock"] = clock
    service = PlacementService(config, registry or InProcessRegistry(), **kwargs)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start(background=background)
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="nearcast placement",
        version="1",
        description="Decides where each live session runs and where each viewer is sent.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = metrics

    def operator(authorization: Annotated[str | None, Header()] = None) -> None:
        token = config.operator_token
        if not token or not _same_secret(_bearer(authorization), token):
            raise HTTPException(
                401,
                "operator bearer token required ('placement.operator_token')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def node_auth(node_id: str, authorization: Annotated[str | None, Header()] = None) -> None:
        token = config.node_tokens.get(node_id) or config.node_tokens.get("*", "")
        if not token or not _same_secret(_bearer(authorization), token):
            raise HTTPException(
                401,
                f"node {node_id!r} needs its bearer token ('placement.node_tokens')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    Operator = Depends(operator)

    @app.exception_handler(InvalidField)
    async def _invalid(_: Request, exc: InvalidField) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc), "field": exc.field, "message": exc.message}, status_code=422
        )

    for cls in (UnknownNode, UnknownSession, UnknownStream, UnknownTenant):

        @app.exception_handler(cls)
        async def _not_found(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(NodeBusy)
    async def _busy(_: Request, exc: NodeBusy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(PolicyConflict)
    async def _conflict(_: Request, exc: PolicyConflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "field": "version"}, status_code=409)

    @app.exception_handler(NoCapacity)
    async def _no_capacity(_: Request, exc: NoCapacity) -> JSONResponse:
        return JSONResponse(
            {"detail": f"no capacity: {exc}", "explanation": exc.explanation}, status_code=503
        )

    for unavailable in (RegistryUnavailable, SnapshotTooOld):

        @app.exception_handler(unavailable)
        async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=503)

    def _node(node_id: str) -> Node | None:
        snap = service.snapshots.current
        return snap.nodes.get(node_id) if snap else None

    def _location(request: Request, hint: LocationHint | None, ip: str | None) -> Location:
        hints = Location(**hint.model_dump(), source="hint") if hint else None
        client = ip or (request.client.host if request.client else None)
        return service.locate(client, hints)

    @app.post("/v1/sessions", status_code=201, response_model=SessionOut, dependencies=[Operator])
    async def create_session(body: SessionCreate, request: Request) -> SessionOut:
        loc = _location(request, body.location, body.client_ip)
        placed = await service.place(
            PlacementRequest(body.tenant, body.stream, loc, body.slots, body.egress_mbps)
        )
        return _session_out(
            placed.session, placed.decision.node, placed.degraded, service.explain(placed.decision)
        )

    @app.get("/v1/sessions/{session_id}", response_model=SessionOut)
    async def get_session(session_id: str) -> SessionOut:
        if "~" not in session_id:
            raise UnknownSession(session_id)
        s, degraded = await service.get_session(session_id)
        return _session_out(s, _node(s.node_id), degraded, None)

    @app.delete("/v1/sessions/{session_id}", status_code=204, dependencies=[Operator])
    async def delete_session(session_id: str) -> Response:
        if "~" not in session_id:
            raise UnknownSession(session_id)
        await service.end_session(session_id)
        return Response(status_code=204)

    async def _route(
        request: Request, tenant: str, stream: str, city: str, isp: str, region: str, ip: str | None
    ) -> RouteOut:
        hint = LocationHint(city=city, isp=isp, region=region) if city or isp or region else None
        d = await service.route(tenant, stream, _location(request, hint, ip))
        assert d.node is not None
        return RouteOut(
            node=d.node.id,
            tier=d.node.tier.value,
            playback=f"{d.node.urls.http}/{tenant}/{stream}/index.m3u8",
            degraded=service.degraded,
            explanation=service.explain(d),
        )

    @app.get("/v1/route", response_model=RouteOut)
    async def route(
        request: Request,
        tenant: Annotated[str, Query(pattern=NAME)],
        stream: Annotated[str, Query(pattern=NAME)],
        city: str = "",
        isp: str = "",
        region: str = "",
        ip: str | None = None,
    ) -> RouteOut:
        return await _route(request, tenant, stream, city, isp, region, ip)

    @app.post(
        "/v1/nodes/{node_id}/heartbeat",
        response_model=HeartbeatOut,
        dependencies=[Depends(node_auth)],
    )
    async def heartbeat(node_id: str, body: HeartbeatIn) -> HeartbeatOut:
        load = Load(**body.load.model_dump())
        node = Node.from_dict(body.node, prefix="node.") if body.node is not None else None
        out = await service.heartbeat(node_id, load, node, body.sessions)
        return HeartbeatOut(**out)

    @app.get("/v1/nodes", dependencies=[Operator])
    async def list_nodes() -> dict[str, Any]:
        nodes, snap = await service.list_nodes()
        return {
            "snapshot": snap.id,
            "degraded": service.degraded,
            "frozen_pools": sorted(service.migrations.frozen_pools),
            "nodes": nodes,
        }

    async def _set_state(node_id: str, state: NodeState) -> dict[str, Any]:
        node = await service.set_state(node_id, state)
        return {"id": node.id, "state": node.state.value}

    @app.post("/v1/nodes/{node_id}/drain", dependencies=[Operator])
    async def drain(node_id: str) -> dict[str, Any]:
        return await _set_state(node_id, NodeState.DRAINING)

    @app.post("/v1/nodes/{node_id}/cordon", dependencies=[Operator])
    async def cordon(node_id: str) -> dict[str, Any]:
        return await _set_state(node_id, NodeState.CORDONED)

    @app.post("/v1/nodes/{node_id}/uncordon", dependencies=[Operator])
    async def uncordon(node_id: str) -> dict[str, Any]:
        return await _set_state(node_id, NodeState.READY)

    @app.delete(
        "/v1/nodes/{node_id}",
        dependencies=[Operator],
        responses={409: {"description": "ready and alive, or still holding sessions"}},
    )
    async def remove_node(node_id: str) -> dict[str, Any]:
        """Decommission a node that is drained or cordoned (or dead) and holds no session."""
        node = await service.remove_node(node_id)
        return {"id": node.id, "removed": True}

    async def _policy_body(request: Request) -> Policy:
        raw = await request.body()
        try:
            data = yaml.safe_load(raw.decode("utf-8")) if raw else None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InvalidField("policy", f"is not valid YAML or JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidField("policy", "must be a mapping")
        return parse_policy(data)

    @app.get("/v1/policy", dependencies=[Operator])
    async def get_policy() -> dict[str, Any]:
        p = service.policy
        return {"active": p.label, "versions": service.policy_versions(), "policy": p.to_dict()}

    @app.put("/v1/policy", dependencies=[Operator], openapi_extra=_POLICY_BODY)
    async def put_policy(request: Request) -> dict[str, Any]:
        p = await service.put_policy(await _policy_body(request))
        return {"active": p.label, "versions": service.policy_versions(), "policy": p.to_dict()}

    @app.post("/v1/policy/dry-run", dependencies=[Operator], openapi_extra=_POLICY_BODY)
    async def dry_run(request: Request) -> dict[str, Any]:
        return await service.dry_run(await _policy_body(request))

    @app.get("/v1/decisions", dependencies=[Operator])
    async def decisions(
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> list[dict[str, Any]]:
        """Recent decision log, newest first (feed it to ``nearcast simulate --replay``)."""
        return service.recent_decisions()[:limit]

    @app.post("/v1/decisions/replay", dependencies=[Operator])
    async def replay(entry: dict[str, Any]) -> dict[str, Any]:
        """Re-run one entry of the decision log on its snapshot, policy version, TTL and
        headroom; ``same`` says whether it chose the same node. Snapshots are kept in
        this instance's memory only (the last few): older ones answer 422 naming why."""
        for name in ("snapshot", "policy", "request", "at"):
            if name not in entry:
                raise InvalidField(name, "missing from the decision log entry")
        try:
            d = service.replay(entry)
        except InvalidField:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidField("request", f"not a decision log entry: {exc!r}") from None
        node = d.node.id if d.node else None
        return {"same": node == entry.get("node"), "node": node, "explanation": d.explain()}

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        """Readiness: the service can place, from the registry or (degraded) from a
        snapshot younger than ``snapshot_max_age``; 503 when it cannot."""
        try:
            snap = await service.snapshot()
        except (RegistryUnavailable, SnapshotTooOld) as exc:
            return JSONResponse({"ready": False, "degraded": True, "detail": str(exc)}, 503)
        return JSONResponse(
            {
                "ready": True,
                "degraded": service.degraded,
                "snapshot_age": round(max(0.0, service.clock() - snap.taken_at), 3),
                "nodes": len(snap.nodes),
            }
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/{tenant}/{stream}/index.m3u8", status_code=302, response_class=RedirectResponse)
    async def playlist_redirect(
        request: Request, tenant: str, stream: str, city: str = "", isp: str = ""
    ) -> RedirectResponse:
        out = await _route(request, tenant, stream, city, isp, "", None)
        return RedirectResponse(out.playback, status_code=302)

    return app
