"""The placement API on the open internet: credentials bound to claims, one id rule,
authentication before any body is read, capped bodies, and a guarded /metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from placementutil import NODE_KEYS, Clock, make_node, node_headers
from prometheus_client import generate_latest

from placement.app import create_app
from placement.config import PlacementConfig
from placement.errors import InvalidField
from placement.registry import Registry
from placement.registry.memory import InProcessRegistry

OP = {"Authorization": "Bearer op-secret"}
LYON = {"city": "lyon", "isp": "orange", "region": "west"}
# What e1's credential allows: make_node's defaults, serving the school tenant only.
E1 = {
    "tier": "edge",
    "region": "west",
    "city": "lyon",
    "isp": "orange",
    "hosts": ("e1.test",),
    "tenants": ("school",),
}
BIG = 10 * 1024 * 1024


def config(**kw: Any) -> PlacementConfig:
    return PlacementConfig(operator_token="op-secret", node_keys=NODE_KEYS, **kw)


async def started(cfg: PlacementConfig, registry: Registry, clock: Clock) -> FastAPI:
    app = create_app(cfg, registry, clock=clock, background=False)
    await app.state.service.start(background=False)
    return app


@pytest.fixture
async def app(clock: Clock) -> AsyncIterator[FastAPI]:
    app = await started(config(metrics_token="scrape-secret"), InProcessRegistry(), clock)
    yield app
    await app.state.service.stop()


def client_of(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p")


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(app) as c:
        yield c


def beat(node_id: str, **kw: Any) -> dict[str, Any]:
    return {"load": {}, "node": make_node(node_id, **kw).descriptor()}


def rejected(app: FastAPI, reason: str) -> float:
    text = generate_latest(app.state.metrics.registry).decode()
    line = f'placement_registrations_rejected_total{{reason="{reason}"}} '
    return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])


async def known(app: FastAPI) -> set[str]:
    snap = await app.state.service.refresh()
    return set(snap.nodes)


# -- credentials bound to claims ---------------------------------------------------------


async def test_registration_within_the_credential(app: FastAPI, client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/nodes/e1/heartbeat",
        json=beat("e1", labels={"tenants": "school"}),
        headers=node_headers("e1", **E1),
    )
    assert r.status_code == 200, r.text
    assert await known(app) == {"e1"}


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"city": "paris"}, "node.city", "city"),
        ({"tier": "mec"}, "node.tier", "tier"),
        ({"region": "east"}, "node.region", "region"),
        ({"isp": "free"}, "node.isp", "isp"),
        ({"labels": {"tenants": "acme"}}, "node.labels.tenants", "tenants"),
        ({"labels": {}}, "node.labels.tenants", "tenants"),
        (
            {"urls": {"rtmp": "rtmp://victim.test", "http": "http://e1.test"}},
            "node.urls.rtmp",
            "urls",
        ),
        (
            {"urls": {"rtmp": "rtmp://e1.test", "http": "http://victim.test"}},
            "node.urls.http",
            "urls",
        ),
    ],
)
async def test_claims_beyond_the_credential_are_refused_and_counted(
    app: FastAPI,
    client: httpx.AsyncClient,
    changes: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    body = beat("e1", labels={"tenants": "school"})
    body["node"].update(changes)
    before = rejected(app, reason)
    r = await client.post("/v1/nodes/e1/heartbeat", json=body, headers=node_headers("e1", **E1))
    assert r.status_code == 403, r.text
    assert r.json()["field"] == field
    assert r.json()["detail"].startswith(f"'{field}'")
    assert rejected(app, reason) == before + 1
    assert await known(app) == set()  # nothing of it was registered


async def test_a_liveness_beat_needs_only_the_credential(client: httpx.AsyncClient) -> None:
    headers = node_headers("e1", **E1)
    r = await client.post(
        "/v1/nodes/e1/heartbeat", json=beat("e1", labels={"tenants": "school"}), headers=headers
    )
    assert r.status_code == 200
    r = await client.post("/v1/nodes/e1/heartbeat", json={"load": {"cpu": 0.2}}, headers=headers)
    assert r.status_code == 200 and r.json()["known"] is True


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"Authorization": "Bearer not-a-credential"}, "malformed"),
        (node_headers("e2"), "wrong_node"),
        (node_headers("e1", expires=1000), "expired"),
        (node_headers("e1", keys={"k1": "forged-secret-0123456789"}), "forged"),
    ],
)
async def test_credential_failures_are_401_and_counted(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str], reason: str
) -> None:
    before = rejected(app, reason)
    r = await client.post("/v1/nodes/e1/heartbeat", json=beat("e1"), headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert rejected(app, reason) == before + 1


# -- one id rule ---------------------------------------------------------------------------


async def test_an_id_with_a_space_is_refused_and_the_pool_keeps_placing(
    registry: Registry, clock: Clock
) -> None:
    app = await started(config(), registry, clock)
    try:
        async with client_of(app) as c:
            for node_id in ("e1", "e2"):
                r = await c.post(
                    f"/v1/nodes/{node_id}/heartbeat",
                    json=beat(node_id),
                    headers=node_headers(node_id),
                )
                assert r.status_code == 200, r.text
            r = await c.post(
                "/v1/nodes/e 3/heartbeat", json=beat("e 3"), headers=node_headers("e1")
            )
            assert r.status_code == 422
            assert r.json()["field"] == "node_id" and "'e 3'" in r.json()["message"]
            assert rejected(app, "invalid_id") == 1
            # Not through any other door either: the registry itself refuses it.
            with pytest.raises(InvalidField, match="node id"):
                await registry.register(make_node("e 3"), clock())
            with pytest.raises(InvalidField, match="region"):
                await registry.register(make_node("e3", region="we st"), clock())
            # Sessions are still placed in the pool, and its leases still expire.
            await app.state.service.refresh()
            for i in range(4):
                r = await c.post(
                    "/v1/sessions",
                    json={"tenant": "school", "stream": f"c{i}", "location": LYON},
                    headers=OP,
                )
                assert r.status_code == 201, r.text
            clock.advance(PlacementConfig().lease_ttl + 1)
            for node_id in ("e1", "e2"):
                await c.post(
                    f"/v1/nodes/{node_id}/heartbeat",
                    json=beat(node_id, hb=clock()),
                    headers=node_headers(node_id),
                )
            snap = await app.state.service.refresh()
            assert sorted(snap.nodes) == ["e1", "e2"]
            assert all(n.reserved_slots == 0 for n in snap.nodes.values())
    finally:
        await app.state.service.stop()


# -- authentication before any body, capped bodies -----------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/sessions"),
        ("PUT", "/v1/policy"),
        ("POST", "/v1/policy/dry-run"),
        ("POST", "/v1/decisions/replay"),
        ("POST", "/v1/nodes/e1/heartbeat"),
    ],
)
async def test_no_token_is_401_whatever_the_body(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    """A body that would fail JSON parsing, and one over the cap, both get 401: the
    credential is checked before any byte of the body is read."""
    for body in (b"{not json", b"[" * BIG):
        r = await client.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 401, (len(body), r.text)


async def test_with_a_token_bad_json_is_parsed_and_refused(client: httpx.AsyncClient) -> None:
    """The counterpart of the test above: the same broken body with the token is 422,
    so the 401 really came before parsing."""
    headers = {**OP, "content-type": "application/json"}
    r = await client.post("/v1/sessions", content=b"{not json", headers=headers)
    assert r.status_code == 422


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/sessions", OP),
        ("/v1/decisions/replay", OP),
        ("/v1/nodes/e1/heartbeat", node_headers("e1")),
    ],
)
async def test_a_body_over_the_cap_is_413(
    client: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> None:
    big = json.dumps({"load": {}, "pad": "x" * BIG}).encode()
    r = await client.post(
        path, content=big, headers={**headers, "content-type": "application/json"}
    )
    assert r.status_code == 413 and "placement.max_body_bytes" in r.json()["detail"]


async def test_a_streamed_body_over_the_cap_is_413(client: httpx.AsyncClient) -> None:
    """Without a Content-Length the body is counted as it arrives."""
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):
            sent += 1
            yield b"x" * 16384

    r = await client.put("/v1/policy", content=chunks(), headers=OP)
    assert r.status_code == 413
    assert sent < 64  # reading stopped at the cap


async def test_the_cap_is_configurable(clock: Clock) -> None:
    app = await started(config(max_body_bytes=2048), InProcessRegistry(), clock)
    try:
        async with client_of(app) as c:
            r = await c.post("/v1/sessions", content=b"x" * 4096, headers=OP)
            assert r.status_code == 413
    finally:
        await app.state.service.stop()


# -- bearer headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/nodes"), ("POST", "/v1/nodes/e1/heartbeat"), ("GET", "/metrics")],
)
@pytest.mark.parametrize("value", ["Bearer é", "Bearer \u00ff\u00fe", "Bearer ☃"])
async def test_non_ascii_bearer_is_401(
    client: httpx.AsyncClient, method: str, path: str, value: str
) -> None:
    r = await client.request(method, path, headers={"Authorization": value.encode("utf-8")})
    assert r.status_code == 401


# -- /metrics ----------------------------------------------------------------------------------


async def test_metrics_need_the_metrics_token_when_set(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers=OP)).status_code == 401
    r = await client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert r.status_code == 200 and "placement_registrations_rejected_total" in r.text


async def test_metrics_are_open_without_a_metrics_token(clock: Clock) -> None:
    app = await started(config(), InProcessRegistry(), clock)
    try:
        async with client_of(app) as c:
            assert (await c.get("/metrics")).status_code == 200
    finally:
        await app.state.service.stop()


async def test_viewers_need_no_token(app: FastAPI, client: httpx.AsyncClient) -> None:
    """/v1/route and the playlist redirect are how viewers find a node: they stay open."""
    r = await client.post(
        "/v1/nodes/e1/heartbeat",
        json=beat("e1", labels={"tenants": "school"}),
        headers=node_headers("e1", **E1),
    )
    assert r.status_code == 200
    await app.state.service.refresh()
    r = await client.post(
        "/v1/sessions", json={"tenant": "school", "stream": "c", "location": LYON}, headers=OP
    )
    assert r.status_code == 201
    await app.state.service.registry.heartbeat(
        "e1", make_node("e1").load, app.state.service.clock()
    )
    r = await client.get("/v1/route", params={"tenant": "school", "stream": "c", **LYON})
    assert r.status_code in (200, 404), r.text  # answered, not refused
    r = await client.get("/school/c/index.m3u8")
    assert r.status_code != 401


# -- the routes an embedding node mounts keep their guard ------------------------------------


async def test_mounted_routes_keep_the_guard(app: FastAPI) -> None:
    """A node without placement.url copies the app's /v1/ routes into its own API (see
    nearcast.node): the check before the body travels with them."""
    host = FastAPI()
    host.router.routes[:0] = [
        r for r in app.router.routes if getattr(r, "path", "").startswith("/v1/")
    ]
    for exc, handler in app.exception_handlers.items():
        host.add_exception_handler(exc, handler)
    async with client_of(host) as c:
        r = await c.post(
            "/v1/sessions", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 401
        r = await c.post("/v1/nodes/e1/heartbeat", content=b"x" * BIG, headers=node_headers("e1"))
        assert r.status_code == 413
