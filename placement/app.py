"""FastAPI edge of the placement service: HTTP status codes are chosen only here."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

import yaml
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from starlette.types import Message

from placement import core, decision_log
from placement.config import PlacementConfig
from placement.console.api import add_console_routes
from placement.console.audit import READ_ONLY_ACTIONS, AuditLog
from placement.credentials import (
    PublisherRefused,
    check_claims,
    check_publisher,
    verify_publisher,
    verify_reporter,
)
from placement.errors import (
    ClaimRefused,
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
from placement.model import (
    Load,
    Location,
    Node,
    NodeState,
    PlacementRequest,
    Session,
    check_node_id,
)
from placement.policy import Policy, parse_policy
from placement.registry import Registry
from placement.registry.memory import InProcessRegistry
from placement.service import PlacementService
from tokens.node import NodeCredentialError, verify_node

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


class UpstreamOut(BaseModel):
    node: str
    tier: str
    url: str = Field(description="HTTP base URL of the node to pull from")
    origin: str = Field(description="The stream's origin node, when known")
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


def _bearer(header: str | None) -> str:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return ""


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of a presented token; any bytes a client sends (a header
    is decoded as Latin-1) compare as unequal, never as an error."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


Guard = Callable[[Request], Awaitable[None]]
_F = TypeVar("_F", bound=Callable[..., Any])
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _capped(request: Request, limit: int) -> Request:
    """``request`` with its body capped at ``limit`` bytes: refused from Content-Length
    before anything is read, and while reading when the body is sent without one."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HTTPException(400, "Content-Length is not a number")
        if int(length) > limit:
            raise HTTPException(
                413, f"request body is over {limit} bytes ('placement.max_body_bytes')"
            )
    receive = request.receive
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(
                    413, f"request body is over {limit} bytes ('placement.max_body_bytes')"
                )
        return message

    return Request(request.scope, limited, request._send)


def _route_class(guard: Guard | None, max_body: int) -> type[APIRoute]:
    """Routes that run ``guard`` (authentication) and cap the body before FastAPI reads
    and parses it: a dependency would run only after the body was read and parsed, so
    an anonymous client could make the service parse megabytes of JSON. The check
    travels with the route, also where an embedding node mounts it."""

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                if guard is not None:
                    await guard(request)
                return await handler(_capped(request, max_body))

            return guarded

    return GuardedRoute


class _Routes:
    """``@routes.get(...)`` and friends adding routes of one guarded class to ``app``, in
    declaration order. (Included routers would hide the routes from an embedding node,
    which copies the app's /v1/ routes into its own.)"""

    def __init__(self, app: FastAPI, route_class: type[APIRoute]) -> None:
        self.app = app
        self.route_class = route_class

    def _add(self, method: str, path: str, **kw: Any) -> Callable[[_F], _F]:
        def decorator(endpoint: _F) -> _F:
            self.app.router.add_api_route(
                path, endpoint, methods=[method], route_class_override=self.route_class, **kw
            )
            return endpoint

        return decorator

    def get(self, path: str, **kw: Any) -> Callable[[_F], _F]:
        return self._add("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[_F], _F]:
        return self._add("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[_F], _F]:
        return self._add("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[_F], _F]:
        return self._add("DELETE", path, **kw)


# Operator calls that change nothing are not audited.
_READS = frozenset({"GET", "HEAD"})
_ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (InvalidField, 422),
    (UnknownNode, 404),
    (UnknownSession, 404),
    (UnknownStream, 404),
    (UnknownTenant, 404),
    (ClaimRefused, 403),
    (NodeBusy, 409),
    (PolicyConflict, 409),
    (NoCapacity, 503),
    (RegistryUnavailable, 503),
    (SnapshotTooOld, 503),
)


def _status_of(exc: Exception) -> int:
    if isinstance(exc, HTTPException):
        return exc.status_code
    return next((code for cls, code in _ERROR_STATUS if isinstance(exc, cls)), 500)


def _audited_route_class(
    guard: Guard, max_body: int, audit: AuditLog, clock: Callable[[], float]
) -> type[APIRoute]:
    """Operator routes: guarded and capped as ``_route_class``'s, and every call that
    changes something recorded in ``audit`` with the operator's name (set by
    ``guard``), the route's name as the action, its path parameters as the target,
    and the outcome."""

    class AuditedRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()
            action = self.name

            async def audited(request: Request) -> Response:
                await guard(request)
                if request.method in _READS or action in READ_ONLY_ACTIONS:
                    return await handler(_capped(request, max_body))
                status = 500
                try:
                    response = await handler(_capped(request, max_body))
                    status = response.status_code
                    return response
                except Exception as exc:
                    status = _status_of(exc)
                    raise
                finally:
                    operator = getattr(request.state, "operator", None)
                    if operator is not None:
                        audit.record(
                            operator,
                            action,
                            {k: str(v) for k, v in request.path_params.items()},
                            status,
                            clock(),
                            getattr(request.state, "audit_detail", None),
                        )
                        # Stored before the answer: a GET /v1/audit that follows sees it.
                        await audit.flush()

            return audited

    return AuditedRoute


def _bearer_header(authorization: Annotated[str | None, Header()] = None) -> None:
    """Declares the bearer header in the OpenAPI document; the route checks it first."""


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

    async def operator(request: Request) -> None:
        """An operator's token ('placement.operator_token' or one of
        'placement.operators'); the operator's name goes into the audit log."""
        name = config.operator_named(_bearer(request.headers.get("authorization")))
        if name is None:
            raise _unauthorized(
                "operator bearer token required ('placement.operator_token' or "
                "'placement.operators')"
            )
        request.state.operator = name

    async def node_auth(request: Request) -> None:
        """The node's credential, checked before its body is read: the path's node id
        must follow the id rule (422) and the bearer token must be a genuine, unexpired
        credential of that id (401). The registration is checked against its claims in
        the handler, once the body is parsed."""
        node_id = request.path_params["node_id"]
        try:
            check_node_id(node_id, "node_id")
        except InvalidField:
            metrics.registrations_rejected.labels("invalid_id").inc()
            raise
        token = _bearer(request.headers.get("authorization"))
        try:
            cred = verify_node(token, config.node_keys, node_id, service.clock())
        except NodeCredentialError as exc:
            metrics.registrations_rejected.labels(exc.reason).inc()
            raise _unauthorized(
                f"node {node_id!r}: {exc} (credentials: `nearcast node-credential`, "
                "keys: 'placement.node_keys')"
            ) from None
        request.state.node_credential = cred

    async def session_auth(request: Request) -> None:
        """The operator token, or a publisher's signed publish token (checked with its
        tenant's 'placement.publish_keys'); which stream the token allows is checked
        in the handler, once the body is parsed."""
        token = _bearer(request.headers.get("authorization"))
        request.state.publisher = None
        if (name := config.operator_named(token)) is not None:
            request.state.operator = name
            return
        if not config.publish_keys:
            raise _unauthorized(
                "operator bearer token required ('placement.operator_token' or "
                "'placement.operators')"
            )
        try:
            request.state.publisher = verify_publisher(token, config.publish_keys, service.clock())
        except PublisherRefused as exc:
            metrics.session_requests_rejected.labels(exc.reason).inc()
            status = 403 if exc.reason == "wrong_action" else 401
            raise HTTPException(
                status,
                f"{exc} (the operator token, or a publish token of the stream: "
                "'placement.publish_keys')",
                headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
            ) from None

    async def reporter_auth(request: Request) -> None:
        """A relay reporting another node: its own node credential, whatever node the
        path names."""
        node_id = request.path_params["node_id"]
        check_node_id(node_id, "node_id")
        token = _bearer(request.headers.get("authorization"))
        try:
            cred = verify_reporter(token, config.node_keys, service.clock())
        except NodeCredentialError as exc:
            raise _unauthorized(
                f"the reporting node's own credential is required: {exc} "
                "(keys: 'placement.node_keys')"
            ) from None
        request.state.node_credential = cred

    async def asker_auth(request: Request) -> None:
        """The credential of the node named by the ``node`` query parameter (a relay)."""
        node_id = request.query_params.get("node", "")
        check_node_id(node_id, "node")
        token = _bearer(request.headers.get("authorization"))
        try:
            verify_node(token, config.node_keys, node_id, service.clock())
        except NodeCredentialError as exc:
            raise _unauthorized(f"node {node_id!r}: {exc}") from None

    async def metrics_auth(request: Request) -> None:
        token = config.metrics_token
        if token and not _same(_bearer(request.headers.get("authorization")), token):
            raise _unauthorized("metrics bearer token required ('placement.metrics_token')")

    cap = config.max_body_bytes
    audit = app.state.audit = AuditLog(service.registry)
    # Nodes a suspect probe found dead, and when: the console shows them dead (not
    # only stale) until they beat again.
    dead_marks: dict[str, float] = {}
    operator_api = _Routes(app, _audited_route_class(operator, cap, audit, service.clock))
    asker_api = _Routes(app, _route_class(asker_auth, cap))
    node_api = _Routes(app, _route_class(node_auth, cap))
    metrics_api = _Routes(app, _route_class(metrics_auth, cap))
    session_api = _Routes(app, _route_class(session_auth, cap))
    reporter_api = _Routes(app, _route_class(reporter_auth, cap))
    open_api = _Routes(app, _route_class(None, cap))
    Bearer = Depends(_bearer_header)

    @app.exception_handler(InvalidField)
    async def _invalid(_: Request, exc: InvalidField) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc), "field": exc.field, "message": exc.message}, status_code=422
        )

    for cls in (UnknownNode, UnknownSession, UnknownStream, UnknownTenant):

        @app.exception_handler(cls)
        async def _not_found(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ClaimRefused)
    async def _refused(_: Request, exc: ClaimRefused) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc), "field": exc.field, "message": exc.message}, status_code=403
        )

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

    @session_api.post(
        "/v1/sessions",
        status_code=201,
        response_model=SessionOut,
        dependencies=[Bearer],
        responses={
            401: {"description": "neither the operator token nor a valid publish token"},
            403: {"description": "a publish token of another stream (or not for publishing)"},
        },
    )
    async def create_session(body: SessionCreate, request: Request) -> SessionOut:
        """Place a session; the operator's, or a publisher's for its own stream only."""
        claims = request.state.publisher
        if claims is not None:
            try:
                check_publisher(claims, body.tenant, body.stream)
            except PublisherRefused as exc:
                metrics.session_requests_rejected.labels(exc.reason).inc()
                raise HTTPException(403, str(exc)) from None
        loc = _location(request, body.location, body.client_ip)
        placed = await service.place(
            PlacementRequest(body.tenant, body.stream, loc, body.slots, body.egress_mbps)
        )
        return _session_out(
            placed.session, placed.decision.node, placed.degraded, service.explain(placed.decision)
        )

    @open_api.get("/v1/sessions/{session_id}", response_model=SessionOut)
    async def get_session(session_id: str) -> SessionOut:
        if "~" not in session_id:
            raise UnknownSession(session_id)
        s, degraded = await service.get_session(session_id)
        return _session_out(s, _node(s.node_id), degraded, None)

    @operator_api.delete("/v1/sessions/{session_id}", status_code=204, dependencies=[Bearer])
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

    @open_api.get("/v1/route", response_model=RouteOut)
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

    @asker_api.get(
        "/v1/upstream",
        response_model=UpstreamOut,
        dependencies=[Bearer],
        responses={
            401: {"description": "no credential of the asking node"},
            404: {"description": "unknown stream"},
            503: {"description": "no node to pull from now"},
        },
    )
    async def upstream(
        tenant: Annotated[str, Query(pattern=NAME)],
        stream: Annotated[str, Query(pattern=NAME)],
        node: Annotated[str, Query(description="The relay asking")],
    ) -> UpstreamOut:
        """The node a relay pulls ``tenant/stream`` from: a regional MEC that holds or
        can relay it (edge askers), else its origin (also for an asker not registered
        yet); explained like a placement."""
        service.check_tenant(tenant)
        snap = await service.snapshot()
        now = service.clock()
        # Not registered yet (a node just started): it gets the origin.
        asker: Node | str = snap.nodes.get(node) or node
        session: Session | None = None
        if not service.degraded:
            with contextlib.suppress(RegistryUnavailable):
                session = await service.registry.stream_session(tenant, stream, now)
        if session is None:
            session = service.sessions.find(tenant, stream, now)
        if session is None and f"{tenant}/{stream}" not in snap.by_stream:
            raise UnknownStream(tenant, stream)
        d = core.upstream(
            snap,
            tenant,
            stream,
            asker,
            service.policies.active,
            now,
            ttl=service.degradation.ttl_for(snap, now),
            origin_id=session.node_id if session else None,
        )
        if d.node is None:
            raise NoCapacity(d.reason, service.explain(d))
        return UpstreamOut(
            node=d.node.id,
            tier=d.node.tier.value,
            url=d.node.urls.http,
            origin=str(d.extra.get("origin") or ""),
            explanation={**service.explain(d), "origin": str(d.extra.get("origin") or "")},
        )

    @node_api.post(
        "/v1/nodes/{node_id}/heartbeat",
        response_model=HeartbeatOut,
        dependencies=[Bearer],
        responses={
            401: {"description": "no credential of this node, or an expired one"},
            403: {"description": "the descriptor claims what the credential does not allow"},
            413: {"description": "body over 'placement.max_body_bytes'"},
        },
    )
    async def heartbeat(node_id: str, body: HeartbeatIn, request: Request) -> HeartbeatOut:
        load = Load(**body.load.model_dump())
        node = Node.from_dict(body.node, prefix="node.") if body.node is not None else None
        if node is not None:
            try:
                check_claims(node, request.state.node_credential)
            except ClaimRefused as exc:
                metrics.registrations_rejected.labels(exc.reason).inc()
                raise
        out = await service.heartbeat(node_id, load, node, body.sessions)
        return HeartbeatOut(**out)

    @reporter_api.post(
        "/v1/nodes/{node_id}/suspect",
        dependencies=[Bearer],
        responses={
            401: {"description": "no valid node credential of the reporting node"},
            404: {"description": "no such node registered"},
        },
    )
    async def suspect(node_id: str, request: Request) -> dict[str, Any]:
        """A relay whose pulls from ``node_id`` fail reports it, with its own node
        credential. Placement probes the node's ``/healthz`` (1 s timeout; one probe in
        flight per node, its result reused for a second); if the probe fails, the node
        gets no placement or route until it beats again. Answers ``{"node", "dead",
        "probe" (healthy, unhealthy, timeout or unreachable), "detail"}``."""
        reporter = request.state.node_credential.node
        out = await service.suspect(node_id, reporter)
        if out["dead"]:
            dead_marks[node_id] = service.clock()
        return out

    @operator_api.get("/v1/nodes", dependencies=[Bearer])
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

    @operator_api.post("/v1/nodes/{node_id}/drain", dependencies=[Bearer])
    async def drain(node_id: str) -> dict[str, Any]:
        return await _set_state(node_id, NodeState.DRAINING)

    @operator_api.post("/v1/nodes/{node_id}/cordon", dependencies=[Bearer])
    async def cordon(node_id: str) -> dict[str, Any]:
        return await _set_state(node_id, NodeState.CORDONED)

    @operator_api.post("/v1/nodes/{node_id}/uncordon", dependencies=[Bearer])
    async def uncordon(node_id: str) -> dict[str, Any]:
        return await _set_state(node_id, NodeState.READY)

    @operator_api.delete(
        "/v1/nodes/{node_id}",
        dependencies=[Bearer],
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

    @operator_api.get("/v1/policy", dependencies=[Bearer])
    async def get_policy() -> dict[str, Any]:
        p = service.policy
        return {"active": p.label, "versions": service.policy_versions(), "policy": p.to_dict()}

    @operator_api.put("/v1/policy", dependencies=[Bearer], openapi_extra=_POLICY_BODY)
    async def put_policy(request: Request) -> dict[str, Any]:
        policy = await _policy_body(request)
        request.state.audit_detail = {"version": policy.version}
        p = await service.policies.put(policy, request.state.operator, service.clock())
        return {"active": p.label, "versions": service.policy_versions(), "policy": p.to_dict()}

    @operator_api.post("/v1/policy/dry-run", dependencies=[Bearer], openapi_extra=_POLICY_BODY)
    async def dry_run(
        request: Request, limit: Annotated[int, Query(ge=1, le=10000)] = 500
    ) -> dict[str, Any]:
        """Re-decide the last ``limit`` logged publish requests on the current fleet
        under the active policy and the candidate: sessions that would move (``shifts``
        by tier), refusals, and the local-serve ratio before and after; applies nothing."""
        return await service.dry_run(await _policy_body(request), limit)

    @operator_api.get("/v1/decisions", dependencies=[Bearer])
    async def decisions(
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> list[dict[str, Any]]:
        """Recent decision log, newest first (feed it to ``nearcast simulate --replay``)."""
        return service.recent_decisions()[:limit]

    @operator_api.post("/v1/decisions/replay", dependencies=[Bearer])
    async def replay(
        entry: dict[str, Any],
        against: Annotated[str, Query(pattern="^(snapshot|fleet)$")] = "snapshot",
    ) -> dict[str, Any]:
        """Re-run one entry of the decision log on its snapshot, policy version, TTL and
        headroom; ``same`` says whether it chose the same node. Snapshots are kept in
        this instance's memory only (the last few): older ones answer 422 naming why.
        ``against=fleet`` re-runs it on today's fleet instead (the current snapshot,
        now, with the policy version it used): where the same request would go today."""
        for name in ("snapshot", "policy", "request", "at"):
            if name not in entry:
                raise InvalidField(name, "missing from the decision log entry")
        try:
            d = service.replay(entry) if against == "snapshot" else await _replay_on_fleet(entry)
        except InvalidField:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidField("request", f"not a decision log entry: {exc!r}") from None
        node = d.node.id if d.node else None
        return {"same": node == entry.get("node"), "node": node, "explanation": d.explain()}

    async def _replay_on_fleet(entry: dict[str, Any]) -> core.Decision:
        snap = await service.snapshot()
        now = service.clock()
        ttl = service.degradation.ttl_for(snap, now)
        return decision_log.replay_on(entry, snap, service.policies, now, ttl)

    add_console_routes(service, operator_api, open_api, audit, dead_marks, Bearer)

    @open_api.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @open_api.get("/readyz", include_in_schema=False)
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

    @metrics_api.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @open_api.get("/{tenant}/{stream}/index.m3u8", status_code=302, response_class=RedirectResponse)
    async def playlist_redirect(
        request: Request, tenant: str, stream: str, city: str = "", isp: str = ""
    ) -> RedirectResponse:
        out = await _route(request, tenant, stream, city, isp, "", None)
        return RedirectResponse(out.playback, status_code=302)

    return app
